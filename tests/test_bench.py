"""python -m llgbm.bench and its hot paths: counted FLOPs, the zoo step's profile, the suite breakdown."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from llgbm.bench import hotpaths
from llgbm.core import tasks, timing
from llgbm.teachers import zoo


def test_counted_flops_of_a_matmul_are_2mnk():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert hotpaths.counted_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_a_zoo_step_counts_about_4n_flops_per_token(tiny):
    """Forward 2N + backward to the activations 2N per (padded) token over the block linears, plus the
    lm_head at answer positions, the rank-8 LoRA factors and attention: within 25% of 4N."""
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke")
    step = hotpaths.ZooStep(model, tok, cfg, tasks.get_task("add_1"))
    try:
        flops = hotpaths.counted_flops(step)
        padded, real = step.tokens
        assert 0 < real <= padded
    finally:
        step.close()
    assert not any("lora" in n for n, _ in model.named_modules())
    expected = 4 * timing.body_params(model.config) * padded
    assert expected <= flops <= 1.25 * expected + 4 * model.config.vocab_size * model.config.hidden_size * padded


def test_hot_path_rows_and_op_kinds():
    row = hotpaths.HotPath("x", seconds=2.0, flops=4e9, tokens=100, real_tokens=75).row(peak=4e9)
    assert row["fraction of peak"] == pytest.approx(0.5) and row["useful fraction of peak"] == pytest.approx(0.375)
    assert row["padded share"] == pytest.approx(0.25) and row["real tokens/s"] == pytest.approx(37.5)
    assert np.isnan(row["items/s"]) and hotpaths.HotPath("y", 2.0, 1.0, items=10).row(1.0)["items/s"] == 5
    assert hotpaths.op_kind("aten::mm") == "matmul (GEMM)" and hotpaths.op_kind("aten::_foreach_mul_") == "optimizer"
    assert hotpaths.op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"


def test_suite_breakdown_reads_timings_and_cell_durations(lab_home, tmp_path):
    folder = tmp_path / "reports" / "quick"
    (folder / "_executed").mkdir(parents=True)
    (folder / "timings.json").write_text(json.dumps({"00_baseline": dict(seconds=90.0, start_state=dict(state="cold")),
                                                     "01_delta_caching": dict(seconds=10.0)}))
    cells = [dict(cell_type="code", source=["# a comment\n", "slow()\n"], metadata=dict(papermill=dict(duration=80.0))),
             dict(cell_type="markdown", source=["text"], metadata=dict(papermill=dict(duration=1.0))),
             dict(cell_type="code", source=["fast()"], metadata=dict(papermill=dict(duration=2.0)))]
    (folder / "_executed" / "00_baseline.ipynb").write_text(json.dumps(dict(cells=cells)))
    notebooks, slow = hotpaths.suite_breakdown("quick")
    assert list(notebooks.index) == ["00_baseline", "01_delta_caching"] and notebooks.share.sum() == pytest.approx(1)
    assert notebooks.loc["00_baseline", "start"] == "cold"
    assert list(slow.code) == ["slow()", "fast()"] and list(slow.seconds) == [80.0, 2.0]


def test_bench_cli_on_the_smoke_profile(lab_home, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    built = subprocess.run([sys.executable, "-m", "llgbm.zoo", "--profile", "smoke", "--no-progress"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    out = tmp_path / "bench.md"
    run = subprocess.run([sys.executable, "-m", "llgbm.bench", "--profile", "smoke", "--repeats", "1", "--compile", "--peers", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    for path in ("zoo training step", "teachers packed", "gold log-lik forward", "greedy decoding", "perplexity forward", "shared forwards",
                 "4-shot scoring, prefix read per item", "4-shot scoring, prefix read once",
                 *(f"generator step, {o}" for o in hotpaths.OBJECTIVES), "FunctionalLoRA hooks", "adapters in one hooked"):
        assert path in text, path
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["peak_flops_per_s"] > 0
    from llgbm.core.timing import machine
    assert result["machine"] == machine() and f"on {machine()})" in text           # issue 30: the CPU is named
    assert "## Peers: the tools a user would use instead" in text                   # issue 30: both sides, and the ratio
    teacher = {r["index"]: r for r in result["peer_teacher"]}
    assert set(teacher) == {"zoo loop", "Trainer + peft", "ratio (zoo / Trainer)"} and teacher["zoo loop"]["tokens_per_s"] > 0
    assert teacher["zoo loop"]["final_loss"] == pytest.approx(teacher["Trainer + peft"]["final_loss"], rel=1e-3)
    assert {r["adapters"] for r in result["peer_scoring"]} == {4, 8} and all(r["max_abs_diff"] < 1e-4 for r in result["peer_scoring"])
    generation = {r["index"]: r for r in result["peer_generation"]}
    assert generation["one teacher (training)"]["seconds"] == teacher["zoo loop"]["seconds"]
    assert all(r["seconds"] > 0 for r in generation.values()) and "write peft folder" in generation
    assert generation["encode prompts (MiniLM)"]["GFLOP"] > 0 and generation["generator forward"]["GFLOP"] > 0
    assert generation["end to end, first call"]["ms at the fp32 peak"] == pytest.approx(
        sum(generation[s]["ms at the fp32 peak"] for s in ("encode prompts (MiniLM)", "generator forward", "detokenise", "write peft folder")))
    assert "--peers`" in text                                                        # the command that wrote it
    assert all(p["flops"] > 0 and p["seconds"] > 0 and 0 < p["fraction of peak"] for p in result["paths"])
    assert "matmul (GEMM)" in text
    compiled = [p for p in result["paths"] if p["name"].endswith(", compiled")]
    assert [p["name"].split(" (")[0].split(",")[0] for p in compiled] == ["zoo training step", "generator step"]
    assert all("torch.compile, first" in p["note"] for p in compiled)
    runs = result["teacher_runs"]
    assert "Whole teacher runs, eager and compiled" in text and sorted({r["compiled"] for r in runs}) == [False, True]
    assert all(r["train seconds"] > 0 and r["fraction of peak"] > 0 for r in runs)


def test_bench_without_a_zoo_says_how_to_build_one(lab_home):
    run = subprocess.run([sys.executable, "-m", "llgbm.bench", "--profile", "smoke"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and "python -m llgbm.zoo --profile smoke" in run.stderr

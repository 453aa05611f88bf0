import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llgbm.core import lora, tasks, timing
from llgbm.teachers import run, zoo

CFG = zoo.ZooConfig.preset("smoke", steps=6, save_every=2, n_checkpoints=2, eval_items=4)


def _weights(root, task="add_1", step=6):
    return load_file(str(root / task / "seed0" / f"step{step:04d}" / "adapter_model.safetensors"))


def test_presets_follow_the_seed():
    quick = zoo.ZooConfig.preset("quick")
    assert (quick.rank, quick.alpha) == (8, 16) and len(quick.targets) == 7
    assert len(quick.task_names()) >= 24 and all(t in tasks.list_tasks() for t in quick.task_names())
    assert zoo.ZooConfig.preset("quick", rank=4).rank == 4
    with pytest.raises(ValueError, match="unknown profile"):
        zoo.ZooConfig.preset("huge")


def test_teacher_learns_and_writes_peft_checkpoints(tiny, lab_home):
    from peft import PeftModel
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=12, lr=1e-2, n_checkpoints=2, eval_items=4, batch_size=8)
    rec = zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "zoo")
    assert [c["step"] for c in rec["checkpoints"]] == [11, 12]
    assert sum(rec["losses"][-4:]) / 4 < rec["losses"][0] - 0.3   # it learns (a random 2-layer net: slowly)
    assert not any("lora" in n for n, _ in model.named_modules())  # base model left clean
    peft_model = PeftModel.from_pretrained(model, lab_home / "zoo" / rec["checkpoints"][-1]["path"])
    assert zoo.zoo_dir("smoke", "tiny").parent == lab_home / "zoo"
    rows = zoo.write_manifest(lab_home / "zoo")
    assert {"task", "seed", "step", "train_loss", "test_acc", "hash"} <= set(rows[0])
    assert rows[0]["hash"] != rows[1]["hash"]
    peft_model.unload()


def test_resume_reproduces_the_uninterrupted_run_without_repeating_steps(tiny, lab_home, monkeypatch):
    model, tok = tiny
    ref = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "a", progress=False)
    assert zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", stop_after=3, progress=False) is None
    assert (lab_home / "b" / "add_1" / "seed0" / "state.safetensors").exists()
    calls = []
    real = run.target_logprobs
    monkeypatch.setattr(run, "target_logprobs", lambda *a: calls.append(1) or real(*a))
    resumed = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", progress=False)
    assert len(calls) == CFG.steps - 3                      # only the missing steps ran
    assert resumed["losses"] == pytest.approx(ref["losses"], rel=1e-4)
    for k, v in _weights(lab_home / "a").items():
        torch.testing.assert_close(_weights(lab_home / "b")[k], v, atol=1e-6, rtol=1e-5)
    # a finished run is never trained again
    calls.clear()
    again = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", progress=False)
    assert calls == [] and again["checkpoints"] == resumed["checkpoints"]


def test_nan_adapter_is_refused(tiny, lab_home):
    model, tok = tiny
    rec = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "z", progress=False)
    folder = lab_home / "z" / rec["checkpoints"][-1]["path"]
    w = load_file(str(folder / "adapter_model.safetensors"))
    key = next(iter(w))
    w[key][0, 0] = float("nan")
    save_file(w, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="NaN/Inf"):
        lora.load_adapter_weights(folder)


def test_diverging_teacher_is_refused(tiny, lab_home):
    model, tok = tiny
    with pytest.raises(ValueError, match="NaN/Inf|diverged"):
        zoo.train_teacher(model, tok, "add_1", 0, zoo.ZooConfig.preset("smoke", lr=1e30), lab_home / "nan",
                          progress=False)
    assert not any("lora" in n for n, _ in model.named_modules())
    assert not (lab_home / "nan" / "add_1" / "seed0" / "run.json").exists()


def test_user_task_runs_through_the_zoo(tiny, lab_home):
    model, tok = tiny
    tasks.register_task("echo_word", "Repeat the word.", [(w, w) for w in ["alpha", "beta", "gamma", "delta",
                        "kappa", "sigma", "omega", "theta"]], overwrite=True)
    cfg = zoo.ZooConfig.preset("smoke", tasks=("echo_word",), eval_items=4)
    recs = zoo.build_zoo(model, tok, cfg, lab_home / "zoo", progress=False)
    assert recs[0]["task"] == "echo_word"
    assert json.loads((lab_home / "zoo" / "manifest.json").read_text())[0]["task"] == "echo_word"


@pytest.mark.real_model
def test_flops_count_matches_the_real_models_linear_layers(real_home):
    """The FLOP count is checked against the parameters of the built model, counted module by module."""
    import torch.nn as nn

    from llgbm.core.models import load_model
    bodies = {}
    for name in ("smollm2", "tiny"):
        model, _ = load_model(name, device="cpu")
        body = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
        head = model.lm_head.weight.numel()
        assert timing.body_params(model.config) == body
        assert timing.training_flops_per_token(model.config, 0.0) == 4 * body
        assert timing.training_flops_per_token(model.config, 0.25) == pytest.approx(4 * body + 4 * head * 0.25)
        bodies[name] = body
    assert 100e6 < bodies["smollm2"] < 110e6           # ~106M non-embedding parameters
    with pytest.raises(ValueError, match="share of tokens"):
        timing.training_flops_per_token(model.config, 1.5)


def test_a_run_trained_under_another_config_is_refused_not_reused(tiny, lab_home):
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=2, n_checkpoints=1, eval_items=2)
    zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "z", progress=False)
    with pytest.raises(ValueError, match="another config"):
        zoo.train_teacher(model, tok, "add_1", 0, zoo.ZooConfig.preset("smoke", steps=3, n_checkpoints=1),
                          lab_home / "z", progress=False)
    # eval size, tasks and seeds do not change what a run trains: same folder, same key
    assert zoo.ZooConfig.preset("quick", eval_items=7, seeds=(5,)).training_key() == zoo.ZooConfig.preset("quick").training_key()
    assert zoo.zoo_dir("quick", "smollm2") != zoo.zoo_dir("quick", "smollm2", zoo.ZooConfig.preset("quick", lr=1e-3))


def test_matmul_peak_is_a_plausible_measurement():
    peak = timing.measure_matmul_peak(n=256, repeats=2, trials=2)
    assert 1e8 < peak < 1e14          # between a slow phone and a large GPU, in FLOP/s


def test_throughput_uses_the_peak_measured_when_the_zoo_trained(tiny, lab_home, monkeypatch):
    model, tok = tiny
    measured = []
    real = timing.measure_matmul_peak
    monkeypatch.setattr(zoo, "measure_matmul_peak", lambda: measured.append(real(n=256, repeats=2, trials=2)) or measured[-1])
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "add_3"), steps=2, n_checkpoints=1, eval_items=2)
    recs = zoo.build_zoo(model, tok, cfg, lab_home / "z", progress=False)
    assert len(measured) == 1 and all(r["matmul_peak_flops"] == measured[0] for r in recs)   # once, stored per run
    again = zoo.build_zoo(model, tok, cfg, lab_home / "z", progress=False)
    assert len(measured) == 1                                                    # a finished zoo measures nothing
    tp = zoo.zoo_throughput(again, model.config)
    tokens, seconds = sum(r["train_tokens"] for r in recs), sum(r["train_seconds"] for r in recs)
    assert tp["tokens_per_s"] == pytest.approx(tokens / seconds)
    # The peak is a train-time-weighted mean over runs, so compare up to float rounding.
    assert tp["peak_flops_per_s"] == pytest.approx(measured[0], rel=1e-12)
    assert tp["peak_fraction"] == pytest.approx(tp["flops_per_s"] / measured[0]) and 0 < tp["peak_fraction"] < 1


_TRAIN_ONE = """
import json, sys
from llgbm.core import models
from llgbm.teachers import zoo
model, tok = models.load_model("tiny", device="cpu")
cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1",), steps=3, n_checkpoints=1, eval_items=2)
root = zoo.zoo_dir("smoke", "tiny", cfg)
zoo.build_zoo(model, tok, cfg, root, progress=False)
print(json.dumps(dict(root=str(root), rows=zoo.write_manifest(root))))
"""


def test_the_same_teacher_trained_in_two_processes_gets_the_same_hash(lab_home, tmp_path):
    """Canonical hashes: peft writes target_modules (a set) in a per-process order, and LLGBM_HOME is
    part of base_model_name_or_path; neither may change an adapter's content hash."""
    import os
    import subprocess
    import sys
    rows = []
    for i, hashseed in enumerate(("1", "2")):
        home = tmp_path / f"home{i}"
        home.mkdir()
        (home / "models").symlink_to(lab_home / "models", target_is_directory=True)
        env = dict(os.environ, LLGBM_HOME=str(home), PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", _TRAIN_ONE], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(dict(result["rows"][0], folder=Path(result["root"]) / result["rows"][0]["path"]))
    assert rows[0]["hash"] == rows[1]["hash"] and rows[0]["hash_version"] == run.HASH_VERSION
    folders = [r["folder"] for r in rows]
    assert str(tmp_path / "home0") in str(folders[0]) and str(tmp_path / "home1") in str(folders[1])
    configs = [json.loads((f / "adapter_config.json").read_text()) for f in folders]
    assert configs[0]["base_model_name_or_path"] != configs[1]["base_model_name_or_path"]   # the homes differ ...
    assert lora.adapter_hash(folders[0]) == lora.adapter_hash(folders[1])                  # ... the content does not


def test_a_record_written_before_canonical_hashing_is_rehashed_and_loading_writes_nothing(tiny, lab_home):
    """load_manifest only reads (an old record is re-hashed in memory); write_manifest, the builders',
    re-hashes it and stores the new hash in the record."""
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1",), steps=2, n_checkpoints=1, eval_items=2)
    root = lab_home / "z"
    zoo.build_zoo(model, tok, cfg, root, progress=False)
    record_path = root / "add_1" / "seed0" / "run.json"
    record = json.loads(record_path.read_text())
    canonical = record["checkpoints"][0]["hash"]
    record["checkpoints"][0].update(hash="raw-bytes-hash-of-an-older-version")
    del record["checkpoints"][0]["hash_version"]
    record_path.write_text(json.dumps(record))
    (root / "manifest.json").unlink()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    _, _, rows = zoo.load_manifest("smoke", "tiny", cfg, root=root)
    assert rows[0]["hash"] == canonical and rows[0]["hash_version"] == run.HASH_VERSION
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()} == before
    assert zoo.write_manifest(root)[0]["hash"] == canonical
    assert json.loads(record_path.read_text())["checkpoints"][0]["hash_version"] == run.HASH_VERSION


def test_zoo_runs_split_into_disjoint_balanced_shares():
    cfg = zoo.ZooConfig.preset("smoke", seeds=(0, 1))
    every = zoo.zoo_runs(cfg)
    assert len(every) == 2 * len(cfg.task_names())
    for world in (1, 2, 3):
        shares = [zoo.zoo_runs(cfg, r, world) for r in range(world)]
        assert sorted(sum(shares, [])) == sorted(every)                      # every run, once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank must be in"):
            zoo.zoo_runs(cfg, rank, world)


_PARTIAL = """
import sys
from llgbm.core import models
from llgbm.teachers import zoo
model, tok = models.load_model("tiny", device="cpu")
cfg = zoo.ZooConfig.preset("smoke")
assert zoo.train_teacher(model, tok, "add_1", 0, cfg, __import__("pathlib").Path(sys.argv[1]), stop_after=3,
                         progress=False) is None
"""


def _launch(args, env, n=None):
    import subprocess
    import sys
    head = [sys.executable, "-m", "llgbm.zoo"] if n is None else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llgbm.zoo"]
    out = subprocess.run(head + args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_two_cpu_processes_build_the_same_zoo_as_one(lab_home, tmp_path):
    """`accelerate launch --num_processes 2 -m llgbm.zoo` splits the runs across ranks; after a rank
    died mid-run (a saved state at step 3 of 6) it resumes, and the zoo equals the one-process zoo:
    the same runs and checkpoints, the same adapter hashes, every run trained once."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", LLGBM_HOME=str(lab_home))
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(["--profile", "smoke", "--root", str(one), "--no-progress"], env)
    died = subprocess.run([sys.executable, "-c", _PARTIAL, str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == 0, died.stderr[-2000:]
    assert (two / "add_1" / "seed0" / "state.safetensors").exists() and not (two / "add_1" / "seed0" / "run.json").exists()
    out = _launch(["--profile", "smoke", "--root", str(two), "--no-progress"], env, n=2)
    assert "runs per rank" in out.stdout
    rows = {p: json.loads((p / "manifest.json").read_text()) for p in (one, two)}
    key = lambda rs: sorted((r["task"], r["seed"], r["step"], r["hash"]) for r in rs)   # noqa: E731
    assert key(rows[one]) == key(rows[two]) and len(rows[one]) == 4 * 2
    records = [json.loads(p.read_text()) for p in sorted(two.glob("*/seed*/run.json"))]
    assert sorted(r["rank"] for r in records) == [0, 0, 1, 1]                # both ranks trained, each its share
    assert not list(two.glob("*/seed*/state.safetensors"))                  # the interrupted run finished
    resumed = json.loads((two / "add_1" / "seed0" / "run.json").read_text())
    alone = json.loads((one / "add_1" / "seed0" / "run.json").read_text())
    assert resumed["losses"] == pytest.approx(alone["losses"], abs=1e-6)


def test_readme_ddp_command_builds_the_zoo_in_an_empty_cache(lab_home, tmp_path):
    """The README's DDP command, exactly as written, in a fresh working folder with no zoo, no deltas
    and no generators (only the converted base models are linked in, as in every test): the ranks
    build the zoo between them, then train to identical generators."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from llgbm.core.utils import REPO_ROOT
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    commands = re.findall(r"`(accelerate launch [^`]*-m llgbm\.ddp[^`]*)`", readme)
    assert len(commands) == 1, commands
    argv = shlex.split(commands[0])
    argv = [str(Path(sys.executable).parent / "accelerate"), *argv[1:]]
    assert not (lab_home / "zoo").exists()
    env = dict(os.environ, LLGBM_HOME=str(lab_home))
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    [root] = (lab_home / "zoo").glob("tiny-smoke-*")
    records = [json.loads(p.read_text()) for p in root.glob("*/seed*/run.json")]
    assert len(records) == len(zoo.ZooConfig.preset("smoke").task_names()) and {r["rank"] for r in records} == {0, 1}
    assert (root / "manifest.json").exists()
    ranks = [load_file(str(tmp_path / "runs" / "ddp" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


def test_missing_runs_extends_the_profiles_zoo_but_never_a_foreign_one(tiny, lab_home):
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=2, n_checkpoints=1, eval_items=2)
    root = lab_home / "z"
    assert zoo.missing_runs(cfg, root) == zoo.zoo_runs(cfg)                 # nothing there yet
    zoo.train_teacher(model, tok, "add_1", 0, cfg, root, progress=False)
    assert zoo.missing_runs(cfg, root) == [r for r in zoo.zoo_runs(cfg) if r != ("add_1", 0)]
    assert zoo.missing_runs(zoo.ZooConfig.preset("smoke", steps=3), root) == []   # trained under another config


def test_packing_lays_examples_end_to_end_with_restarting_positions():
    from llgbm.teachers import packing
    ex = [[([1, 2], [3]), ([4], [5, 6])], [([7, 8, 9], [10])]]
    b = packing.pack(ex, row_len=6, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 0, 1]]
    assert b["target_mask"].int().tolist() == [[0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 0, 0]]
    assert b["owner"].tolist() == [0] * 6 + [1] * 6 and packing.spans(b["owner"], 2) == [(0, 6), (6, 12)]
    assert packing.pack([[([1] * 9, [2])]], row_len=4, pad_id=0)["input_ids"].shape == (1, 10)   # a long example: a long row


def test_packed_logprobs_equal_padded_ones(tiny):
    """The packed-sequence mask keeps examples apart: each example's answer log-probs match the
    right-padded batch's."""
    from llgbm.eval import scoring
    from llgbm.teachers import packing
    model, tok = tiny
    task = tasks.get_task("add_1")
    enc = scoring.encode_pairs(tok, task, task.train[:6])
    with torch.no_grad():
        padded = scoring.target_logprobs(model, scoring.build_batch(enc, tok.pad_token_id))
        batch = packing.pack([enc[:3], enc[3:]], row_len=48, pad_id=tok.pad_token_id)
        losses = packing.packed_losses(model, batch, 2)
    parts = torch.split(padded, [len(t) for _, t in enc])
    solo = torch.stack([-torch.cat(parts[:3]).mean(), -torch.cat(parts[3:]).mean()])    # each teacher's mean answer NLL
    assert batch["input_ids"].shape[0] < 6                                              # fewer rows than examples
    torch.testing.assert_close(losses, solo, atol=1e-5, rtol=1e-5)


def test_teachers_trained_in_a_pack_match_their_solo_runs(tiny, lab_home):
    """Four teachers in one packed forward end as they do alone: the same loss curves and weights
    within float tolerance, the same checkpoint steps and test scores; an interrupted pack resumes."""
    model, tok = tiny
    solo_cfg = zoo.ZooConfig.preset("smoke", lr=1e-2, eval_items=4)
    solo = zoo.build_zoo(model, tok, solo_cfg, lab_home / "solo", progress=False)
    packed_cfg = zoo.ZooConfig.preset("smoke", lr=1e-2, eval_items=4, pack=4, pack_len=64)
    assert packed_cfg.training_key() == solo_cfg.training_key()          # packing is how, not what
    runs = zoo.zoo_runs(packed_cfg)
    assert run.train_packed(model, tok, runs, packed_cfg, lab_home / "packed", progress=False, stop_after=3) is None
    packed = zoo.build_zoo(model, tok, packed_cfg, lab_home / "packed", progress=False)   # resumes the pack
    assert not any("lora" in n for n, _ in model.named_modules())
    for a, b in zip(solo, packed):
        assert (a["task"], a["seed"]) == (b["task"], b["seed"]) and a["train_tokens"] == b["train_tokens"]
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-4, abs=1e-5)
        assert [c["step"] for c in a["checkpoints"]] == [c["step"] for c in b["checkpoints"]]
        for ca, cb in zip(a["checkpoints"], b["checkpoints"]):
            assert ca["test_acc"] == cb["test_acc"] and ca["test_loglik"] == pytest.approx(cb["test_loglik"], abs=1e-4)
            wa, wb = (load_file(str(root / c["path"] / "adapter_model.safetensors"))
                      for root, c in ((lab_home / "solo", ca), (lab_home / "packed", cb)))
            assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4, rtol=1e-3) for k in wa)   # Adam amplifies float noise
    assert len(zoo.write_manifest(lab_home / "packed")) == len(zoo.write_manifest(lab_home / "solo"))


def test_base_scores_are_cached_per_task_and_rescored_when_the_task_changes(tiny, lab_home, monkeypatch):
    model, tok = tiny
    pairs = [(str(n), str(n + 7)) for n in range(100)]
    tasks.register_task("base_cache_probe", "Add seven.", pairs, overwrite=True)
    calls, real = [], zoo.evaluate_task
    monkeypatch.setattr(zoo, "evaluate_task", lambda m, t, task, n: calls.append(task.name) or real(m, t, task, n=n))
    cache = lab_home / "base_scores.json"
    first = zoo.base_scores(model, tok, ["add_1", "base_cache_probe"], 4, cache, progress=False)
    assert calls == ["add_1", "base_cache_probe"] and set(first) == {"add_1", "base_cache_probe"}
    assert zoo.base_scores(model, tok, ["add_1", "base_cache_probe"], 4, cache, progress=False) == first
    assert len(calls) == 2                                # the rerun evaluated nothing
    zoo.base_scores(model, tok, ["add_1"], 5, cache, progress=False)
    assert len(calls) == 3                                # other items: scored again
    tasks.register_task("base_cache_probe", "Add seven to the number.", pairs, overwrite=True)
    zoo.base_scores(model, tok, ["base_cache_probe"], 4, cache, progress=False)
    assert calls[-1] == "base_cache_probe" and len(calls) == 4   # an edited task is re-scored, not read back

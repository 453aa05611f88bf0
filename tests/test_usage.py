"""What a run spends: FLOPs counted as it runs (llgbm.core.flops), the trained artefacts it trains or
reads back (llgbm.core.artefacts), and the REPORT sections built from them (llgbm.notebook.usage)."""
import json

import pytest
import torch

from llgbm.core import artefacts, flops
from llgbm.notebook import usage


@pytest.fixture
def counting(tmp_path):
    flops.start(tmp_path / "flops.json")
    yield tmp_path / "flops.json"
    flops.stop()


def test_flops_count_forward_and_the_backward_it_implies(counting):
    frozen, trained = torch.nn.Linear(8, 4), torch.nn.Linear(4, 3)
    frozen.requires_grad_(False)
    x = torch.randn(5, 8)
    with torch.no_grad():
        frozen(x)
    assert flops.counts()["forward_flops"] == 2 * 5 * 8 * 4 and flops.counts()["backward_flops"] == 0
    trained(frozen(x)).sum().backward()            # frozen: no gradient at all; trained: its weight's only
    c = flops.counts()
    assert c["forward_flops"] == 2 * (2 * 5 * 8 * 4) + 2 * 5 * 4 * 3
    assert c["backward_flops"] == 2 * 5 * 4 * 3
    frozen(x.requires_grad_())                     # an input that needs a gradient: one backward matmul
    assert flops.counts()["backward_flops"] == 2 * 5 * 4 * 3 + 2 * 5 * 8 * 4
    torch.relu(x)                                  # not a Linear: not counted
    assert flops.counts()["linear_calls"] == 4
    flops.flush()
    assert json.loads(counting.read_text())["flops"] == c["flops"] + 2 * (2 * 5 * 8 * 4)   # its forward and backward


def test_flops_stop_puts_linear_back_and_a_restart_counts_afresh(tmp_path):
    original = torch.nn.Linear.forward
    flops.start(tmp_path / "first.json")
    torch.nn.Linear(2, 2)(torch.randn(1, 2))
    flops.start(tmp_path / "second.json")
    assert flops.counts()["flops"] == 0 and torch.nn.Linear.forward is not original
    flops.stop()
    assert torch.nn.Linear.forward is original
    assert flops.read(tmp_path / "first.json")["flops"] == 2 * (2 * 1 * 2 * 2)      # forward and its weight gradient
    torch.nn.Linear(2, 2)(torch.randn(1, 2))
    assert flops.read(tmp_path / "second.json")["flops"] == 0 and flops.read(tmp_path / "none.json") is None


def test_artefacts_file_kind_trained_and_seconds(lab_home, tmp_path):
    artefacts.used(lab_home / "zoo" / "z" / "add_1" / "seed0", trained=True)     # nothing started: nothing kept
    artefacts.start(tmp_path / "a.json")
    try:
        artefacts.used(lab_home / "zoo" / "z" / "add_1" / "seed0", trained=False)
        artefacts.used(lab_home / "zoo" / "z" / "add_1" / "seed0", trained=True, seconds=3.0)
        artefacts.used(lab_home / "zoo" / "z" / "add_1" / "seed0", trained=False)   # read back after: still trained here
        artefacts.used(lab_home / "generators" / "kd-seed0-abc", lab_home / "suite" / "multitask" / "k" / "m" / "seed1",
                       trained=True, seconds=4.0)
        artefacts.used(tmp_path / "elsewhere", trained=False)
        rows = artefacts.read(tmp_path / "a.json")
    finally:
        artefacts.stop()
    assert rows["zoo/z/add_1/seed0"] == dict(kind="teacher (zoo)", trained=True, seconds=3.0)
    assert rows["generators/kd-seed0-abc"] == dict(kind="generator run", trained=True, seconds=2.0)
    assert rows["suite/multitask/k/m/seed1"]["kind"] == "multi-task LoRA"
    assert rows[(tmp_path / "elsewhere").resolve().as_posix()] == dict(kind="other", trained=False)


def test_a_teacher_run_files_itself_trained_then_read_back(tiny, lab_home, tmp_path):
    from llgbm.teachers import zoo
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1",), steps=2, n_checkpoints=1, eval_items=2, seeds=(0,))
    model, tok = tiny
    for name, trained in (("first", True), ("again", False)):
        artefacts.start(tmp_path / f"{name}.json")
        try:
            zoo.build_zoo(model, tok, cfg, lab_home / "zoo" / "t", progress=False)
        finally:
            artefacts.stop()
        row = artefacts.read(tmp_path / f"{name}.json")["zoo/t/add_1/seed0"]
        assert row["trained"] is trained and (row.get("seconds", 0) > 0) is trained


def _write(root, stem, rows):
    (root / stem).mkdir(parents=True)
    (root / stem / "artefacts.json").write_text(json.dumps(rows))


def test_artefact_table_groups_by_users_and_flags_work_done_twice(tmp_path):
    t = dict(kind="teacher (zoo)", trained=True, seconds=10.0)
    _write(tmp_path, "00_baseline", {"zoo/a": t, "zoo/b": t, "generators/g": dict(kind="generator run", trained=True, seconds=5.0)})
    _write(tmp_path, "04_multitask", {"zoo/a": dict(t, trained=False), "zoo/b": dict(t, trained=False),
                                      "generators/g": dict(kind="generator run", trained=True, seconds=6.0)})
    rows = usage.artefact_rows(tmp_path, ["00_baseline", "04_multitask", "05_delta_only"])
    assert dict(kind="teacher (zoo)", used_by=["00_baseline", "04_multitask"], trained_in=["00_baseline"], twice=False,
                count=2, seconds=20.0) in rows
    text = "\n".join(usage.artefact_table(tmp_path, ["00_baseline", "04_multitask", "05_delta_only"]))
    assert "| teacher (zoo) | 2 | 00, 04 | 00 | 20 |" in text
    assert "| generator run | 1 | 00, 04 | 00, 04 (**the same steps twice**) | 11 |" in text   # no spans: trained whole
    assert "3 artefacts; 3 used by more than one notebook" in text and "1 trained over the same steps by more than one" in text
    assert "a defect" in text and "Not recorded (no run since artefacts were recorded): 05_delta_only" in text


@pytest.mark.parametrize("spans, twice", [([[0, 80], [80, 160]], False), ([[0, 80], [40, 160]], True),
                                          ([[0, 80], None], True), ([[80, 160], [0, 80], [160, 240]], False),
                                          ([[0, 80]], False), ([None], False)])
def test_training_spans_overlap_only_when_they_share_a_step(spans, twice):
    assert artefacts.overlap(spans) is twice


def test_artefacts_file_the_span_of_steps_a_run_trained(lab_home, tmp_path):
    run = lab_home / "generators" / "delta-seed0-abc"
    artefacts.start(tmp_path / "a.json")
    try:
        artefacts.used(run, trained=True, seconds=1.0, steps=(80, 120))
        artefacts.used(run, trained=True, seconds=1.0, steps=(120, 160))      # continued within the run: one span
        assert artefacts.read(tmp_path / "a.json")["generators/delta-seed0-abc"]["steps"] == [80, 160]
        artefacts.used(run, trained=False)
        assert artefacts.read(tmp_path / "a.json")["generators/delta-seed0-abc"]["steps"] == [80, 160]
        artefacts.used(run, trained=True)                                     # trained whole: no span any more
        artefacts.used(run, trained=True, steps=(0, 10))
        assert "steps" not in artefacts.read(tmp_path / "a.json")["generators/delta-seed0-abc"]
        with pytest.raises(ValueError, match="from <= to"):
            artefacts.used(run, trained=True, steps=(5, 2))
    finally:
        artefacts.stop()


def test_utilisation_is_counted_flops_over_wall_time_against_the_bench_peak(tmp_path):
    cold = dict(seconds=100.0, finished="t1", flops=2e12)
    timings = {"00_baseline": dict(cold, runs={"cold": cold}),
               "01_delta_caching": dict(seconds=50.0, finished="t3", flops=1e12,
                                        runs={"cold": dict(seconds=80.0, finished="t2", flops=4e12),
                                              "warm": dict(seconds=50.0, finished="t3", flops=1e12)}),
               "02_dataset": dict(seconds=5.0, finished="t0", runs={"cold": dict(seconds=5.0, finished="t0")}),
               "06_zeroshot": dict(seconds=90.0, finished="t4", flops=9e12,          # a stage clock's cold total, filed in
                                   runs={"cold": dict(seconds=17000.0, finished="t4"),  # the same second as its warm sitting
                                         "warm": dict(seconds=90.0, finished="t4", flops=9e12)})}
    (tmp_path / "bench.json").write_text(json.dumps(dict(peak_flops_per_s=1e11, machine="a CPU")))
    text = "\n".join(usage.utilisation(timings, usage.bench_peak(tmp_path)))
    assert "| 00_baseline | cold | 100 | 2.00 | 20.0 | 100 (bench) | 0.200 |" in text
    assert "| 01_delta_caching | cold | 80 | 4.00 | 50.0 | 100 (bench) | 0.500 |" in text
    assert "| 01_delta_caching | latest (warm) | 50 | 1.00 | 20.0 | 100 (bench) | 0.200 |" in text
    assert "6.0 TFLOP in 3 min, 33.3 GFLOP/s, 0.333 of the peak (goal: 0.5: **not met**); against the bench's peak for 00, 01" in text
    assert "No counted cold run yet (the suite's share waits for them): 02_dataset, 06_zeroshot" in text
    assert "| 06_zeroshot | latest (warm) | 90 | 9.00 | 100.0 | 100 (bench) | 1.000 |" in text
    assert usage.bench_peak(tmp_path / "nowhere") is None
    assert "share of the peak unknown" in "\n".join(usage.utilisation(timings, None))


def test_utilisation_takes_each_run_against_its_own_machines_peak(tmp_path):
    # Two machines with the same CPU name: the runner filed each run's measured peak; the suite's share is
    # its FLOPs over what each machine could do in its wall time, not over one machine's peak.
    a = dict(seconds=100.0, finished="t1", flops=5e12, peak_flops_per_s=1e11)     # 0.5 of its own 100 GFLOP/s
    b = dict(seconds=100.0, finished="t2", flops=5e12, peak_flops_per_s=2.5e11)   # 0.2 of its own 250
    timings = {"00_baseline": dict(a, runs={"cold": a}), "13_inl": dict(b, runs={"cold": b})}
    (tmp_path / "bench.json").write_text(json.dumps(dict(peak_flops_per_s=2.5e11, machine="a CPU")))
    text = "\n".join(usage.utilisation(timings, usage.bench_peak(tmp_path)))
    assert "| 00_baseline | cold | 100 | 5.00 | 50.0 | 100 (own) | 0.500 |" in text
    assert "| 13_inl | cold | 100 | 5.00 | 50.0 | 250 (own) | 0.200 |" in text
    assert "10.0 TFLOP in 3 min, 50.0 GFLOP/s, 0.286 of the peak (goal: 0.5: **not met**)." in text   # 10 / (10 + 25)
    assert "(bench)" not in text.split("|---|")[-1] and "against the bench's peak for" not in text


def _bench(teacher=(96.0, 0.5578), trainer=(73.6, 0.5578), ours8=10.4, peft8=6.9, diff=9.5e-7, cheaper=288.0):
    return dict(machine="a CPU", peer_teacher=[dict(index="zoo loop", tokens_per_s=teacher[0], final_loss=teacher[1]),
                                               dict(index="Trainer + peft", tokens_per_s=trainer[0], final_loss=trainer[1])],
                peer_scoring=[dict(index="shared forwards (ours)", adapters=8, items_per_s=ours8, max_abs_diff=0.0),
                              dict(index="peft mixed batch", adapters=8, items_per_s=peft8, max_abs_diff=diff),
                              dict(index="shared forwards (ours)", adapters=4, items_per_s=99.0, max_abs_diff=0.0)],
                peer_generation=[dict(index="end to end, warm (median of 3)", seconds=0.17, times_cheaper_than_teacher=cheaper),
                                 dict(index="encode prompts (MiniLM)", seconds=0.089, times_cheaper_than_teacher=550.0),
                                 dict(index="one teacher (training)", seconds=49.0, times_cheaper_than_teacher=1.0)])


@pytest.mark.parametrize("kw, goal, says", [
    ({}, "Teacher training", "**met**"), ({"trainer": (80.0, 0.5578)}, "Teacher training", "**not met**"),
    ({"teacher": (200.0, 0.60)}, "Teacher training", "**not met**"),            # faster at a worse loss is not the goal
    ({}, "Scoring 8 adapters", "**not met**"), ({"ours8": 14.0}, "Scoring 8 adapters", "**met**"),
    ({"ours8": 14.0, "diff": 1e-2}, "Scoring 8 adapters", "**not met**"),       # faster with other scores is not the goal
    ({}, "cheaper than training one teacher", "**not met**"), ({"cheaper": 1200.0}, "cheaper than training one teacher", "**met**")])
def test_peer_goals_are_met_or_not_from_the_bench(tmp_path, kw, goal, says):
    (tmp_path / "bench.json").write_text(json.dumps(_bench(**kw)))
    (line,) = [ln for ln in usage.peer_goals(tmp_path) if goal in ln]
    assert line.split(": ", 1)[1].startswith(says) and "a CPU" in "\n".join(usage.peer_goals(tmp_path))
    assert "encode prompts (MiniLM) 89 ms" in "\n".join(usage.peer_goals(tmp_path))
    assert "No bench run with peers yet" in "\n".join(usage.peer_goals(tmp_path / "nowhere"))


def test_cold_times_say_whether_the_code_changed_since(monkeypatch):
    from llgbm.notebook import provenance
    monkeypatch.setattr(provenance, "changed_since", lambda commit, stem: {"a" * 40: [], "b" * 40: ["x.py", "y.py"]}.get(commit))
    run = lambda commit=None, **kw: dict(runs={"cold": dict(seconds=60.0, **({"commit": commit} if commit else {}), **kw)})  # noqa: E731
    text = "\n".join(usage.cold_code({"00_baseline": run("a" * 40), "11_calabi": run("b" * 40), "12_coordinates": run("c" * 40),
                                      "13_inl": run(), "10_igbundle": run("a" * 40, dirty=True)}))
    assert "00_baseline" not in text                                     # unchanged: nothing to say
    assert "11_calabi: its cold time (60 s) was measured at bbbbbbbbbb; 2 file(s)" in text
    assert "10_igbundle: its cold time (60 s) was measured at aaaaaaaaaa with uncommitted changes; 0 file(s)" in text
    assert "12_coordinates: its cold run's commit cccccccccc is not in this checkout's history" in text
    assert "(13): whether their code changed since is not known" in text
    assert usage.cold_code({"00_baseline": run("a" * 40)}) == []


@pytest.mark.parametrize("floor_ms, says", [(60.0, "**out of reach on this machine without less work**"),
                                            (20.0, "within reach of faster code")])
def test_generation_goal_says_whether_its_flops_allow_it_at_the_peak(tmp_path, floor_ms, says):
    bench = _bench()
    bench["peer_generation"][0] |= {"GFLOP": 7.4, "ms at the fp32 peak": floor_ms}    # the teacher: 49 s, so 49 ms allowed
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (line,) = [ln for ln in usage.peer_goals(tmp_path) if "cheaper than training one teacher" in ln]
    assert f"take {floor_ms:.1f} ms even at the fp32 peak, against the 49.0 ms the goal allows: {says}" in line
    (tmp_path / "bench.json").write_text(json.dumps(_bench()))                          # an older bench: no FLOPs, no claim
    assert "fp32 peak" not in "\n".join(usage.peer_goals(tmp_path))

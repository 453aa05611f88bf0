"""Notebook 06's suite experiment: its compute plan, controls, mixture, scaling table and goals."""
import json
import numpy as np
import pandas as pd
import pytest

from llgbm.lab import suitelab
from llgbm.lab.ledgers import suite as ledger


def test_config_presets_and_refusals():
    quick, smoke = suitelab.SuiteConfig.preset("quick"), suitelab.SuiteConfig.preset("smoke")
    assert quick.seeds == (0, 1, 2) and quick.lm_examples == quick.steps * quick.batch_size * quick.per_adapter
    assert smoke.steps < quick.steps
    with pytest.raises(ValueError, match="generator objective"):
        suitelab.SuiteConfig(objectives=("weight",))
    with pytest.raises(ValueError, match="pool ≥ per_adapter"):
        suitelab.SuiteConfig(pool=2, per_adapter=4)


def test_random_text_control_is_fixed_per_task_and_as_long():
    like = ["Translate: France ->", "x"]
    a, b = suitelab.random_texts(like, "task_a"), suitelab.random_texts(like, "task_a")
    assert a == b and a != suitelab.random_texts(like, "task_b") and len(a) == 2
    assert all(len(t) <= len(s) and t for t, s in zip(a, like))


def test_pool_mixture_sees_what_a_generator_sees():
    from llgbm.core.tasks import get_task
    mix = suitelab.PoolMixture("multitask_lora", ("add_1", "add_2"), pool=5)
    assert len(mix.train) == 10 and mix.train[0] == (("add_1", get_task("add_1").train[0][0]), get_task("add_1").train[0][1])
    assert mix.prompt(mix.train[6][0]) == get_task("add_2").prompt(get_task("add_2").train[1][0])


def _scores(value, n=4, tasks=("a", "b")):
    return {t: {"correct": np.full(n, float(value > 0)), "loglik": np.full(n, value) + np.linspace(-0.1, 0.1, n)} for t in tasks}


def test_scaling_table_and_gain_per_doubling():
    ref = {"base": _scores(-2.0), "teacher": _scores(0.0)}
    runs = {("sft", 16, 0): _scores(-1.5), ("sft", 32, 0): _scores(-1.0), ("sft", None, 0): _scores(-0.5),
            ("sft", None, 1): _scores(-0.7)}
    scale = ledger.scaling_table(runs, ref, {"near": ["a", "b"]}, {16: 16, 32: 32, None: 64})
    assert list(scale["training tasks"]) == [16, 32, 64] and list(scale["seeds"]) == [1, 1, 2]
    assert scale["gap_loglik"].tolist() == pytest.approx([0.25, 0.5, 0.7])
    assert scale["CI low"].isna().tolist() == [True, True, False]          # n/a with one seed
    slope = ledger.gain_per_doubling(scale)["gain per doubling"].iloc[0]
    assert slope == pytest.approx(np.polyfit([4, 5, 6], [0.25, 0.5, 0.7], 1)[0])


def test_methods_figure_shows_each_method_with_its_interval():
    from llgbm.lab import suiterun
    table = pd.DataFrame({"gap_loglik": [0.0, 0.5, -0.3], "gap_loglik_lo": [0.0, 0.4, -0.9], "gap_loglik_hi": [0.0, 0.6, 0.2]},
                         index=["base", "icl", "cd"])
    fig = suiterun.methods_figure({"near": table, "far": table, "all": table})
    assert [ax.get_title() for ax in fig.axes] == ["near held-out tasks", "far held-out tasks"]      # "all" is not a panel
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [ledger.METHODS["icl"], ledger.METHODS["cd"]]          # table order, top down; no base row
    bars = fig.axes[0].containers[0]                               # errorbar: the points and their CI whiskers
    assert np.allclose(sorted(bars.lines[0].get_xdata()), [-0.3, 0.5])


def _metrics(moon_lo=0.1, ratio=6.0, far=0.6, far_lo=0.1, mt_lo=(0.1, 0.1), icl_lo=0.1, other_lo=0.1, random_lo=-0.1, user=0.6):
    m = {"prompt_ratio": ratio, "prompt_tokens_icl": 60.0, "prompt_tokens_sft": 10.0, "user_acc_adapter": user, "user_acc_base": 0.0,
         "far_gap_sft": far, "far_gap_sft_ci_low": far_lo, "far_gap_sft_ci_high": far + 0.2, "near_gap_sft": 0.3}
    def pair(key, lo):
        return {key: lo + 0.1, key + "_lo": lo, key + "_hi": lo + 0.2}
    m |= pair("near_sft_minus_icl_diff_loglik", moon_lo)
    m |= pair("all_sft_minus_multitask_lora_diff_loglik", mt_lo[0]) | pair("all_sft_minus_multitask_lora_diff_acc", mt_lo[1])
    m |= pair("all_adapter_icl_minus_icl_diff_loglik", icl_lo) | pair("all_adapter_icl_minus_icl_diff_acc", icl_lo)
    m |= pair("all_sft_minus_other_diff_loglik", other_lo) | pair("all_sft_minus_random_diff_loglik", random_lo)
    return m


@pytest.mark.parametrize("kw, row, says", [
    ({}, 0, "met"), ({"ratio": 4.0}, 0, "not met"), ({"moon_lo": -0.01}, 0, "not met"),
    ({}, 1, "met"), ({"far": 0.45}, 1, "not met"), ({"far_lo": -0.2}, 1, "not met"),
    ({"mt_lo": (0.1, -0.05)}, 2, "not met"), ({}, 2, "met"), ({"icl_lo": -0.01}, 3, "not met"),
    ({"user": 0.49}, 4, "not met"), ({}, 5, "mixed"), ({"random_lo": 0.01}, 5, "supported"),
    ({"other_lo": -0.3, "random_lo": -0.3}, 5, "refuted")])
def test_goal_verdicts_follow_the_numbers(kw, row, says):
    rows = ledger.goals(_metrics(**kw), "sft")
    assert len(rows) == 6 and rows[row][2] == says


@pytest.mark.parametrize("minutes, split, says", [(85.0, False, "met"), (90.0, True, "met"), (301.0, True, "not met")])
def test_the_cold_budget_row_follows_the_stage_clock(minutes, split, says):
    rows = ledger.goals(_metrics() | {"cold_minutes": minutes, "budget_minutes": 90.0, "cold_split": split}, "sft")
    claim, source, verdict, evidence = rows[5]
    assert len(rows) == 7 and "90-min budget" in claim and verdict == says and rows[6][1] == "lab control (issue 27)"
    assert f"cold: {minutes:.0f} min" in evidence and ("split across sessions" in evidence) == split


def test_paired_table_covers_groups_and_controls():
    ev = {("base", 0): _scores(-2.0), ("icl", 0): _scores(-1.0), ("sft", 0): _scores(-0.5), ("sft", 1): _scores(-0.6),
          ("other", 0): _scores(-1.9), ("multitask_lora", 0): _scores(-1.2)}
    t = ledger.paired_table(ev, {"near": ["a"], "all": ["a", "b"]}, "sft")
    assert ("all", "sft − other") in t.index and ("near", "sft − icl") in t.index and ("all", "adapter_icl − icl") not in t.index
    assert t.loc[("all", "sft − other"), "diff_loglik"] == pytest.approx(1.35)
    assert isinstance(t, pd.DataFrame)


def test_generate_defaults_to_the_objective_06_chose_on_dev(lab_home):
    import json

    from llgbm.lab import generate
    objective, why = generate.chosen_objective("smoke")
    assert objective == "sft" and "has not run" in why
    path = generate.choice_path("smoke")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(objective="cd", when="2026-12-01 12:00 UTC")))
    assert generate.chosen_objective("smoke") == ("cd", "chosen on dev items by notebook 06 (2026-12-01 12:00 UTC)")
    with pytest.raises(ValueError, match="unknown objective 'magic'.*sft, cd"):
        generate.generate_for_task(lab_home / "a", prompts=["x"], objective="magic")


def test_stage_clock_keeps_the_first_measurement(tmp_path):
    from types import SimpleNamespace

    from llgbm.lab import suiterun
    lab = SimpleNamespace(root=tmp_path, profile="smoke", tag=lambda *a: "t", cfg=None, plan=None)
    clock = suiterun.StageClock(lab)
    with clock.stage("a"):
        sum(range(10000))
    first = clock.first["a"]
    again = suiterun.StageClock(lab)                       # a warm rerun: the cold seconds are kept
    with again.stage("a"):
        pass
    assert again.first["a"] == first and again.now["a"] <= first + 1.0
    table = suiterun.stage_table(again)
    assert list(table.index) == ["a", "total"] and table.loc["total", "first run (min)"] == pytest.approx(first / 60)
    assert not table["first run split"].any()


def test_stage_clock_adds_the_parts_of_an_interrupted_cold_stage(tmp_path):
    """A session that ends mid-stage keeps the seconds spent (written every tick, and on an error);
    the run that finishes the stage adds them, and the table says the stage was split."""
    import time
    from types import SimpleNamespace

    from llgbm.lab import suiterun
    lab = SimpleNamespace(root=tmp_path, profile="smoke", tag=lambda *a: "t", cfg=None, plan=None)
    clock = suiterun.StageClock(lab, tick=0.05)
    with pytest.raises(KeyboardInterrupt):
        with clock.stage("b"):
            time.sleep(0.3)
            raise KeyboardInterrupt
    killed = suiterun.StageClock(lab, tick=0.05)             # as a process killed mid-stage leaves it: the beats
    assert killed.partial["b"] == pytest.approx(0.3, abs=0.1) and "b" not in killed.first
    with killed.stage("b"):
        time.sleep(0.2)
    assert killed.first["b"] == pytest.approx(0.5, abs=0.15) and killed.interrupted == {"b"}
    table = suiterun.stage_table(suiterun.StageClock(lab))
    assert table.loc["b", "first run split"] and table.loc["total", "first run split"]
    assert table.loc["b", "first run (min)"] == pytest.approx(killed.first["b"] / 60)
    assert suiterun.cold_budget(killed, 5400) == {}                    # the budget is the quick profile's
    quick = suiterun.StageClock(SimpleNamespace(**{**vars(lab), "profile": "quick"}))
    quick.first, quick.interrupted = {"a": 600.0, "b": 1200.0}, {"b"}
    assert suiterun.cold_budget(quick, 5400) == dict(cold_minutes=30.0, budget_minutes=90.0, cold_split=1.0)
    path = next(tmp_path.glob("stage-seconds-*.json"))
    beats = suiterun.StageClock(lab, tick=0.05)
    with beats.stage("c"):
        time.sleep(0.2)
        assert json.loads(path.read_text())[suiterun.StageClock.PARTIAL]["c"] > 0     # written while it runs

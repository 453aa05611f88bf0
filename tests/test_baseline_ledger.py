"""Notebook 00's ledger: the zoo verdict and claim against the 20-point target, the held-out table
from base to own teacher, and DnD's two claims read from the paired test."""
import numpy as np
import pandas as pd
import pytest

from llgbm.lab.ledgers import baseline as ledger


def _zoo_table(gain: float) -> pd.DataFrame:
    return pd.DataFrame({"base_acc": [0.1, 0.0], "teacher_acc": [0.1 + gain, gain], "gain_acc": [gain, gain],
                         "base_loglik": [-3.0, -4.0], "teacher_loglik": [-1.0, -2.0]}, index=["a", "b"])


@pytest.mark.parametrize("gain, says, status", [(0.25, "beat", "met"), (0.15, "do not beat", "not met")])
def test_zoo_verdict_and_claim_follow_the_20_point_target(gain, says, status):
    throughput = dict(tokens_per_s=100.0, peak_fraction=0.4, peak_flops_per_s=2e11, flops_per_s=8e10)
    verdict = ledger.zoo_verdict(_zoo_table(gain), throughput)
    assert verdict.startswith(f"Teachers {says} the base model") and "40.0% of this machine's" in verdict
    assert "over 2 tasks" in verdict and "200 GFLOP/s" in verdict
    assert ledger.zoo_claim(_zoo_table(gain))[2] == status


def _scores(rng, acc: float, ll: float, n: int = 40) -> dict:
    return {"correct": (rng.random(n) < acc).astype(float), "loglik": ll + 0.1 * rng.standard_normal(n)}


def test_heldout_orders_methods_and_the_generator_recovers_its_gap():
    rng = np.random.default_rng(0)
    held = ["t1", "t2"]
    level = {"base": (0.0, -3.0), "mean_lora": (0.2, -2.5), "nearest_lora": (0.3, -2.0), "teacher": (0.9, -1.0)}
    ref = {m: {t: _scores(rng, a, ll) for t in held} for m, (a, ll) in level.items()} | {"nearest": {"t1": "x", "t2": "y"}}
    evals = {("generated", s): {t: _scores(rng, 0.6, -2.0 + 0.01 * s) for t in held} for s in range(3)}
    hist = {k: {"loss": list(np.linspace(1.0, 0.5, 100)) + [0.5] * 100} for k in evals}
    H = ledger.heldout(evals, ref, held, hist)
    assert list(H.methods) == ["base", "mean of training LoRAs", "nearest task's LoRA", "generated", "own teacher"]
    assert list(H.frame.method.unique()) == list(H.methods) and list(H.summary.index) == list(H.methods)
    assert H.summary.loc["own teacher", "gap_loglik"] == pytest.approx(1.0)
    assert H.summary.loc["base", "gap_loglik"] == pytest.approx(0.0, abs=1e-12)
    assert 0.4 < H.summary.loc["generated", "gap_loglik"] < 0.6        # -2.0 halfway from -3 to -1
    assert H.summary.loc["generated", "n_seeds"] == 3 and np.isnan(H.summary.loc["base", "exact_match_std"])
    assert H.per_task["nearest training task"].to_dict() == {"t1": "x", "t2": "y"}
    test = ledger.mean_lora_test(evals, ref, held)
    assert test["diff_loglik"] == pytest.approx(0.49, abs=0.05) and test["diff_loglik_lo"] > 0
    gain = ledger.relative_gain(evals, ref, held)          # 0.6 vs 0.2 exact match: +200%
    assert gain.mean > 1 and gain.lo > 0.3
    assert ledger.gain_verdict(gain) == "supported"
    claims = ledger.generator_claims(test, gain, generation_s=0.1, teacher_s=30.0, n_seeds=3, roundtrip_err=1e-8)
    assert claims[0][2] == "not reproduced at this scale" and "300×" in claims[0][3]
    assert [c[2] for c in claims[1:]] == ["supported", "supported"]
    assert ledger.generator_claims(test, gain, 0.001, 30.0, 3, 2e-3)[0][2] == "reproduced"
    assert ledger.generator_claims(test, gain, 0.001, 30.0, 3, 2e-3)[2][2] == "refuted"
    verdict = ledger.generator_verdict(H.summary, test, gain, len(held), 200, 0.0, 0.1, 30.0)
    assert verdict.startswith("Trained for 200 steps, where its loss had plateaued") and "300× less" in verdict


@pytest.mark.parametrize("lo, hi, says", [(-0.5, -0.1, "refuted"), (0.1, 0.5, "supported"), (0.05, 0.2, "partly: better, but short of +30%"),
                                          (-0.1, 0.5, "inconclusive")])
def test_dnd_gain_verdict_reads_up_to_30_percent(lo, hi, says):
    from llgbm.core.stats import Interval
    assert ledger.gain_verdict(Interval((lo + hi) / 2, lo, hi)) == says


def test_teacher_seconds_averages_the_heldout_teachers_only():
    records = [dict(task="t1", train_seconds=10.0), dict(task="t2", train_seconds=20.0), dict(task="x", train_seconds=99.0)]
    assert ledger.teacher_seconds(records, ["t1", "t2"]) == 15.0

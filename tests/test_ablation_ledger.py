"""Notebook 04b's ledger: the best behavioural objective, both issue-5 targets and the wording,
read from synthetic per-item scores whose answer is known."""
import numpy as np
import pytest

from llgbm.eval import compare
from llgbm.lab.ledgers import ablations as ledger


def _scores(rng, held, ll: float, cos: float) -> dict:
    return {t: {"correct": (rng.random(60) < (ll + 3) / 2).astype(float), "loglik": ll + 0.05 * rng.standard_normal(60),
                "delta_cos": [cos + 0.02 * rng.standard_normal()]} for t in held}


@pytest.mark.parametrize("delta_cos, met", [(0.7, "met"), (0.3, "not met")])
def test_reading_targets_and_verdict(delta_cos, met):
    rng, held, objectives = np.random.default_rng(0), [f"t{i}" for i in range(6)], ["weight", "multitask", "delta"]
    level = {"weight": (-2.8, 0.02), "multitask": (-2.5, 0.1), "delta": (-1.6, delta_cos)}
    evals = {(o, s): _scores(rng, held, *level[o]) for o in objectives for s in (0, 1)}
    ref = {"base": _scores(rng, held, -3.0, 0.0), "teacher": _scores(rng, held, -1.0, 1.0)}
    table = compare.objective_table(evals, ref, held)
    tests = compare.paired_tests(evals, held, list(ledger.PAIRS))
    r = ledger.Reading(table, tests, objectives)
    assert r.best == "delta" and r.gr_best == "delta" and r.target_gr          # 0.7 of the log-lik gap, CI above 0
    assert r.target_cos == (met == "met") and r.bw["p_signflip"] < 0.05
    assert r.behaviour == "supported"
    m = ledger.metrics(table, tests, objectives, n_seeds=2, steps=10)
    assert m["steps"] == 10 and m["delta_cos_delta_mean"] == pytest.approx(delta_cos, abs=0.02)
    assert m["p_value_delta_vs_weight"] == r.bw["p_signflip"] and m["loglik_diff_delta_vs_weight"] > 1
    claims = ledger.claims(table, r, len(held), 2, 10)
    assert [c[2] for c in claims] == ["supported", "measured", met, "met"]
    text = ledger.verdict(table, r, len(held), 90.0, 3, 6)
    assert f"cos ≥ 0.5 with p < 0.05 {met}; gap recovery ≥ 0.5 met" in text and "took 1.5 min (3 of 6 runs" in text

"""Notebook 04b's ledger: the objective chosen on dev, both issue-5 targets, diverged runs named and the
verdict with and without them, read from synthetic per-item scores whose answer is known."""
import numpy as np
import pytest

from llgbm.lab.ledgers import ablations as ledger
from llgbm.notebook.report import uncited


def _scores(rng, held, ll: float, cos: float) -> dict:
    return {t: {"correct": (rng.random(60) < (ll + 3) / 2).astype(float), "loglik": ll + 0.05 * rng.standard_normal(60),
                "delta_cos": [cos + 0.02 * rng.standard_normal()]} for t in held}


def _analysis(delta_cos: float, wild_seed: bool = False):
    rng, held, objectives = np.random.default_rng(0), [f"t{i}" for i in range(6)], ["weight", "multitask", "delta"]
    level = {"weight": (-2.8, 0.02), "multitask": (-2.5, 0.1), "delta": (-1.6, delta_cos)}
    evals = {(o, s): _scores(rng, held, *level[o]) for o in objectives for s in (0, 1, 2)}
    dev = {(o, s): _scores(rng, held, *level[o]) for o in objectives for s in (0, 1, 2)}
    ref = {"base": _scores(rng, held, -3.0, 0.0), "teacher": _scores(rng, held, -1.0, 1.0)}
    hist = {k: {"loss": [1.0] * 10 + [0.5] * 10} for k in evals}
    if wild_seed:      # one delta seed whose loss blows up and whose scores fall far below the base
        hist["delta", 2] = {"loss": [1.0] * 10 + [9.0] * 10}
        evals["delta", 2] = _scores(rng, held, -8.0, delta_cos)
    return ledger.analyse(evals, dev, ref, ref, held, hist), held


@pytest.mark.parametrize("delta_cos, met", [(0.7, "met"), (0.3, "not met")])
def test_targets_and_verdict_cite_only_logged_numbers(delta_cos, met):
    A, held = _analysis(delta_cos)
    assert A.best == "delta"                                  # chosen on dev: 0.7 of the log-lik gap
    assert A.table.loc["delta", "gap_loglik"] == pytest.approx(0.7, abs=0.02) and A.table["n_diverged"].sum() == 0
    e = ledger.entry(A, len(held), 3, 10, 90.0, 3, 9)
    assert e.metrics["steps"] == 10 and e.metrics["delta_cos_delta_mean"] == pytest.approx(delta_cos, abs=0.02)
    assert e.metrics["p_value_delta_vs_weight"] < 0.05 and e.metrics["loglik_diff_delta_vs_weight"] > 1
    assert [c[2] for c in e.claims] == ["supported", "measured", met, "met"]
    assert "No run diverged." in e.verdict and "took 1.5 min; 3 of 9 runs" in e.verdict
    for text in [e.verdict, *(f"{c[2]} | {c[3]}" for c in e.claims)]:
        assert uncited(text, e.metrics) == []


def test_a_diverged_seed_is_flagged_named_and_left_out_once():
    A, held = _analysis(0.7, wild_seed=True)
    assert A.table.loc["delta", "n_diverged"] == 1 and A.frame.diverged.sum() == 1
    assert A.table.loc["delta", "gap_loglik"] < 0 < A.table.loc["weight", "gap_loglik"]     # the wild seed drags the mean down
    e = ledger.entry(A, len(held), 3, 10, 90.0, 0, 9)
    assert "**1 run(s) diverged**: delta seed 2" in e.verdict and "training loss ends above its start" in e.verdict
    assert "Without them the verdict is" in e.verdict and e.metrics["diverged_seeds_delta"] == 1
    assert e.metrics["kept_loglik_diff_delta_vs_weight"] > e.metrics["loglik_diff_delta_vs_weight"]
    assert uncited(e.verdict, e.metrics) == []

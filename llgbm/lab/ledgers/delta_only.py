"""Notebook 05's metrics, claim and verdict: the delta-only generator trained longer against the
weight-only (phase 0) baseline, on held-out tasks."""
from __future__ import annotations

import pandas as pd

from llgbm.core import stats
from llgbm.lab.ledgers import Entry

LONG, BASELINE = "delta-only, long", "weight-only (phase 0)"


def entry(table: pd.DataFrame, d: pd.Series, *, long_steps: int, short_steps: int, seeds: list[int], train_seconds: float) -> Entry:
    """`table` from `compare.objective_table`; `d` the paired test LONG − BASELINE (`compare.paired_tests`)."""
    L, W = table.loc[LONG], table.loc[BASELINE]
    m = dict(steps_long=long_steps, n_seeds=len(seeds), delta_cos_long=L["delta_cos_mean"], gap_recovery_long=L["gap_loglik"],
             gap_recovery_long_ci_low=L["loglik_lo"], gap_recovery_long_ci_high=L["loglik_hi"],
             gap_recovery_acc_long=L["gap_acc"], gap_recovery_baseline=W["gap_loglik"],
             delta_cos_baseline=W["delta_cos_mean"], loglik_diff_vs_baseline=d["diff_loglik"],
             loglik_diff_vs_baseline_ci_low=d["loglik_lo"], loglik_diff_vs_baseline_ci_high=d["loglik_hi"],
             acc_diff_vs_baseline=d["diff_acc"], acc_diff_vs_baseline_ci_low=d["acc_lo"],
             acc_diff_vs_baseline_ci_high=d["acc_hi"], train_seconds_long=train_seconds)
    verdict_long = stats.comparison_verdict({"gold log-lik": (d["loglik_lo"], d["loglik_hi"]),
                                             "exact match": (d["acc_lo"], d["acc_hi"])})
    claims = [("A delta-only generator, trained longer, beats the weight-only DnD baseline on held-out tasks", "LLGBM phase 5 (seed 002)",
               verdict_long,
               f"gold log-lik {d['diff_loglik']:+.3f} [{d['loglik_lo']:+.3f}, {d['loglik_hi']:+.3f}] per token, exact match "
               f"{d['diff_acc'] * 100:+.1f} points [{d['acc_lo'] * 100:+.1f}, {d['acc_hi'] * 100:+.1f}]; "
               f"{long_steps} vs {short_steps} steps, seeds {seeds}")]
    verdict = (f"Trained to {long_steps} steps, the delta-only generator recovers {L['gap_loglik']:.3f} [{L['loglik_lo']:.3f}, "
               f"{L['loglik_hi']:.3f}] of the log-likelihood gap and {L['gap_acc']:.3f} of the accuracy gap (cos(Δ̂, Δ) "
               f"{L['delta_cos_mean']:.3f}); the weight-only baseline recovers {W['gap_loglik']:.3f}. Against the baseline: log-lik "
               f"{d['diff_loglik']:+.3f} [{d['loglik_lo']:+.3f}, {d['loglik_hi']:+.3f}] per token, exact match {d['diff_acc'] * 100:+.1f} points.")
    return Entry(m, claims, verdict)

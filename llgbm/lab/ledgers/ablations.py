"""Notebook 04b's metrics, claims-ledger rows and verdict, from its objective table
(`compare.objective_table`) and paired tests (`PAIRS`), so that the wording follows each run's numbers."""
from __future__ import annotations

import pandas as pd

from llgbm.core import stats

PAIRS = (("delta", "weight"), ("multitask", "weight"), ("delta", "multitask"))
COS = "delta_cos_mean"


def metrics(table: pd.DataFrame, tests: pd.DataFrame, objectives, **protocol) -> dict[str, float]:
    """`protocol` (seeds, steps, items, runs already trained, seconds) and, per objective, its mean
    cos(Δ̂, Δ), log-lik gap recovery and exact match; per paired test, its sign-flip p and Δ log-lik."""
    out = dict(protocol)
    for o in objectives:
        out.update({f"delta_cos_{o}_mean": table.loc[o, COS], f"delta_cos_{o}_std": table.loc[o, "delta_cos_std"],
                    f"gap_recovery_{o}_mean": table.loc[o, "seed_gap_loglik_mean"],
                    f"gap_recovery_{o}_std": table.loc[o, "seed_gap_loglik_std"],
                    f"gap_recovery_{o}_ci_low": table.loc[o, "loglik_lo"], f"gap_recovery_{o}_ci_high": table.loc[o, "loglik_hi"],
                    f"acc_{o}_mean": table.loc[o, "exact_match_mean"]})
    for name, row in tests.iterrows():
        a, b = name.split(" − ")
        out.update({f"p_value_{a}_vs_{b}": row["p_signflip"], f"loglik_diff_{a}_vs_{b}": row["diff_loglik"]})
    return out


class Reading:
    """What the verdict and the claims read off the table: the behavioural objective with the best
    cosine against weight-only (its paired test, the verdict on all three metrics) and the best gap
    recovery, with both issue-5 targets."""

    def __init__(self, table: pd.DataFrame, tests: pd.DataFrame, objectives):
        self.objectives = list(objectives)
        self.best = table.loc[[o for o in objectives if o != "weight"], COS].astype(float).idxmax()
        self.bw, self.cos_best, self.cos_w = tests.loc[f"{self.best} − weight"], table.loc[self.best, COS], table.loc["weight", COS]
        self.target_cos = self.cos_best >= 0.5 and self.cos_best > self.cos_w and self.bw["p_signflip"] < 0.05
        self.gr_best = table["gap_loglik"].astype(float).idxmax()
        self.target_gr = table.loc[self.gr_best, "gap_loglik"] >= 0.5 and table.loc[self.gr_best, "loglik_lo"] > 0
        bw = self.bw
        self.behaviour = stats.comparison_verdict({"cos(Δ̂, Δ)": (bw["cos_lo"], bw["cos_hi"]),
                                                   "gold log-lik": (bw["loglik_lo"], bw["loglik_hi"]),
                                                   "exact match": (bw["acc_lo"], bw["acc_hi"])})
        self.cosines = " / ".join(f"{o} {table.loc[o, COS]:.3f} ± {table.loc[o, 'delta_cos_std']:.3f}" for o in objectives)


def claims(table: pd.DataFrame, r: Reading, n_held: int, n_seeds: int, steps: int) -> list[tuple[str, str, str, str]]:
    bw, p = r.bw, r.bw["p_signflip"]
    g = table.loc[r.gr_best]
    return [
        ("Behavioural matching (delta loss) beats weight matching for generated adapters", "LLGBM (seed 002)", r.behaviour,
         f"held-out cos(Δ̂, Δ): {r.best} {r.cos_best:.3f} vs weight {r.cos_w:.3f} (p = {p:.3f}, {n_held} tasks); "
         f"gold log-lik {bw['diff_loglik']:+.3f} [{bw['loglik_lo']:+.3f}, {bw['loglik_hi']:+.3f}] per token; "
         f"exact match {bw['diff_acc'] * 100:+.1f} points [{bw['acc_lo'] * 100:+.1f}, {bw['acc_hi'] * 100:+.1f}]"),
        ("Ablation: cos(Δ̂, Δ) weight / multitask / delta", "public LLGBM attempt: 0.003 / 0.053 / 0.058 (ANCHORS)", "measured",
         f"{r.cosines} ({n_seeds} seeds, {steps} steps)"),
        ("A delta-supervised generator reaches cos(Δ̂, Δ) ≥ 0.5 on held-out adapters, above weight-only with p < 0.05",
         "lab target (issue 5)", "met" if r.target_cos else "not met", f"best {r.best}: {r.cos_best:.3f} vs {r.cos_w:.3f}, p = {p:.3f}"),
        ("Held-out gap recovery (log-lik) ≥ 0.5 with a CI excluding 0", "lab target (issue 5)", "met" if r.target_gr else "not met",
         f"best {r.gr_best}: {g['gap_loglik']:.3f} [{g['loglik_lo']:.3f}, {g['loglik_hi']:.3f}]"),
    ]


def verdict(table: pd.DataFrame, r: Reading, n_held: int, seconds: float, cached: int, n_runs: int) -> str:
    t, o = table, r.objectives
    return ("Held-out cos(Δ̂, Δ) is " + ", ".join(f"{x} {t.loc[x, COS]:.3f} ± {t.loc[x, 'delta_cos_std']:.3f}" for x in o)
            + f" ({r.best} vs weight: p = {r.bw['p_signflip']:.3f} over {n_held} tasks). Gap recovery (log-lik) is "
            + ", ".join(f"{x} {t.loc[x, 'gap_loglik']:.3f} [{t.loc[x, 'loglik_lo']:.3f}, {t.loc[x, 'loglik_hi']:.3f}]"
                        for x in o)
            + "; of the exact-match gap: " + ", ".join(f"{x} {t.loc[x, 'gap_acc']:.3f}" for x in o)
            + f". {r.best} against weight-only: {r.behaviour}. Targets: cos ≥ 0.5 with p < 0.05 {'met' if r.target_cos else 'not met'}; "
            f"gap recovery ≥ 0.5 {'met' if r.target_gr else 'not met'}. The notebook took {seconds / 60:.1f} min ({cached} of {n_runs} "
            f"runs already trained by notebooks 00 and 04).")

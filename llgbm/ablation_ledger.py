"""Notebook 04b's metrics, claims-ledger rows and verdict, from its objective table
(`compare.objective_table`) and paired tests (`PAIRS`), so that the wording follows each run's numbers."""
from __future__ import annotations

import pandas as pd

from . import stats

PAIRS = (("delta", "weight"), ("multitask", "weight"), ("delta", "multitask"))
COS = "cos(Δ̂, Δ) mean"


def metrics(table: pd.DataFrame, tests: pd.DataFrame, objectives, **protocol) -> dict[str, float]:
    """`protocol` (seeds, steps, items, runs already trained, seconds) and, per objective, its mean
    cos(Δ̂, Δ), log-lik gap recovery and exact match; per paired test, its sign-flip p and Δ log-lik."""
    out = dict(protocol)
    for o in objectives:
        out.update({f"delta_cos_{o}_mean": table.loc[o, COS], f"delta_cos_{o}_std": table.loc[o, "cos(Δ̂, Δ) std"],
                    f"gap_recovery_{o}_mean": table.loc[o, "gap recovery (log-lik) mean"],
                    f"gap_recovery_{o}_std": table.loc[o, "gap recovery (log-lik) std"],
                    f"gap_recovery_{o}_ci_low": table.loc[o, "gold log-lik CI low"], f"gap_recovery_{o}_ci_high": table.loc[o, "gold log-lik CI high"],
                    f"acc_{o}_mean": table.loc[o, "exact match mean"]})
    for name, row in tests.iterrows():
        a, b = name.split(" − ")
        out.update({f"p_value_{a}_vs_{b}": row["p (sign-flip, tasks)"], f"loglik_diff_{a}_vs_{b}": row["Δ gold log-lik"]})
    return out


class Reading:
    """What the verdict and the claims read off the table: the behavioural objective with the best
    cosine against weight-only (its paired test, the verdict on all three metrics) and the best gap
    recovery, with both issue-5 targets."""

    def __init__(self, table: pd.DataFrame, tests: pd.DataFrame, objectives):
        self.objectives = list(objectives)
        self.best = table.loc[[o for o in objectives if o != "weight"], COS].astype(float).idxmax()
        self.bw, self.cos_best, self.cos_w = tests.loc[f"{self.best} − weight"], table.loc[self.best, COS], table.loc["weight", COS]
        self.target_cos = self.cos_best >= 0.5 and self.cos_best > self.cos_w and self.bw["p (sign-flip, tasks)"] < 0.05
        self.gr_best = table["gap rec. gold log-lik"].astype(float).idxmax()
        self.target_gr = table.loc[self.gr_best, "gap rec. gold log-lik"] >= 0.5 and table.loc[self.gr_best, "gold log-lik CI low"] > 0
        bw = self.bw
        self.behaviour = stats.comparison_verdict({"cos(Δ̂, Δ)": (bw["cos CI low"], bw["cos CI high"]),
                                                   "gold log-lik": (bw["gold log-lik CI low"], bw["gold log-lik CI high"]),
                                                   "exact match": (bw["exact match CI low"], bw["exact match CI high"])})
        self.cosines = " / ".join(f"{o} {table.loc[o, COS]:.3f} ± {table.loc[o, 'cos(Δ̂, Δ) std']:.3f}" for o in objectives)


def claims(table: pd.DataFrame, r: Reading, n_held: int, n_seeds: int, steps: int) -> list[tuple[str, str, str, str]]:
    bw, p = r.bw, r.bw["p (sign-flip, tasks)"]
    g = table.loc[r.gr_best]
    return [
        ("Behavioural matching (delta loss) beats weight matching for generated adapters", "LLGBM (seed 002)", r.behaviour,
         f"held-out cos(Δ̂, Δ): {r.best} {r.cos_best:.3f} vs weight {r.cos_w:.3f} (p = {p:.3f}, {n_held} tasks); "
         f"gold log-lik {bw['Δ gold log-lik']:+.3f} [{bw['gold log-lik CI low']:+.3f}, {bw['gold log-lik CI high']:+.3f}] per token; "
         f"exact match {bw['Δ exact match'] * 100:+.1f} points [{bw['exact match CI low'] * 100:+.1f}, {bw['exact match CI high'] * 100:+.1f}]"),
        ("Ablation: cos(Δ̂, Δ) weight / multitask / delta", "public LLGBM attempt: 0.003 / 0.053 / 0.058 (ANCHORS)", "measured",
         f"{r.cosines} ({n_seeds} seeds, {steps} steps)"),
        ("A delta-supervised generator reaches cos(Δ̂, Δ) ≥ 0.5 on held-out adapters, above weight-only with p < 0.05",
         "lab target (issue 5)", "met" if r.target_cos else "not met", f"best {r.best}: {r.cos_best:.3f} vs {r.cos_w:.3f}, p = {p:.3f}"),
        ("Held-out gap recovery (log-lik) ≥ 0.5 with a CI excluding 0", "lab target (issue 5)", "met" if r.target_gr else "not met",
         f"best {r.gr_best}: {g['gap rec. gold log-lik']:.3f} [{g['gold log-lik CI low']:.3f}, {g['gold log-lik CI high']:.3f}]"),
    ]


def verdict(table: pd.DataFrame, r: Reading, n_held: int, seconds: float, cached: int, n_runs: int) -> str:
    t, o = table, r.objectives
    return ("Held-out cos(Δ̂, Δ) is " + ", ".join(f"{x} {t.loc[x, COS]:.3f} ± {t.loc[x, 'cos(Δ̂, Δ) std']:.3f}" for x in o)
            + f" ({r.best} vs weight: p = {r.bw['p (sign-flip, tasks)']:.3f} over {n_held} tasks). Gap recovery (log-lik) is "
            + ", ".join(f"{x} {t.loc[x, 'gap rec. gold log-lik']:.3f} [{t.loc[x, 'gold log-lik CI low']:.3f}, {t.loc[x, 'gold log-lik CI high']:.3f}]"
                        for x in o)
            + "; of the exact-match gap: " + ", ".join(f"{x} {t.loc[x, 'gap rec. exact match']:.3f}" for x in o)
            + f". {r.best} against weight-only: {r.behaviour}. Targets: cos ≥ 0.5 with p < 0.05 {'met' if r.target_cos else 'not met'}; "
            f"gap recovery ≥ 0.5 {'met' if r.target_gr else 'not met'}. The notebook took {seconds / 60:.1f} min ({cached} of {n_runs} "
            f"runs already trained by notebooks 00 and 04).")

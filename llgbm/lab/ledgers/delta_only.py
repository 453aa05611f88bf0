"""Notebook 05's metrics, claim and verdict: the delta-only generator trained longer against the
weight-only (phase 0, trained to its plateau) baseline and against its own shorter run, on held-out
tasks, over every seed (hierarchical CIs; diverged runs flagged and named)."""
from __future__ import annotations

import pandas as pd

from llgbm.core import stats
from llgbm.eval import compare
from llgbm.lab.ledgers import Entry

LONG, SHORT, BASELINE = "delta-only, long", "delta-only, short", "weight-only (phase 0)"
PAIRS = ((LONG, BASELINE), (LONG, SHORT))


def entry(table: pd.DataFrame, tests: pd.DataFrame, frame: pd.DataFrame, *, steps: dict[str, int], seeds: list[int],
          train_seconds: float, plateau: float) -> Entry:
    """`table` from `compare.objective_table`, `tests` the paired tests of PAIRS (`compare.paired_tests`),
    `frame` the runs (`compare.seed_frame`), `steps` each method's training steps, `plateau` the
    baseline's largest `stats.plateau_drop` over its seeds."""
    L, S, W = table.loc[LONG], table.loc[SHORT], table.loc[BASELINE]
    d, ds = tests.loc[f"{LONG} − {BASELINE}"], tests.loc[f"{LONG} − {SHORT}"]
    m = dict(steps_long=steps[LONG], steps_short=steps[SHORT], steps_baseline=steps[BASELINE], n_seeds=len(seeds),
             delta_cos_long=L["delta_cos_mean"], delta_cos_short=S["delta_cos_mean"], delta_cos_baseline=W["delta_cos_mean"],
             train_seconds_long=train_seconds, diverged_long=L["n_diverged"], diverged_short=S["n_diverged"],
             diverged_baseline=W["n_diverged"], baseline_plateau_drop=plateau, plateau_threshold=stats.PLATEAU)
    for tag, row in (("long", L), ("short", S), ("baseline", W)):
        m.update({f"gap_recovery_{tag}": row["gap_loglik"], f"gap_recovery_{tag}_ci_low": row["gap_loglik_lo"],
                  f"gap_recovery_{tag}_ci_high": row["gap_loglik_hi"], f"gap_recovery_acc_{tag}": row["gap_acc"]})
    for tag, row in (("vs_baseline", d), ("vs_short", ds)):
        m.update(compare.diff_metrics(row, f"{{k}}_diff_{tag}"))
    m.update(compare.run_metrics(frame))
    flagged = frame[frame.diverged]
    named = "; ".join(f"{r.method} seed {r.seed}: {r.diverged_reason}" for r in flagged.itertuples())
    claims = [("A delta-only generator, trained longer, beats the weight-only DnD baseline on held-out tasks", "LLGBM phase 5 (seed 002)",
               compare.verdict_of(d), f"{compare.evidence(d)}; {steps[LONG]} delta-only vs {steps[BASELINE]} weight-only steps, "
               f"{len(seeds)} seeds" + (f"; diverged: {named}" if len(flagged) else ""))]
    longer = ("better than" if ds["diff_loglik_lo"] > 0 else "worse than" if ds["diff_loglik_hi"] < 0
              else "not distinguishable from")
    verdict = (f"Trained to {steps[LONG]} steps, the delta-only generator recovers {L['gap_loglik']:.3f} [{L['gap_loglik_lo']:.3f}, "
               f"{L['gap_loglik_hi']:.3f}] of the log-likelihood gap (95% CI over {len(seeds)} seeds and the tasks; per seed "
               f"{L['per_seed_gap_loglik']}) and {L['gap_acc']:.3f} of the accuracy gap (cos(Δ̂, Δ) {L['delta_cos_mean']:.3f}). "
               f"That is {longer} its own {steps[SHORT]}-step run ({S['gap_loglik']:.3f}; log-lik {ds['diff_loglik']:+.3f} "
               f"[{ds['diff_loglik_lo']:+.3f}, {ds['diff_loglik_hi']:+.3f}]). The weight-only baseline, trained {steps[BASELINE]} steps "
               f"({'plateaued' if plateau < stats.PLATEAU else '**not plateaued**'}: its loss fell {plateau:.2%} over the last 10% of "
               f"steps), recovers {W['gap_loglik']:.3f}. Against it: {compare.evidence(d)}: {compare.verdict_of(d)}."
               + (f" **Diverged runs** (counted above): {named}." if len(flagged) else " No run diverged."))
    return Entry(m, claims, verdict)

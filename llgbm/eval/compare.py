"""Tables of held-out comparisons, built from per-item scores ({task: {correct, loglik[, delta_cos]}}):
the methods table with gap recovery and its CIs, per-seed frames for plotting, seed-averaged tables
of objectives, and paired tests between them. Notebooks 00, 04b, 05, 06 and 10 share these.

Columns carry stable keys (`gap_loglik`, `loglik_lo`, ...); `labelled` gives them their display labels
(`LABELS`) at the end, for a figure or a markdown table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from llgbm.core.stats import bootstrap_ci, gap_recovery, paired_diff_ci, paired_permutation_test, pooled, task_delta_cos

METRICS = {"correct": "acc", "loglik": "loglik"}       # score key -> the short key of its columns
MEASURES = {"correct": "exact_match", "loglik": "gold_loglik"}

LABELS = {
    "exact_match": "exact match", "gold_loglik": "gold log-lik",
    "gap_acc": "gap rec. exact match", "gap_loglik": "gap rec. gold log-lik",
    "acc_lo": "exact match CI low", "acc_hi": "exact match CI high",
    "loglik_lo": "gold log-lik CI low", "loglik_hi": "gold log-lik CI high",
    "seed_gap_loglik": "gap recovery (log-lik)", "delta_cos": "cos(Δ̂, Δ)", "cos_lo": "cos CI low", "cos_hi": "cos CI high",
    "diff_acc": "Δ exact match", "diff_loglik": "Δ gold log-lik", "diff_cos": "Δ cos (tasks)", "p_signflip": "p (sign-flip, tasks)",
} | {f"{k}_{s}": f"{v} {s}" for k, v in (("exact_match", "exact match"), ("gold_loglik", "gold log-lik"),
                                         ("seed_gap_loglik", "gap recovery (log-lik)"), ("delta_cos", "cos(Δ̂, Δ)"))
     for s in ("mean", "std")}


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its stable column keys replaced by their display labels (other columns kept)."""
    return df.rename(columns=LABELS)


def per_task(scores: dict[str, dict], what: str, names: list[str]) -> pd.DataFrame:
    """Tasks × methods: the mean of one metric ('correct' or 'loglik') per task."""
    return pd.DataFrame({m: {t: float(np.mean(s[t][what])) for t in names} for m, s in scores.items()})


def method_table(scores: dict[str, dict], base: str, teacher: str, names: list[str]) -> pd.DataFrame:
    """Per method, pooled over the tasks' items: exact match, gold log-lik, and gap recovery
    (method − base) / (teacher − base) on each, with paired-bootstrap 95% CIs."""
    rows = {}
    for m, s in scores.items():
        row = {}
        for what, key in METRICS.items():
            values = pooled(s, what, names)
            gr = gap_recovery(pooled(scores[base], what, names), values, pooled(scores[teacher], what, names))
            row.update({MEASURES[what]: values.mean(), f"gap_{key}": gr[0], f"{key}_lo": gr[1], f"{key}_hi": gr[2]})
        rows[m] = row
    return pd.DataFrame(rows).T


def seed_mean(evals: dict[tuple[str, int], dict], method: str, names: list[str]) -> dict[str, dict]:
    """{task: {correct, loglik}} of one method averaged item by item over its seeds."""
    runs = [s for (m, _), s in evals.items() if m == method]
    if not runs:
        raise KeyError(f"no runs of method {method!r}; have {sorted({m for m, _ in evals})}")
    return {t: {w: np.mean([np.asarray(s[t][w], dtype=float) for s in runs], 0) for w in METRICS} for t in names}


def seed_items(evals: dict[tuple[str, int], dict], method: str, what: str, names: list[str]) -> np.ndarray:
    """Per-item values of one method averaged over its seeds (the keys (method, seed) of `evals`)."""
    return np.mean([pooled(s, what, names) for (m, _), s in evals.items() if m == method], 0)


def seed_frame(evals: dict[tuple[str, int], dict], ref: dict[str, dict] | None, names: list[str]) -> pd.DataFrame:
    """One row per (method, seed): exact match, gold log-lik, log-lik gap recovery (when `ref` has the
    base and teacher scores) and, when the scores carry it, cos(Δ̂, Δ). Long form, for per-seed points
    over a mean with its CI."""
    rows = []
    for (m, seed), s in evals.items():
        ll = pooled(s, "loglik", names)
        row = dict(method=m, seed=seed, exact_match=pooled(s, "correct", names).mean(), gold_loglik=ll.mean())
        if ref is not None:
            row["seed_gap_loglik"] = gap_recovery(pooled(ref["base"], "loglik", names), ll,
                                                         pooled(ref["teacher"], "loglik", names), n_boot=1)[0]
        if all("delta_cos" in s[t] for t in names):
            row["delta_cos"] = task_delta_cos(s, names).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def objective_table(evals: dict[tuple[str, int], dict], ref: dict[str, dict], names: list[str]) -> pd.DataFrame:
    """Per method over its seeds: per-seed mean ± std of each measure, and on seed-averaged items the
    gap recoveries with 95% CIs (and the cosine's CI over tasks)."""
    frame = seed_frame(evals, ref, names)
    rows = {}
    for m, g in frame.groupby("method", sort=False):
        row = {f"{c}_{stat}": getattr(g[c], stat)(ddof=0) if stat == "std" else g[c].mean()
               for c in g.columns[2:] for stat in ("mean", "std")}
        for what, key in METRICS.items():
            items = seed_items(evals, m, what, names)
            gr = gap_recovery(pooled(ref["base"], what, names), items, pooled(ref["teacher"], what, names))
            row.update({f"gap_{key}": gr[0], f"{key}_lo": gr[1], f"{key}_hi": gr[2]})
        if "delta_cos_mean" in row:
            cos = np.mean([task_delta_cos(s, names) for (k, _), s in evals.items() if k == m], 0)
            row["cos_lo"], row["cos_hi"] = bootstrap_ci(cos)
        rows[m] = row
    return pd.DataFrame(rows).T


def paired_tests(evals: dict[tuple[str, int], dict], names: list[str], pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """A − B for each pair, on seed-averaged values: log-lik and exact match over items (paired
    bootstrap 95% CI) and, when present, cos(Δ̂, Δ) over tasks (exact sign-flip test and bootstrap CI)."""
    out = {}
    methods = {m for m, _ in evals}
    for a, b in pairs:
        if a not in methods or b not in methods:
            continue
        row = {}
        for what, key in METRICS.items():
            d = paired_diff_ci(seed_items(evals, a, what, names), seed_items(evals, b, what, names))
            row.update({f"diff_{key}": d[0], f"{key}_lo": d[1], f"{key}_hi": d[2]})
        first = next(s for (m, _), s in evals.items() if m == a)
        if all("delta_cos" in first[t] for t in names):
            ca, cb = (np.mean([task_delta_cos(s, names) for (k, _), s in evals.items() if k == m], 0) for m in (a, b))
            d = paired_diff_ci(ca, cb)
            row.update({"diff_cos": d[0], "cos_lo": d[1], "cos_hi": d[2], "p_signflip": paired_permutation_test(ca, cb)})
        out[f"{a} − {b}"] = row
    return pd.DataFrame(out).T

"""Tables of held-out comparisons, built from per-item scores ({task: {correct, loglik[, delta_cos]}})
of runs keyed (method, seed): the methods table with gap recovery, its per-seed values, its
hierarchical 95% CI (seeds, then tasks: `stats.hierarchical_bootstrap`) and, beside it, the item-only
CI; per-seed frames for plotting, with diverged runs flagged; and paired tests between methods.
Notebooks 00, 04b, 05, 06 and 10 share these.

Columns carry stable keys (`gap_loglik`, `gap_loglik_lo`, ...); `labelled` gives them their display
labels (`LABELS`) at the end, for a figure or a markdown table, each CI column naming what it bounds
and what was resampled."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from llgbm.core import stats
from llgbm.core.stats import paired_permutation_test, pooled, task_delta_cos

METRICS = {"correct": "acc", "loglik": "loglik"}       # score key -> the short key of its columns
MEASURES = {"correct": "exact_match", "loglik": "gold_loglik"}
# A run is flagged as diverged when its held-out log-lik gap recovery is below this: it leaves the
# model worse than the base by more than the whole base-to-teacher gap (besides a training loss that
# ends above its start or is non-finite: `stats.divergence`).
GAP_FLOOR = -1.0
LOSS_WINDOW = 0.1      # the start and end of a loss curve: the mean of its first and last 10% of steps

_NAMES = {"acc": "exact match", "loglik": "gold log-lik", "cos": "cos(Δ̂, Δ)"}
_CI = {"lo": "95% CI low", "hi": "95% CI high"}
LABELS = {
    "n_seeds": "seeds", "exact_match": "exact match", "gold_loglik": "gold log-lik", "delta_cos": "cos(Δ̂, Δ)",
    "seed_gap_loglik": "gap rec. log-lik", "per_seed_gap_loglik": "gap rec. log-lik per seed", "n_diverged": "diverged seeds", "diverged": "diverged",
    "diverged_reason": "why flagged", "loss_start": "training loss, start", "loss_end": "training loss, end",
    "p_signflip": "p (sign-flip, tasks)",
} | {f"gap_{k}": f"gap rec. {v}" for k, v in _NAMES.items()} \
  | {f"gap_{k}_{e}": f"gap rec. {v} {c} (seeds·tasks)" for k, v in _NAMES.items() for e, c in _CI.items()} \
  | {f"gap_{k}_item_{e}": f"gap rec. {v} {c} (items only)" for k, v in _NAMES.items() for e, c in _CI.items()} \
  | {f"diff_{k}": f"Δ {v}" for k, v in _NAMES.items()} \
  | {f"diff_{k}_{e}": f"Δ {v} {c} (seeds·tasks)" for k, v in _NAMES.items() for e, c in _CI.items()} \
  | {f"diff_{k}_item_{e}": f"Δ {v} {c} (items only)" for k, v in _NAMES.items() for e, c in _CI.items()} \
  | {f"delta_cos_{e}": f"cos(Δ̂, Δ) {c} (seeds·tasks)" for e, c in _CI.items()} \
  | {f"{k}_{s}": f"{v} {s}" for k, v in (("exact_match", "exact match"), ("gold_loglik", "gold log-lik"),
                                         ("seed_gap_loglik", "gap rec. log-lik"), ("delta_cos", "cos(Δ̂, Δ)"))
     for s in ("mean", "std")}


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its stable column keys replaced by their display labels (other columns kept)."""
    return df.rename(columns=LABELS)


def per_task(scores: dict[str, dict], what: str, names: list[str]) -> pd.DataFrame:
    """Tasks × methods: the mean of one metric ('correct' or 'loglik') per task."""
    return pd.DataFrame({m: {t: float(np.mean(s[t][what])) for t in names} for m, s in scores.items()})


def task_sizes(scores: dict[str, dict], names: list[str]) -> tuple[int, ...]:
    """Items per task, in `names` order (the layout of `stats.pooled`)."""
    return tuple(len(scores[t]["loglik"]) for t in names)


SPLITS = ("test", "dev")


def split_items(scores: dict[str, dict], split: str, n_test: int) -> dict[str, dict]:
    """One split of per-item scores laid out test items first, then dev items: "test" keeps each
    task's first `n_test` items, "dev" the rest. Per-task values that are not per item (cos(Δ̂, Δ),
    the generated Δ) are kept in both."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    part = slice(None, n_test) if split == "test" else slice(n_test, None)
    return {t: {k: (np.asarray(v)[part] if k in METRICS else v) for k, v in d.items()} for t, d in scores.items()}


def methods_of(evals: dict) -> list[str]:
    """The methods of `evals` ({(method, seed): scores}) in first-seen order."""
    return list(dict.fromkeys(m for m, _ in evals))


def runs_of(evals: dict, method: str, what: str, names: list[str]) -> np.ndarray:
    """(seeds, items): one method's per-item values, a row per seed."""
    runs = [pooled(s, what, names) for (m, _), s in evals.items() if m == method]
    if not runs:
        raise KeyError(f"no runs of method {method!r}; have {methods_of(evals)}")
    return np.stack(runs)


def seed_mean(evals: dict[tuple[str, int], dict], method: str, names: list[str]) -> dict[str, dict]:
    """{task: {correct, loglik}} of one method averaged item by item over its seeds."""
    runs = [s for (m, _), s in evals.items() if m == method]
    if not runs:
        raise KeyError(f"no runs of method {method!r}; have {methods_of(evals)}")
    return {t: {w: np.mean([np.asarray(s[t][w], dtype=float) for s in runs], 0) for w in METRICS} for t in names}


def seed_items(evals: dict[tuple[str, int], dict], method: str, what: str, names: list[str]) -> np.ndarray:
    """Per-item values of one method averaged over its seeds (the keys (method, seed) of `evals`)."""
    return runs_of(evals, method, what, names).mean(0)


def loss_ends(losses) -> tuple[float, float] | tuple[None, None]:
    """(start, end) of a training-loss curve: the means of its first and last `LOSS_WINDOW` of steps."""
    x = np.asarray([v for v in (losses or []) if v is not None], dtype=float)
    if not len(x):
        return None, None
    k = max(1, int(len(x) * LOSS_WINDOW))
    return float(x[:k].mean()), float(x[-k:].mean())


def seed_frame(evals: dict[tuple[str, int], dict], ref: dict[str, dict] | None, names: list[str],
               histories: dict | None = None, floor: float = GAP_FLOOR) -> pd.DataFrame:
    """One row per (method, seed): exact match, gold log-lik, log-lik gap recovery (when `ref` has the
    base and teacher scores), cos(Δ̂, Δ) when the scores carry it, and whether the run diverged
    (`stats.divergence` on its training loss from `histories` {(method, seed): {"loss": [...]}} and
    its gap recovery against `floor`), with the reason. Long form, for per-seed points."""
    rows = []
    for (m, seed), s in evals.items():
        ll = pooled(s, "loglik", names)
        row = dict(method=m, seed=seed, exact_match=pooled(s, "correct", names).mean(), gold_loglik=ll.mean())
        tie = False                                  # base and teacher tie: gap recovery is undefined, no evidence either way
        if ref is not None:
            b, t = pooled(ref["base"], "loglik", names).mean(), pooled(ref["teacher"], "loglik", names).mean()
            tie = t == b
            row["seed_gap_loglik"] = (ll.mean() - b) / (t - b) if not tie else math.nan
        if all("delta_cos" in s[t] for t in names):
            row["delta_cos"] = task_delta_cos(s, names).mean()
        start, end = loss_ends((histories or {}).get((m, seed), {}).get("loss"))
        flag = stats.divergence(start, end, None if tie else row.get("seed_gap_loglik"), floor)
        rows.append(row | dict(loss_start=start, loss_end=end, diverged=flag.flagged, diverged_reason=flag.reason))
    return pd.DataFrame(rows)


def slug(name: str) -> str:
    """A method's name as a metric-key fragment ("delta-only, long" -> "delta_only_long")."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def run_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Per run of a `seed_frame`: its gap recovery and training loss at the start and end (what a
    sentence naming a diverged run cites), keyed `run_<method>_seed<seed>_<measure>`."""
    out = {}
    for r in frame.to_dict("records"):
        for k in ("seed_gap_loglik", "loss_start", "loss_end"):
            if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k])):
                out[f"run_{slug(r['method'])}_seed{r['seed']}_{k.removeprefix('seed_')}"] = r[k]
    return out


def without_diverged(evals: dict, frame: pd.DataFrame) -> dict:
    """`evals` less the runs `frame` (from `seed_frame`) flags as diverged; a method whose every run
    diverged keeps them all (so that it still has a row, flagged)."""
    flagged = {(m, s) for m, s, d in frame[["method", "seed", "diverged"]].itertuples(index=False) if d}
    keep = {k: v for k, v in evals.items() if k not in flagged}
    lost = set(methods_of(evals)) - set(methods_of(keep))
    return {k: v for k, v in evals.items() if k in keep or k[0] in lost}


def _spread(values: pd.Series) -> float:
    """The std over seeds (n − 1), NaN (shown as n/a) for a single run."""
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def objective_table(evals: dict[tuple[str, int], dict], ref: dict[str, dict], names: list[str],
                    histories: dict | None = None, floor: float = GAP_FLOOR) -> pd.DataFrame:
    """Per method over its seeds: the seed count, per-seed mean and std of each measure, the per-seed
    log-lik gap recoveries (their mean is `gap_loglik`), how many seeds diverged, and the gap
    recoveries (on the mean over seeds and items) with their hierarchical 95% CIs, and the log-lik
    one's item-only CI; the cosine with its CI over seeds and tasks. Every run counts, diverged or
    not (see `without_diverged`)."""
    frame = seed_frame(evals, ref, names, histories, floor)
    sizes = task_sizes(ref["base"], names)
    refs = {w: (pooled(ref["base"], w, names), pooled(ref["teacher"], w, names)) for w in METRICS}
    rows = {}
    for m, g in frame.groupby("method", sort=False):
        measures = [c for c in ("exact_match", "gold_loglik", "seed_gap_loglik", "delta_cos") if c in g]
        row = {"n_seeds": len(g)} | {f"{c}_{s}": (g[c].mean() if s == "mean" else _spread(g[c]))
                                      for c in measures for s in ("mean", "std") if f"{c}_{s}" != "seed_gap_loglik_mean"}
        row["per_seed_gap_loglik"] = " / ".join(f"{v:.3f}" for v in g["seed_gap_loglik"])
        row["n_diverged"] = int(g["diverged"].sum())
        for what, key in METRICS.items():
            runs = {"g": runs_of(evals, m, what, names), "b": refs[what][0], "t": refs[what][1]}
            gr = stats.hierarchical_bootstrap(runs, sizes, stats.ratio_of_gaps("g", "b", "t"))
            it = stats.hierarchical_bootstrap(runs, sizes, stats.ratio_of_gaps("g", "b", "t"), levels=("items",)) \
                if key == "loglik" else None
            row.update({f"gap_{key}": gr.mean, f"gap_{key}_lo": gr.lo, f"gap_{key}_hi": gr.hi})
            if key == "loglik":        # the item-only interval beside the headline one, for the headline measure
                row.update({f"gap_{key}_item_lo": it.lo, f"gap_{key}_item_hi": it.hi})
        if "delta_cos" in measures:
            cos = np.stack([task_delta_cos(s, names) for (k, _), s in evals.items() if k == m])
            iv = stats.hierarchical_bootstrap({"c": cos}, (1,) * len(names), lambda x: x["c"])
            row.update(delta_cos_lo=iv.lo, delta_cos_hi=iv.hi)
        rows[m] = row
    return pd.DataFrame(rows).T


def method_table(scores: dict[str, dict], base: str, teacher: str, names: list[str]) -> pd.DataFrame:
    """`objective_table` of single runs ({method: scores}): exact match, gold log-lik and the gap
    recoveries (method − base) / (teacher − base) with their CIs over tasks (and items only)."""
    table = objective_table({(m, 0): s for m, s in scores.items()}, {"base": scores[base], "teacher": scores[teacher]}, names)
    return table.rename(columns={"exact_match_mean": "exact_match", "gold_loglik_mean": "gold_loglik"})


def paired_test(evals: dict[tuple[str, int], dict], names: list[str], a: str, b: str) -> dict[str, float]:
    """A − B: log-lik and exact match over the shared items, with hierarchical 95% CIs (each method's
    seeds resampled on their own, tasks once for both) and item-only CIs; when the scores carry it,
    cos(Δ̂, Δ) per task with its CI and the exact sign-flip test over tasks (seed-averaged)."""
    first = next(s for (m, _), s in evals.items() if m == a)
    sizes, row = task_sizes(first, names), {}
    for what, key in METRICS.items():
        x, y = runs_of(evals, a, what, names), runs_of(evals, b, what, names)
        d = stats.hier_difference(x, y, sizes)
        it = stats.hier_difference(x, y, sizes, levels=("items",))
        row.update({f"diff_{key}": d.mean, f"diff_{key}_lo": d.lo, f"diff_{key}_hi": d.hi,
                    f"diff_{key}_item_lo": it.lo, f"diff_{key}_item_hi": it.hi})
    if all("delta_cos" in first[t] for t in names):
        ca, cb = (np.stack([task_delta_cos(s, names) for (k, _), s in evals.items() if k == m]) for m in (a, b))
        d = stats.hier_difference(ca, cb, (1,) * len(names))
        row.update(diff_cos=d.mean, diff_cos_lo=d.lo, diff_cos_hi=d.hi,
                   p_signflip=paired_permutation_test(ca.mean(0), cb.mean(0)))
    return row


def paired_tests(evals: dict[tuple[str, int], dict], names: list[str], pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """`paired_test` for each pair whose two methods both have runs, indexed "A − B"."""
    methods = set(methods_of(evals))
    return pd.DataFrame({f"{a} − {b}": paired_test(evals, names, a, b) for a, b in pairs
                         if a in methods and b in methods}).T


def diff_metrics(d, key: str) -> dict[str, float]:
    """A paired test's log-lik and exact-match differences with their hierarchical CIs as metrics:
    `key` names each with "{k}" standing for "loglik" or "acc" (e.g. "{k}_diff_vs_baseline"), then
    "", "_ci_low" and "_ci_high" are appended."""
    return {key.format(k=k) + s: d[f"diff_{k}{c}"] for k in ("loglik", "acc")
            for s, c in (("", ""), ("_ci_low", "_lo"), ("_ci_high", "_hi"))}


def paired_metrics(tests: pd.DataFrame) -> dict[str, float]:
    """Every number of a paired-tests table (`paired_tests`), keyed `paired_<A>_vs_<B>_<column>`:
    what a claim citing one of them needs in metrics.json."""
    return {f"paired_{slug(a)}_vs_{slug(b)}_{k}": float(v) for name, row in tests.iterrows()
            for a, b in [name.split(" − ")] for k, v in row.items() if pd.notna(v)}


def verdict_of(d, metrics=("loglik", "acc")) -> str:
    """`stats.comparison_verdict` on a paired test's hierarchical CIs (`paired_test`)."""
    return stats.comparison_verdict({_NAMES[k]: (d[f"diff_{k}_lo"], d[f"diff_{k}_hi"]) for k in metrics})


def evidence(d) -> str:
    """A paired test in words: log-lik and exact match with their hierarchical CIs."""
    return (f"log-lik {d['diff_loglik']:+.3f} [{d['diff_loglik_lo']:+.3f}, {d['diff_loglik_hi']:+.3f}] per token, "
            f"exact match {d['diff_acc'] * 100:+.1f} points [{d['diff_acc_lo'] * 100:+.1f}, {d['diff_acc_hi'] * 100:+.1f}] "
            f"(95% CIs over seeds and tasks)")

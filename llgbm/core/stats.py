"""The statistics every comparison in the lab uses, in one place: the hierarchical bootstrap (seeds,
then tasks, then items within tasks) behind every headline interval, item-only bootstrap intervals
(kept beside it, labelled as such), paired differences, gap recovery, the exact sign-flip test,
divergence flags, cosine measures and the verdict rules."""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from llgbm.core.utils import check_known

LEVELS = ("seeds", "tasks", "items")
HEADLINE = ("seeds", "tasks")      # the levels of every headline interval (see `hierarchical_bootstrap`)


class Interval(NamedTuple):
    """A point estimate with its 95% interval; `level` names what was resampled ("seeds·tasks·items"
    for the hierarchical bootstrap, "items" for the item-only one)."""
    mean: float
    lo: float
    hi: float
    level: str = "seeds·tasks"


@functools.lru_cache(maxsize=16)
def item_weights(sizes: tuple[int, ...], n_boot: int, seed: int, tasks: bool = True, items: bool = True) -> np.ndarray:
    """(n_boot, n_items) resampling counts of items laid out task after task (`sizes` items each),
    from a generator seeded with `seed` (cached and read-only: every table of one notebook resamples
    the same tasks and items, so its methods stay paired). `tasks`: each replicate draws tasks with
    replacement; `items`: for every draw of a task, its items are drawn with replacement (else the
    drawn task brings its items as a block). With `items` alone, items are drawn within their own
    task only (a stratified item bootstrap: the task mix stays fixed)."""
    sizes = tuple(int(n) for n in sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"every task needs at least one item, got sizes {list(sizes)}")
    if not (tasks or items):
        raise ValueError("resample tasks, items or both")
    rng = np.random.default_rng(seed)
    draws = (rng.multinomial(len(sizes), [1 / len(sizes)] * len(sizes), size=n_boot) if tasks
             else np.ones((n_boot, len(sizes)), dtype=int))
    if items:   # the items of c independent draws of a task: one multinomial of c·n draws over its n items
        W = np.concatenate([rng.multinomial(draws[:, t] * n, [1 / n] * n) for t, n in enumerate(sizes)], axis=1)
    else:
        W = np.repeat(draws, sizes, axis=1)
    W = W / W.sum(1, keepdims=True)
    W.flags.writeable = False
    return W


def _as_runs(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"a method's values must be (seeds, items) or (items,), got shape {np.shape(values)}")
    return a


def hierarchical_bootstrap(runs: dict[str, np.ndarray], sizes, fn: Callable[[dict], np.ndarray], n_boot: int = 2000,
                           seed: int = 0, levels=HEADLINE, alpha: float = 0.05) -> Interval:
    """A statistic of several methods' means, with a percentile interval from resampling `levels`.

    `runs` maps a method to its per-item values, (seeds, items) or (items,) for a single run, the
    items laid out task after task as in `sizes`. `fn` maps {method: mean} to the statistic
    (vectorised: each mean is an array over replicates). In each replicate every method's seeds are
    resampled on their own (seeds of different methods are not paired), and tasks, then items within
    tasks, once for all methods (the items are shared, so differences are paired). With levels
    ("items",) the seeds are averaged first and only items within tasks are resampled: the item-only
    interval, which leaves out seed and task noise.

    The headline levels are seeds and tasks, with each drawn task bringing its items as a block: a
    task's mean already carries its item noise, so resampling items inside resampled tasks counts
    that noise twice (the interval comes out up to √2 too wide under pure item noise; Field & Welsh
    2007, Ren et al. 2010 resample the top level only). levels=LEVELS does it anyway, for comparison;
    tests/test_stats.py checks each width against synthetic data whose right width is known."""
    check_known(levels, LEVELS, "bootstrap level(s)")
    if not {"tasks", "items"} & set(levels):
        raise ValueError(f"levels must include 'tasks' or 'items', got {tuple(levels)}")
    runs = {m: _as_runs(v) for m, v in runs.items()}
    n_items = sum(int(n) for n in sizes)
    bad = {m: a.shape for m, a in runs.items() if a.shape[1] != n_items}
    if bad:
        raise ValueError(f"every method needs {n_items} items (task sizes {list(sizes)}), got {bad}")
    point = float(fn({m: a.mean() for m, a in runs.items()}))
    W = item_weights(tuple(int(n) for n in sizes), n_boot, seed, tasks="tasks" in levels, items="items" in levels)
    rng = np.random.default_rng([seed, 1])      # the seeds' draws, apart from the items' (cached) ones
    means = {}
    for m, a in runs.items():
        per_seed = W @ a.T                                    # (n_boot, seeds): each seed's replicate mean
        if "seeds" in levels and a.shape[0] > 1:
            pick = rng.multinomial(a.shape[0], [1 / a.shape[0]] * a.shape[0], size=n_boot) / a.shape[0]
            means[m] = (per_seed * pick).sum(1)
        else:
            means[m] = per_seed.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.asarray(fn(means), dtype=float)
    boots = boots[np.isfinite(boots)]
    level = "·".join(x for x in LEVELS if x in levels)
    if not len(boots):
        return Interval(point, math.nan, math.nan, level)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(lo), float(hi), level)


def ratio_of_gaps(a: str, base: str, ref: str) -> Callable[[dict], np.ndarray]:
    """(a − base) / (ref − base) of the methods' means: gap recovery when `ref` is the teacher."""
    return lambda m: (m[a] - m[base]) / (m[ref] - m[base])


def difference(a: str, b: str) -> Callable[[dict], np.ndarray]:
    return lambda m: m[a] - m[b]


def relative(a: str, b: str) -> Callable[[dict], np.ndarray]:
    """(a − b) / b: a relative gain (DnD's "+30%")."""
    return lambda m: (m[a] - m[b]) / m[b]


def hier_gap_recovery(generated, base, teacher, sizes, levels=HEADLINE, n_boot: int = 2000, seed: int = 0) -> Interval:
    """(generated − base) / (teacher − base) with a hierarchical interval; `generated` (seeds, items)."""
    return hierarchical_bootstrap({"g": generated, "b": base, "t": teacher}, sizes, ratio_of_gaps("g", "b", "t"),
                                  n_boot=n_boot, seed=seed, levels=levels)


def hier_difference(a, b, sizes, levels=HEADLINE, n_boot: int = 2000, seed: int = 0) -> Interval:
    """mean(a) − mean(b) over shared items, each (seeds, items), with a hierarchical interval."""
    return hierarchical_bootstrap({"a": a, "b": b}, sizes, difference("a", "b"), n_boot=n_boot, seed=seed, levels=levels)


PLATEAU = 0.01     # a loss has plateaued when its last 10% of steps is < 1% below the 10% before


def plateau_drop(losses, window: float = 0.1) -> float:
    """Relative drop of a training loss at its end: (mean of the second-to-last `window` of steps −
    mean of the last) / |the former|. Below `PLATEAU`, the run has converged as far as more steps of
    the same schedule would show; NaN when the curve has fewer than two windows' worth of steps."""
    x = np.asarray([v for v in losses if v is not None], dtype=float)
    k = max(1, int(len(x) * window))
    if len(x) < 2 * k or len(x) < 2:
        return math.nan
    prev, last = x[-2 * k:-k].mean(), x[-k:].mean()
    return float((prev - last) / abs(prev)) if prev else math.nan


class Divergence(NamedTuple):
    flagged: bool
    reason: str     # "" when not flagged


def divergence(loss_start: float | None, loss_end: float | None, gap_recovery: float | None, floor: float) -> Divergence:
    """A run is flagged as diverged when its training loss is non-finite or ends above where it
    started, or its held-out gap recovery is below `floor` (worse than the base model by more than
    `-floor` times the whole base→teacher gap). Any of the three may be None when not measured."""
    for name, v in (("start", loss_start), ("end", loss_end)):
        if v is not None and not math.isfinite(v):
            return Divergence(True, f"training loss at the {name} is {v}")
    if loss_start is not None and loss_end is not None and loss_end > loss_start:
        return Divergence(True, f"training loss ends above its start ({loss_end:.4g} > {loss_start:.4g})")
    if gap_recovery is not None and (not math.isfinite(gap_recovery) or gap_recovery < floor):
        return Divergence(True, f"held-out gap recovery {gap_recovery:.3g} < floor {floor:g}")
    return Divergence(False, "")


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, stat=np.mean):
    """Percentile bootstrap interval of `stat` over items."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.array([stat(values[i]) for i in idx])
    return float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def paired_diff_ci(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a − b) over paired items, with a percentile-bootstrap 95% interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must align, got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return float(d.mean()), lo, hi


def gap_recovery(base, generated, teacher, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(generated − base) / (teacher − base) on per-item scores pooled over tasks, with a paired
    percentile-bootstrap 95% interval (items resampled jointly across the three arrays)."""
    base, generated, teacher = (np.asarray(a, dtype=float) for a in (base, generated, teacher))
    if not base.shape == generated.shape == teacher.shape:
        raise ValueError(f"per-item arrays must align, got {base.shape}, {generated.shape}, {teacher.shape}")

    def ratio(idx):
        gap = teacher[idx].mean() - base[idx].mean()
        return (generated[idx].mean() - base[idx].mean()) / gap if gap != 0 else np.nan

    rng = np.random.default_rng(seed)
    boots = np.array([ratio(rng.integers(0, len(base), len(base))) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    point = ratio(np.arange(len(base)))
    if not len(boots):
        return float(point), float("nan"), float("nan")
    return float(point), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def paired_permutation_test(a, b, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of mean(a − b) = 0 by sign flips of the paired differences (exact when
    2^n ≤ n_perm). The pairs must be independent units (here: held-out tasks)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        raise ValueError("no pairs to test")
    observed = abs(d.mean())
    if 2 ** n <= n_perm:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(n_perm, n))
    null = np.abs((signs * d).mean(1))
    return float((null >= observed - 1e-12).mean())


def comparison_verdict(effects: dict[str, tuple[float, float]]) -> str:
    """Verdict on "A beats B" from a 95% interval of A − B per metric (each oriented so that higher is
    better): "supported" when some interval lies above 0 and none below, "refuted" when some lies below
    and none above, "mixed" (naming which) when they disagree, "inconclusive" when all contain 0."""
    if not effects:
        raise ValueError("no metrics to compare: pass {metric name: (low, high)}")
    better = [k for k, (lo, hi) in effects.items() if lo > 0]
    worse = [k for k, (lo, hi) in effects.items() if hi < 0]
    if better and worse:
        return f"mixed: better on {', '.join(better)}; worse on {', '.join(worse)}"
    if better:
        return "supported"
    if worse:
        return "refuted"
    return "inconclusive (every interval includes 0)"


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity (broadcasting a single row against many)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def cosine_silhouette(X, labels) -> float:
    """Mean silhouette under cosine distance (scikit-learn's), as Delta Activations reports it."""
    from sklearn.metrics import silhouette_score
    return float(silhouette_score(np.asarray(X), np.asarray(labels), metric="cosine"))


def silhouette_null(X, labels, n_perm: int = 200, q: float = 0.95, seed: int = 0) -> float:
    """The `q` quantile of the cosine silhouette with the labels shuffled (`n_perm` permutations): the
    reference a silhouette must exceed to show clusters at all, instead of a round number."""
    X, labels = np.asarray(X), np.asarray(labels)
    rng = np.random.default_rng(seed)
    null = [cosine_silhouette(X, rng.permutation(labels)) for _ in range(n_perm)]
    return float(np.quantile(null, q))


def pooled(scores: dict[str, dict], what: str, names: list[str]) -> np.ndarray:
    """Per-item values of one metric, concatenated over tasks in `names` order."""
    missing = [t for t in names if t not in scores]
    if missing:
        raise KeyError(f"no scores for task(s) {missing}; scored: {sorted(scores)}")
    return np.concatenate([np.asarray(scores[t][what], dtype=float) for t in names])


def task_delta_cos(scores: dict[str, dict], names: list[str]) -> np.ndarray:
    """Per task: the mean cosine of the generated Δ with the task's teacher checkpoints' Δ."""
    return np.array([float(np.mean(scores[t]["delta_cos"])) for t in names])

"""The statistics every comparison in the lab uses, in one place: bootstrap intervals, paired
differences, gap recovery, the exact sign-flip test, cosine measures and the verdict rules."""
from __future__ import annotations

import numpy as np


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


def pooled(scores: dict[str, dict], what: str, names: list[str]) -> np.ndarray:
    """Per-item values of one metric, concatenated over tasks in `names` order."""
    missing = [t for t in names if t not in scores]
    if missing:
        raise KeyError(f"no scores for task(s) {missing}; scored: {sorted(scores)}")
    return np.concatenate([np.asarray(scores[t][what], dtype=float) for t in names])


def task_delta_cos(scores: dict[str, dict], names: list[str]) -> np.ndarray:
    """Per task: the mean cosine of the generated Δ with the task's teacher checkpoints' Δ."""
    return np.array([float(np.mean(scores[t]["delta_cos"])) for t in names])

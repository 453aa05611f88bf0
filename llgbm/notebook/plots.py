"""The lab's figures: one seaborn theme, set once on import, and the few figure kinds the notebooks
share (per-seed points over a mean with its 95% CI, heatmaps of matrices,
loss curves). Every axis carries its unit; every title states the question the figure answers."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = "colorblind"

def set_theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.9,
                  rc={"figure.dpi": 100, "axes.titlesize": 10, "axes.titleweight": "bold"})


set_theme()


def seed_points(frame: pd.DataFrame, metrics: dict[str, str], title: str, x: str = "method",
                refs: dict[str, dict[str, float]] | None = None):
    """One panel per metric: each seed as a dot, the mean over seeds with its 95% CI (bootstrap over
    seeds), and runs flagged in the frame's `diverged` column ringed in red. `metrics` maps a column
    of `frame` to its axis label (with unit); `refs` adds dashed reference lines per metric
    ({column: {label: value}})."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4.0), squeeze=False, layout="constrained")
    flagged = frame["diverged"].astype(bool) if "diverged" in frame else pd.Series(False, index=frame.index)
    for ax, (col, label) in zip(axes[0], metrics.items()):
        sns.pointplot(frame, x=x, y=col, errorbar=("ci", 95), linestyle="none", capsize=0.2, color="0.2",
                      marker="D", markersize=6, ax=ax)
        sns.stripplot(frame, x=x, y=col, hue=x, palette=PALETTE, size=6, jitter=0.08, alpha=0.8, legend=False, ax=ax)
        if flagged.any():   # diverged runs: counted in the mean, ringed in red so no reader misses them
            pos = {c: i for i, c in enumerate(dict.fromkeys(frame[x]))}
            ax.scatter(frame.loc[flagged, x].map(pos), frame.loc[flagged, col], s=140, facecolors="none",
                       edgecolors="red", linewidths=1.5, zorder=4, label=f"diverged run ({int(flagged.sum())})")
        for i, (name, value) in enumerate((refs or {}).get(col, {}).items()):
            ax.axhline(value, ls="--", lw=1, color=sns.color_palette(PALETTE)[-(i + 1)], label=name)
        if (refs or {}).get(col) or flagged.any():
            ax.legend(fontsize=7)
        ax.set(xlabel="", ylabel=label)
        _slant(ax)
    fig.suptitle(title)
    return fig


def _slant(ax) -> None:
    """Long category names: slanted, anchored at their tick so they do not overlap."""
    ax.tick_params(axis="x", labelrotation=25)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")


def heatmap(matrix: pd.DataFrame, title: str, cbar_label: str, fmt: str = ".2f", center: float | None = None,
            cmap: str = "viridis", figsize: tuple[float, float] | None = None):
    """A matrix as an annotated heatmap (rows and columns as labelled)."""
    fig, ax = plt.subplots(figsize=figsize or (2.5 + 1.1 * matrix.shape[1], 1.2 + 0.32 * matrix.shape[0]), layout="constrained")
    sns.heatmap(matrix.astype(float), annot=True, fmt=fmt, cmap=cmap, center=center, ax=ax,
                cbar_kws={"label": cbar_label}, annot_kws={"fontsize": 7})
    ax.set_title(title)
    _slant(ax)
    return fig


def heatmaps(matrices: dict[str, pd.DataFrame], title: str, cbar_label: str, fmt: str = ".2f", vmin: float = 0.0,
             vmax: float = 1.0, cols: int = 3):
    """Several matrices of one kind side by side on one colour scale (e.g. an accuracy matrix per method)."""
    rows = -(-len(matrices) // cols)
    first = next(iter(matrices.values()))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (1.6 + 0.75 * first.shape[1]), rows * (1.3 + 0.45 * first.shape[0])),
                             squeeze=False, layout="constrained")
    for ax, (name, m) in zip(axes.flat, matrices.items()):
        sns.heatmap(m.astype(float), annot=True, fmt=fmt, cmap="viridis", vmin=vmin, vmax=vmax, ax=ax, cbar=False,
                    annot_kws={"fontsize": 7})
        ax.set_title(name, fontsize=9)
        _slant(ax)
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    fig.colorbar(axes.flat[0].collections[0], ax=axes, label=cbar_label, shrink=0.6)
    fig.suptitle(title)
    return fig


def curves(series: dict[str, list[float]], ylabel: str, title: str, xlabel: str = "training step",
           window: int = 10, logy: bool = True, marks: dict[str, float] | None = None, ax=None):
    """Loss curves: the raw values faintly, their rolling mean (`window`) strongly; `marks` draws
    labelled vertical lines (e.g. where a continued run picked up)."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for i, (name, values) in enumerate(series.items()):
        s = pd.Series(values, dtype=float)
        color = sns.color_palette(PALETTE)[i % 10]
        ax.plot(s, color=color, alpha=0.25, lw=0.8)
        ax.plot(s.rolling(window, min_periods=1).mean(), color=color, label=f"{name} (rolling mean of {window})")
    for name, x in (marks or {}).items():
        ax.axvline(x, color="k", ls="--", lw=1, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if logy else "linear")
    ax.legend(fontsize=7)
    return ax.figure if own else ax


def bars(values: pd.Series | pd.DataFrame, xlabel: str, title: str, log: bool = False):
    """Horizontal bars of named quantities (one colour per column of a frame)."""
    frame = values.to_frame() if isinstance(values, pd.Series) else values
    long = frame.reset_index(names="name").melt(id_vars="name", var_name="series", value_name="value")
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.3 * len(long)), layout="constrained")
    sns.barplot(long, y="name", x="value", hue="series" if frame.shape[1] > 1 else None, ax=ax, orient="h")
    ax.set(xlabel=xlabel, ylabel="", title=title, xscale="log" if log else "linear")
    return fig


def lines(frame: pd.DataFrame, x: str, y: str, hue: str, title: str, palette: str = "viridis"):
    """One line per `hue` level (e.g. a curve per layer), axes labelled by the column names."""
    fig, ax = plt.subplots(figsize=(6.8, 3.8), layout="constrained")
    sns.lineplot(frame, x=x, y=y, hue=hue, palette=palette, ax=ax, legend="brief")
    ax.set(title=title)
    ax.legend(fontsize=6, ncols=2, title=hue)
    return fig

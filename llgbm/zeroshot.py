"""Phase 6: which supervision makes generated adapters work on unseen tasks?

The experiment of notebook 06 on the zoo, held-out split and statistics of 00–05:
- generator objectives (weight, delta, kd, sft, delta+sft; llgbm.training) and the generator
  conditioned on labeled examples (`labeled`), each over 3 seeds, with learning curves;
- the baselines a user would reach for first (llgbm.baselines: few-shot prompting and one multi-task
  LoRA), beside 00's base model, mean of training LoRAs, nearest task's LoRA and own teacher;
- gap recovery against the number of training tasks.

Every score is cached (generator runs in their folders, baselines as JSON under LLGBM_HOME), so a
warm rerun recomputes tables and figures only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import compare, stats
from .baselines import demonstrations
from .tasks import get_task
from .utils import check_profile, preset_config

METHODS = {"weight": "weight-only (DnD)", "delta": "delta-only", "kd": "output KD", "sft": "SFT (Text-to-LoRA)",
           "delta+sft": "delta + SFT", "labeled": "labeled-example generator", "multitask_lora": "multi-task LoRA",
           "multitask_lora_zoo_lr": "multi-task LoRA, zoo's lr", "icl": "few-shot prompting", "base": "base", "mean_lora": "mean of training LoRAs",
           "nearest_lora": "nearest task's LoRA", "teacher": "own teacher"}
GENERATOR_OBJECTIVES = ("weight", "delta", "kd", "sft", "delta+sft")


@dataclass
class ZeroShotConfig:
    objectives: tuple[str, ...] = GENERATOR_OBJECTIVES
    weight_steps: int = 1000               # weight-only needs no language-model forward: it trains longest
    lm_steps: int = 80                     # objectives that run the LM (as 04/05)
    weight_curve: tuple[int, ...] = (80, 250, 500, 1000)
    lm_curve: tuple[int, ...] = (20, 40, 80)
    curve_items: int = 16                  # items per held-out task scored at intermediate steps (log-lik only)
    shots: int = 4                         # demonstrations: in the prompt (ICL) or conditioning the labeled generator
    scaling_sizes: tuple[int, ...] = (4, 8)  # training-task counts besides "all" (family-balanced subsets)
    scaling_seeds: tuple[int, ...] = (0,)
    timing_items: int = 32                 # items timed per held-out task for the inference-cost table

    @classmethod
    def preset(cls, profile: str, **overrides) -> "ZeroShotConfig":
        base = {"smoke": dict(weight_steps=6, lm_steps=4, weight_curve=(2, 6), lm_curve=(2, 4), curve_items=2,
                              scaling_sizes=(1,), timing_items=2),
                "quick": dict(),
                "full": dict(weight_steps=3000, lm_steps=400, weight_curve=(80, 250, 1000, 3000),
                             lm_curve=(50, 100, 200, 400), curve_items=32, scaling_sizes=(2, 4, 8))}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def steps(self, objective: str) -> int:
        return self.weight_steps if objective == "weight" else self.lm_steps

    def curve(self, objective: str) -> tuple[int, ...]:
        points = self.weight_curve if objective == "weight" else self.lm_curve
        if max(points) != self.steps(objective):
            raise ValueError(f"the {objective} curve {points} must end at its run's {self.steps(objective)} steps")
        return points


# ------------------------------------------------------------------ runs, curves, scaling

def labeled_condition(shots: int):
    """At test time the labeled generator is conditioned on the task's few-shot demonstrations."""
    from .dataset import condition_texts
    return lambda task: condition_texts(task, labeled=True, pairs=demonstrations(task, shots))


def train_kwargs(zcfg: ZeroShotConfig, method: str) -> dict:
    return dict(steps=zcfg.steps(method), keep_steps=zcfg.curve(method))


def learning_curve(lab, zcfg: ZeroShotConfig, ref: dict, method: str, objective: str, seed: int,
                   progress: bool = False, **train_kw) -> list[dict]:
    """Log-lik gap recovery on the first `curve_items` items of each held-out task at every curve step
    (the run is trained step point by step point; each point's scores are cached in its folder)."""
    rows, n, held = [], zcfg.curve_items, lab.heldout
    cond = train_kw.pop("condition", None)
    for step in zcfg.curve(objective):
        res = lab.train(objective, seed, progress=progress, steps=step, keep_steps=zcfg.curve(objective), **train_kw)
        ev = lab.evaluate(res, progress=False, condition=cond, loglik_only=True, n_items=n)
        sub = {m: {t: {"loglik": np.asarray(ref[m][t]["loglik"])[:n]} for t in held} for m in ("base", "teacher")}
        gr = stats.gap_recovery(stats.pooled(sub["base"], "loglik", held), stats.pooled(ev, "loglik", held),
                                stats.pooled(sub["teacher"], "loglik", held), n_boot=1)[0]
        rows.append(dict(method=METHODS.get(method, method), seed=seed, step=step, **{"gap recovery (log-lik)": gr},
                         loss=float(np.nanmean(res.history["loss"][-10:]))))
    return rows


def run_method(lab, zcfg: ZeroShotConfig, ref: dict, method: str, seed: int, objective: str | None = None,
               labeled: bool = False, progress: bool = True):
    """Train one generator method to its steps (through its learning-curve points) and score it on the
    held-out items: (TrainResult, held-out scores, curve rows). `labeled` conditions on labeled
    examples (the few-shot demonstrations at test time) and trains with `objective`."""
    objective = objective or method
    kw = dict(labeled=True, shots=zcfg.shots) if labeled else {}
    cond = labeled_condition(zcfg.shots) if labeled else None
    rows = learning_curve(lab, zcfg, ref, method, objective, seed, condition=cond, **kw)
    res = lab.train(objective, seed, progress=progress, **train_kwargs(zcfg, objective), **kw)
    return res, lab.evaluate(res, progress=False, condition=cond), rows


def scaling(lab, zcfg: ZeroShotConfig, ref: dict, objective: str, full_runs: dict[int, dict],
            progress: bool = True) -> pd.DataFrame:
    """Log-lik gap recovery (95% CI over items) of `objective` trained on family-balanced subsets of
    the training tasks, per seed of `scaling_seeds`; `full_runs` ({seed: held-out scores}) is the run
    on all of them."""
    held, rows = lab.heldout, []
    subsets = balanced_subsets(lab.training_tasks, tuple(s for s in zcfg.scaling_sizes if s < len(lab.training_tasks)))
    for seed in zcfg.scaling_seeds:
        for n, names in [*subsets.items(), (len(lab.training_tasks), None)]:
            if names is None:
                ev = full_runs[seed]
            else:
                res = lab.train(objective, seed, progress=progress, tasks=names, steps=zcfg.steps(objective))
                ev = lab.evaluate(res, progress=False)
            gr = stats.gap_recovery(stats.pooled(ref["base"], "loglik", held), stats.pooled(ev, "loglik", held),
                                    stats.pooled(ref["teacher"], "loglik", held))
            rows.append({"training tasks": n, "seed": seed, "gap recovery (log-lik)": gr[0], "CI low": gr[1], "CI high": gr[2],
                         "exact match": stats.pooled(ev, "correct", held).mean()})
    return pd.DataFrame(rows)


def balanced_subsets(training_tasks: list[str], sizes: tuple[int, ...]) -> dict[int, list[str]]:
    """Nested subsets of the training tasks, each spreading over the families (round robin)."""
    by_family: dict[str, list[str]] = {}
    for t in training_tasks:
        by_family.setdefault(get_task(t).family, []).append(t)
    order, queues = [], [list(v) for v in by_family.values()]
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    bad = [s for s in sizes if not 1 <= s <= len(order)]
    if bad:
        raise ValueError(f"subset sizes {bad} outside 1..{len(order)} training tasks")
    return {s: order[:s] for s in sorted(sizes)}


# ------------------------------------------------------------------ tables and the ledger

def scores_only(evals: dict) -> dict:
    """Per-item exact match and log-lik only (drops the generated deltas), so that generators and
    baselines compare on the same footing."""
    return {k: {t: {w: d[w] for w in compare.METRICS} for t, d in s.items()} for k, s in evals.items()}


def methods_table(evals: dict[tuple[str, int], dict], ref: dict, held: list[str]) -> pd.DataFrame:
    """Every method (generators over their seeds, baselines once) with exact match, log-lik and both
    gap recoveries with 95% CIs, in METHODS order."""
    table = compare.objective_table(scores_only(evals), ref, held)
    return table.loc[[m for m in METHODS if m in table.index]]


def metrics(table: pd.DataFrame) -> dict[str, float]:
    """gap_recovery_<m> (+ _ci_low/_ci_high) and acc_<m> for every method of the table."""
    out = {}
    for m, row in table.iterrows():
        k = m.replace("+", "_")
        out.update({f"gap_recovery_{k}": row["gap rec. gold log-lik"], f"gap_recovery_{k}_ci_low": row["gold log-lik CI low"],
                    f"gap_recovery_{k}_ci_high": row["gold log-lik CI high"], f"acc_{k}": row["exact match mean"],
                    f"gap_recovery_acc_{k}": row["gap rec. exact match"]})
    return out


def best_generator(table: pd.DataFrame, candidates=GENERATOR_OBJECTIVES + ("labeled",)) -> str:
    """The generator method with the highest log-lik gap recovery."""
    return max((m for m in candidates if m in table.index), key=lambda m: table.loc[m, "gap rec. gold log-lik"])


def relative_gain(evals, a: str, b: str, held: list[str], n_boot: int = 2000) -> tuple[float, float, float]:
    """(acc_a − acc_b) / acc_b on seed-averaged items, with a paired item-bootstrap 95% CI (DnD's "+30%")."""
    x, y = compare.seed_items(evals, a, "correct", held), compare.seed_items(evals, b, "correct", held)
    rng = np.random.default_rng(0)
    ratio = lambda i: (x[i].mean() - y[i].mean()) / y[i].mean() if y[i].mean() > 0 else np.nan  # noqa: E731
    boots = np.array([ratio(rng.integers(0, len(x), len(x))) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    point = ratio(np.arange(len(x)))
    return (float(point), *(map(float, np.quantile(boots, [0.025, 0.975])) if len(boots) else (np.nan, np.nan)))


def paired(evals, held: list[str], a: str, b: str) -> pd.Series:
    """a − b on seed-averaged items: log-lik and exact match with paired-bootstrap 95% CIs."""
    return compare.paired_tests(scores_only(evals), held, [(a, b)]).iloc[0]


def verdict_of(d: pd.Series) -> str:
    return stats.comparison_verdict({"gold log-lik": (d["gold log-lik CI low"], d["gold log-lik CI high"]),
                                     "exact match": (d["exact match CI low"], d["exact match CI high"])})


def evidence(d: pd.Series) -> str:
    return (f"log-lik {d['Δ gold log-lik']:+.3f} [{d['gold log-lik CI low']:+.3f}, {d['gold log-lik CI high']:+.3f}] per token, "
            f"exact match {d['Δ exact match'] * 100:+.1f} points [{d['exact match CI low'] * 100:+.1f}, {d['exact match CI high'] * 100:+.1f}]")


def claims(evals, held: list[str], best: str) -> list[tuple[str, str, str, str]]:
    """The ledger rows of phase 6: (claim, source, verdict, evidence), each from paired tests. Needs
    the weight, sft, delta and kd runs and the mean-LoRA and multi-task LoRA baselines."""
    missing = {"weight", "sft", "delta", "kd", "mean_lora", "multitask_lora", best} - {m for m, _ in evals}
    if missing:
        raise ValueError(f"the phase-6 claims need runs of {sorted(missing)}; run every objective (objectives=None)")
    rows = []
    d = paired(evals, held, "sft", "weight")
    rows.append(("Behavioural (SFT) training of a generator generalises better than weight matching",
                 "Text-to-LoRA (ANCHORS)", verdict_of(d), "SFT − weight-only: " + evidence(d)))
    d = paired(evals, held, best, "multitask_lora")
    rows.append(("A generator beats one multi-task LoRA on unseen tasks", "Text-to-LoRA / DnD (ANCHORS)", verdict_of(d),
                 f"best generator ({METHODS[best]}) − multi-task LoRA: " + evidence(d)))
    for m in ("weight", best):
        g, lo, hi = relative_gain(evals, m, "mean_lora", held)
        v = "supported" if lo >= 0.3 else ("refuted" if hi < 0.3 else "inconclusive")
        rows.append((f"Generated adapters beat the training LoRAs' average by up to +30% ({METHODS[m]})", "DnD (seed 002, ANCHORS)",
                     v, f"relative exact-match gain {g:+.0%} [{lo:+.0%}, {hi:+.0%}] over the mean of training LoRAs"))
        if m == best:
            break
    for m in ("delta", "kd"):
        d = paired(evals, held, m, "weight")
        rows.append((f"Matching behaviour beats matching weights ({METHODS[m]} vs weight-only)", "LLGBM (seed 002)",
                     verdict_of(d), f"{METHODS[m]} − weight-only: " + evidence(d)))
    return rows


# ------------------------------------------------------------------ figures

def curve_figure(frame: pd.DataFrame, refs: dict[str, float]):
    """Gap recovery against training step, one line per method (band: 95% CI over seeds), with the
    baselines' gap recovery as dashed lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(7.2, 4.0), layout="constrained")
    sns.lineplot(frame, x="step", y="gap recovery (log-lik)", hue="method", marker="o", errorbar=("ci", 95), ax=ax)
    for i, (name, v) in enumerate(refs.items()):
        ax.axhline(v, ls="--", lw=1, color=sns.color_palette("dark")[i % 10], label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="generator training step (log scale)",
           ylabel="gap recovery of gold log-lik (fraction)",
           title="Learning curves on held-out tasks (first items of each task; band: 95% CI over seeds)")
    ax.legend(fontsize=7, ncols=2)
    return fig


def scaling_figure(frame: pd.DataFrame, objective: str, refs: dict[str, float]):
    """Gap recovery (with its item-bootstrap 95% CI) against the number of training tasks."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for seed, g in frame.groupby("seed"):
        g = g.sort_values("training tasks")
        ax.errorbar(g["training tasks"], g["gap recovery (log-lik)"],
                    yerr=[g["gap recovery (log-lik)"] - g["CI low"], g["CI high"] - g["gap recovery (log-lik)"]],
                    marker="o", capsize=4, label=f"{METHODS.get(objective, objective)}, seed {seed}")
    for i, (name, v) in enumerate(refs.items()):
        ax.axhline(v, ls="--", lw=1, color=sns.color_palette("dark")[i % 10], label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="training tasks (log scale)", ylabel="gap recovery of gold log-lik (fraction)",
           title="Does zero-shot transfer grow with the number of training tasks?")
    ax.set_xticks(sorted(frame["training tasks"].unique()), [str(v) for v in sorted(frame["training tasks"].unique())])
    ax.legend(fontsize=7)
    return fig

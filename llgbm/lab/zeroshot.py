"""Phase 6: which supervision makes generated adapters work on unseen tasks?

The experiment of notebook 06 on the zoo, held-out split and statistics of 00–05:
- generator objectives (weight, delta, kd, sft, delta+sft; llgbm.generator.train) and the generator
  conditioned on labeled examples (`labeled`), each over 3 seeds, with learning curves;
- the baselines a user would reach for first (llgbm.lab.baselines: few-shot prompting and one multi-task
  LoRA), beside 00's base model, mean of training LoRAs, nearest task's LoRA and own teacher;
- gap recovery against the number of training tasks.

Every score is cached (generator runs in their folders, baselines as JSON under LLGBM_HOME), so a
warm rerun recomputes tables and figures only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from peft import PeftModel

from llgbm.core import stats
from llgbm.core.tasks import get_task, register_task
from llgbm.core.utils import check_profile, preset_config
from llgbm.eval import compare
from llgbm.eval.scoring import evaluate_task
from llgbm.generator.dataset import condition_texts
from llgbm.lab.baselines import demonstrations
from llgbm.lab.generate import generate_for_task
from llgbm.lab.ledgers.zeroshot import GENERATOR_OBJECTIVES, METHODS, best_generator, methods_table


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
    return lambda task: condition_texts(task, labeled=True, pairs=demonstrations(task, shots))


def train_kwargs(zcfg: ZeroShotConfig, method: str) -> dict:
    return dict(steps=zcfg.steps(method), keep_steps=zcfg.curve(method))


def learning_curve(lab, zcfg: ZeroShotConfig, ref: dict, method: str, objective: str, seed: int,
                   progress: bool = False, **train_kw) -> list[dict]:
    """Log-lik gap recovery on the first `curve_items` items of each held-out task at every curve step
    (the run is trained step point by step point, then the points are scored together in shared
    forwards; each point's scores are cached in its folder)."""
    rows, n, held = [], zcfg.curve_items, lab.heldout
    cond = train_kw.pop("condition", None)
    steps = zcfg.curve(objective)
    results = [lab.train(objective, seed, progress=progress, steps=step, keep_steps=steps, **train_kw) for step in steps]
    evals = lab.evaluate_many(results, progress=False, condition=cond, loglik_only=True, n_items=n)
    for step, res, ev in zip(steps, results, evals):
        sub = {m: {t: {"loglik": np.asarray(ref[m][t]["loglik"])[:n]} for t in held} for m in ("base", "teacher")}
        gr = stats.gap_recovery(stats.pooled(sub["base"], "loglik", held), stats.pooled(ev, "loglik", held),
                                stats.pooled(sub["teacher"], "loglik", held), n_boot=1)[0]
        rows.append(dict(method=METHODS.get(method, method), seed=seed, step=step, **{"seed_gap_loglik": gr},
                         loss=float(np.nanmean(res.history["loss"][-10:]))))
    return rows


def run_method(lab, zcfg: ZeroShotConfig, ref: dict, method: str, seed: int, objective: str | None = None,
               labeled: bool = False, progress: bool = True):
    """Train one generator method to its steps (through its learning-curve points) and score it on the
    held-out items: (TrainResult, test scores, dev scores, curve rows). `labeled` conditions on labeled
    examples (the few-shot demonstrations at test time) and trains with `objective`."""
    objective = objective or method
    kw = dict(labeled=True, shots=zcfg.shots) if labeled else {}
    cond = labeled_condition(zcfg.shots) if labeled else None
    rows = learning_curve(lab, zcfg, ref, method, objective, seed, condition=cond, **kw)
    res = lab.train(objective, seed, progress=progress, **train_kwargs(zcfg, objective), **kw)
    test, dev = (lab.evaluate(res, progress=False, condition=cond, split=split) for split in ("test", "dev"))
    return res, test, dev, rows


def baseline_runs(ref: dict, scored: dict) -> tuple[dict, dict]:
    """The baselines as runs beside the generators: ({(method, seed): held-out scores}, {(method, seed):
    {"loss": training losses}}): the references (`reference_scores`) and few-shot prompting once, the
    multi-task LoRA at every seed, and at the zoo's lr once (`baselines.baseline_scores`)."""
    evals = ({(m, 0): ref[m] for m in ("base", "mean_lora", "nearest_lora", "teacher")}
             | {(m, 0): scored[m]["scores"] for m in ("icl", "multitask_lora_zoo_lr")}
             | {("multitask_lora", s): e["scores"] for s, e in scored["multitask_lora_runs"].items()})
    hist = {("multitask_lora", s): {"loss": e["losses"]} for s, e in scored["multitask_lora_runs"].items()}
    return evals, hist | {("multitask_lora_zoo_lr", 0): {"loss": scored["multitask_lora_zoo_lr"]["losses"]}}


def train_seconds(out: dict, scored: dict) -> dict[str, float]:
    """The recorded training time of every generator run of `run_all` and of every multi-task LoRA seed."""
    return dict(generator_train_seconds=sum(r.seconds for r in out["runs"].values()),
                multitask_lora_train_seconds=sum(e["train_seconds"] for e in scored["multitask_lora_runs"].values()))


def run_all(lab, zcfg: ZeroShotConfig, ref: dict, ref_dev: dict, baseline_evals: dict, seeds: list[int], progress: bool = True) -> dict:
    """Every objective of `zcfg` over `seeds`, then the labeled-example generator trained with the
    objective that did best prompt-only on the dev items: {"evals": {(method, seed): test scores}
    (the baselines' included), "dev": {(method, seed): dev scores} (generators only), "runs":
    {(method, seed): TrainResult}, "curves": learning-curve rows, "best_prompt_only"}."""
    evals, dev, runs, curves = dict(baseline_evals), {}, {}, []
    for m in zcfg.objectives:
        for s in seeds:
            runs[m, s], evals[m, s], dev[m, s], rows = run_method(lab, zcfg, ref, m, s, progress=progress)
            curves += rows
    best = best_generator(methods_table(dev, ref_dev, lab.heldout), zcfg.objectives)
    for s in seeds:
        runs["labeled", s], evals["labeled", s], dev["labeled", s], rows = run_method(
            lab, zcfg, ref, "labeled", s, objective=best, labeled=True, progress=progress)
        curves += rows
    return dict(evals=evals, dev=dev, runs=runs, curves=pd.DataFrame(curves), best_prompt_only=best)


def scaling(lab, zcfg: ZeroShotConfig, ref: dict, objective: str, full_runs: dict[int, dict],
            progress: bool = True) -> pd.DataFrame:
    """Log-lik gap recovery of `objective` trained on family-balanced subsets of the training tasks
    (seeds `scaling_seeds`) and on all of them (`full_runs`, {seed: held-out scores}: every seed of
    the main run), one row per size: the seeds, the mean, and its 95% CI over seeds and tasks."""
    held, rows = lab.heldout, []
    subsets = balanced_subsets(lab.training_tasks, tuple(s for s in zcfg.scaling_sizes if s < len(lab.training_tasks)))
    sizes = compare.task_sizes(ref["base"], held)
    for n, names in [*subsets.items(), (len(lab.training_tasks), None)]:
        if names is None:
            evs = list(full_runs.values())
        else:
            evs = [lab.evaluate(lab.train(objective, seed, progress=progress, tasks=names, steps=zcfg.steps(objective)), progress=False)
                   for seed in zcfg.scaling_seeds]
        runs = {"g": np.stack([stats.pooled(ev, "loglik", held) for ev in evs]), "b": stats.pooled(ref["base"], "loglik", held),
                "t": stats.pooled(ref["teacher"], "loglik", held)}
        gr = stats.hierarchical_bootstrap(runs, sizes, stats.ratio_of_gaps("g", "b", "t"))
        rows.append({"training tasks": n, "seeds": len(evs), "seed_gap_loglik": gr.mean, "CI low": gr.lo, "CI high": gr.hi,
                     "exact_match": float(np.mean([stats.pooled(ev, "correct", held).mean() for ev in evs]))})
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


def reference_lines(table: pd.DataFrame) -> dict[str, float]:
    """Log-lik gap recovery of few-shot prompting and the multi-task LoRA: the lines the figures draw."""
    return {METHODS[m]: table.loc[METHODS[m], "gap_loglik"] for m in ("icl", "multitask_lora")}


def user_task(lab, zcfg: ZeroShotConfig, method: str, folder) -> pd.DataFrame:
    """The README's three steps for a task no generator saw (add_4): register it, generate an adapter
    folder with `method`'s generator, load it with peft; exact match and gold log-lik, base vs adapter."""
    task = register_task("add_4", "Add 4 to the number.", [(str(n), str(n + 4)) for n in range(10, 610)], family="user",
                         heldout=True, overwrite=True)
    folder = generate_for_task(folder, task="add_4", objective=method, lab=lab, **train_kwargs(zcfg, method))
    peft_model = PeftModel.from_pretrained(lab.model, str(folder))
    adapted = evaluate_task(peft_model, lab.tokenizer, task, lab.tcfg.eval_items)
    peft_model.unload()
    base = evaluate_task(lab.model, lab.tokenizer, task, lab.tcfg.eval_items)
    return pd.DataFrame({"exact_match": [base.acc, adapted.acc], "gold_loglik": [base.loglik_mean, adapted.loglik_mean]},
                        index=["base", "generated adapter"])


# ------------------------------------------------------------------ figures

def curve_figure(frame: pd.DataFrame, refs: dict[str, float]):
    """Gap recovery against training step, one line per method (band: 95% CI over seeds), with the
    baselines' gap recovery as dashed lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(7.2, 4.0), layout="constrained")
    sns.lineplot(frame, x="step", y="seed_gap_loglik", hue="method", marker="o", errorbar=("ci", 95), ax=ax)
    for i, (name, v) in enumerate(refs.items()):
        ax.axhline(v, ls="--", lw=1, color=sns.color_palette("dark")[i % 10], label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="generator training step (log scale)",
           ylabel="gap recovery of gold log-lik (fraction)",
           title="Learning curves on held-out tasks (first items of each task; band: 95% CI over seeds)")
    ax.legend(fontsize=7, ncols=2)
    return fig


def scaling_figure(frame: pd.DataFrame, objective: str, refs: dict[str, float]):
    """Gap recovery (with its 95% CI over seeds and tasks) against the number of training tasks."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    g = frame.sort_values("training tasks")
    ax.errorbar(g["training tasks"], g["seed_gap_loglik"], yerr=[g["seed_gap_loglik"] - g["CI low"], g["CI high"] - g["seed_gap_loglik"]],
                marker="o", capsize=4, label=f"{METHODS.get(objective, objective)} (95% CI over seeds and tasks)")
    for x, y, n in zip(g["training tasks"], g["seed_gap_loglik"], g["seeds"]):
        ax.annotate(f"{n} seed{'s' * (n > 1)}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=7)
    for i, (name, v) in enumerate(refs.items()):
        ax.axhline(v, ls="--", lw=1, color=sns.color_palette("dark")[i % 10], label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="training tasks (log scale)", ylabel="gap recovery of gold log-lik (fraction)",
           title="Does zero-shot transfer grow with the number of training tasks?")
    ax.set_xticks(sorted(frame["training tasks"].unique()), [str(v) for v in sorted(frame["training tasks"].unique())])
    ax.legend(fontsize=7)
    return fig

"""Notebook 06's runs on the large suite, in the order the compute plan spends them (every step cached,
so a warm rerun only rebuilds tables and figures):

1. references (base, plateau teachers), k-shot prompting and the multi-task LoRA (every seed);
2. every objective at the largest scaling point with every seed; the best chosen on dev items;
3. the best generator with the k-shot prompt, and its controls (another task's prompts, random text),
   on test items only (dev items serve the choice in 2 alone);
4. the scaling curve: every objective at the smaller points (every seed at the smallest, `curve_seeds`
   between), log-lik only;
5. the cost table and the README's own-task example (add_4)."""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pandas as pd
from peft import PeftModel

from llgbm.core import cache, tasks
from llgbm.core.utils import atomic_write_json
from llgbm.eval.scoring import evaluate_task
from llgbm.generator import sample
from llgbm.lab.baselines import icl_prefix, prompt_tokens
from llgbm.lab.generate import choice_path
from llgbm.lab.ledgers import suite as ledger
from llgbm.lab.suitelab import SuiteLab
from llgbm.lab.suiteplan import base_accuracy, suite_table


class StageClock:
    """Wall seconds of each stage of the plan, as first measured (the cold run that did the work),
    kept under LLGBM_HOME/suite per plan: a warm rerun, which reads everything back, keeps them.

    A cold run that is interrupted (a session ends mid-stage) keeps the work it cached, and the clock
    keeps the time: every `tick` seconds it writes the seconds spent so far in the unfinished stage, and
    the run that finishes the stage adds them to its own. A stage's cold time is then the sum over the
    runs that worked on it; work lost at the interruption (a generator run not yet saved) is counted
    twice, so the figure errs high, never low. `interrupted` names the stages that were split so."""

    PARTIAL = "_interrupted"        # {stage: seconds of earlier, unfinished runs of it}

    def __init__(self, lab: SuiteLab, tick: float = 30.0):
        self.path = lab.root / f"stage-seconds-{lab.profile}-{lab.tag(lab.cfg, lab.plan)}.json"
        saved = cache.read(self.path) or {}
        self.partial: dict[str, float] = dict(saved.pop(self.PARTIAL, {}))
        self.interrupted: set[str] = set(saved.pop("_split", []))
        self.first: dict[str, float] = saved
        self.now: dict[str, float] = {}
        self.tick, self.profile = tick, lab.profile

    def _save(self, running: dict[str, float] | None = None) -> None:
        partial = {**self.partial, **(running or {})}
        cache.write(self.path, {**self.first, self.PARTIAL: partial, "_split": sorted(self.interrupted)})

    @contextlib.contextmanager
    def stage(self, name: str):
        t0, stop = time.perf_counter(), threading.Event()
        earlier = self.partial.get(name, 0.0)

        def beat():                 # the seconds so far, on disk, in case this process does not finish the stage
            while not stop.wait(self.tick):
                self._save({name: earlier + time.perf_counter() - t0})
        beating = threading.Thread(target=beat, daemon=True) if name not in self.first else None
        if beating:
            beating.start()
        try:
            yield
        except BaseException:      # an error or Ctrl-C: keep the seconds spent, as a session's end would
            if beating:
                stop.set()
                beating.join()
                self.partial[name] = earlier + time.perf_counter() - t0
                self._save()
            raise
        finally:
            stop.set()
            if beating:
                beating.join()
        self.now[name] = time.perf_counter() - t0
        if name not in self.first:
            if name in self.partial:
                self.interrupted.add(name)
            self.first[name] = self.partial.pop(name, 0.0) + self.now[name]
            self._save()


def groups(lab: SuiteLab) -> dict[str, list[str]]:
    return {"near": lab.near, "far": lab.far, "all": lab.heldout}


def headline(lab: SuiteLab, clock: StageClock) -> dict:
    """Steps 1–3: {"evals": {(method, seed): scores, test and dev items}, "results": {(objective, seed):
    TrainResult}, "records": {("multitask_lora", seed): run record}, "best": objective}."""
    cfg = lab.cfg
    with clock.stage("own teachers"):
        lab.teachers
    with clock.stage("base and teachers scored"):
        ref = lab.references()
    with clock.stage("k-shot prompting"):
        evals = {("base", 0): ref["base"], ("teacher", 0): ref["teacher"], ("icl", 0): lab.icl()}
    records = {}
    with clock.stage("multi-task LoRA"):
        for s in cfg.seeds:
            evals["multitask_lora", s], records["multitask_lora", s] = lab.multitask(s)
    results = {}
    for obj in cfg.objectives:
        with clock.stage(f"generator, {obj}"):
            runs = [lab.train(obj, s) for s in cfg.seeds]
            for s, r, sc in zip(cfg.seeds, runs, lab.evaluate(runs)):
                results[obj, s], evals[obj, s] = r, sc
    dev = {g: ledger.methods_table(split(lab, evals, "dev"), split_ref(lab, ref, "dev"), names)
           for g, names in groups(lab).items() if g != "all"}
    best = ledger.best_generator(dev, cfg.objectives)
    record_choice(lab, best, dev)
    runs = [results[best, s] for s in cfg.seeds]
    with clock.stage("adapter + k-shot prompt"):
        for s, sc in zip(cfg.seeds, lab.evaluate(runs, with_icl=True, loglik_only=not cfg.adapter_icl_exact, dev=False)):
            evals["adapter_icl", s] = sc
    controls = [results[best, s] for s in cfg.control_seeds]
    with clock.stage("controls"):
        for control in ("other", "random"):
            for s, sc in zip(cfg.control_seeds, lab.evaluate(controls, control=control, dev=False)):
                evals[control, s] = sc
    return dict(evals=evals, results=results, records=records, best=best, dev=dev)


def record_choice(lab: SuiteLab, best: str, dev: dict) -> None:
    """Write the objective chosen on dev items where `python -m llgbm.generate` reads its default."""
    atomic_write_json(choice_path(lab.profile), dict(
        objective=best, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), model=lab.fingerprint,
        dev_gap_loglik={g: {o: float(T.loc[o, "gap_loglik"]) for o in lab.cfg.objectives} for g, T in dev.items()}))


def split(lab: SuiteLab, evals: dict, which: str = "test") -> dict:
    return {k: lab.split(v, which) for k, v in evals.items()}


def split_ref(lab: SuiteLab, ref: dict, which: str = "test") -> dict:
    return {m: lab.split(ref[m], which) for m in ("base", "teacher")}


def scaling(lab: SuiteLab, head: dict, clock: StageClock) -> dict[tuple, dict]:
    """Step 4: {(objective, size, seed): test scores}; the largest point is the headline runs."""
    cfg, plan, out = lab.cfg, lab.plan, {}
    smaller = list(plan.train_sizes[:-1])
    for obj in cfg.objectives:
        for size in smaller:
            seeds = cfg.seeds if size == smaller[0] else cfg.curve_seeds
            with clock.stage(f"scaling, {obj}, {len(plan.training(size))} tasks"):
                runs = [lab.train(obj, sd, size) for sd in seeds]
                for sd, sc in zip(seeds, lab.evaluate(runs, loglik_only=True, dev=False)):
                    out[obj, size, sd] = lab.split(sc)
        for sd in cfg.seeds:
            out[obj, lab.largest, sd] = lab.split(head["evals"][obj, sd])
    return out


def sizes(lab: SuiteLab) -> dict:
    return {s: len(lab.plan.training(s)) for s in lab.plan.train_sizes}


def reference_lines(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """{group: {label: log-lik gap recovery}} of k-shot prompting and the multi-task LoRA."""
    return {g: {ledger.METHODS[m]: float(T.loc[m, "gap_loglik"]) for m in ("icl", "multitask_lora")} for g, T in tables.items()}


def cost_table(lab: SuiteLab, head: dict, n: int = 16) -> pd.DataFrame:
    """Per method: LM training examples and wall time, seconds to produce one adapter, prompt tokens per item."""
    cfg, best = lab.cfg, head["best"]
    bare = float(np.mean([prompt_tokens(lab.tokenizer, tasks.get_task(t), n) for t in lab.heldout]))
    shots = float(np.mean([prompt_tokens(lab.tokenizer, tasks.get_task(t), n, icl_prefix(tasks.get_task(t), cfg.shots))
                           for t in lab.heldout]))
    gen = [head["results"][best, s] for s in cfg.seeds]
    t_gen = []
    for t in lab.heldout[:4]:
        t_gen.append(sample.generate_adapter(gen[0].generator, lab.encoder, lab.lora_tokenizer, lab.lora_config,
                                             tasks.get_task(t).prompts("train"), lab.root / "generated" / t)[1])
    teach = list(lab.teachers.values())
    mt = [head["records"]["multitask_lora", s] for s in cfg.seeds]
    rows = {
        "icl": dict(lm_examples=0, train_seconds=0.0, seconds_per_adapter=0.0, prompt_tokens=shots),
        "multitask_lora": dict(lm_examples=cfg.lm_examples, train_seconds=float(np.mean([r["train_seconds"] for r in mt])),
                               seconds_per_adapter=np.nan, prompt_tokens=bare),
        best: dict(lm_examples=cfg.lm_examples, train_seconds=float(np.mean([r.seconds for r in gen])),
                   seconds_per_adapter=float(np.median(t_gen)), prompt_tokens=bare),
        "adapter_icl": dict(lm_examples=cfg.lm_examples, train_seconds=float(np.mean([r.seconds for r in gen])),
                            seconds_per_adapter=float(np.median(t_gen)), prompt_tokens=shots),
        "teacher": dict(lm_examples=float(np.mean([r["steps_trained"] for r in teach])) * lab.zoo_cfg.batch_size,
                        train_seconds=float(np.mean([r["train_seconds"] for r in teach])),
                        seconds_per_adapter=float(np.mean([r["train_seconds"] for r in teach])), prompt_tokens=bare)}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.rename(columns={"lm_examples": "LM training examples", "train_seconds": "training s",
                                 "seconds_per_adapter": "s per adapter", "prompt_tokens": "prompt tokens per item"})


def suite_overview(lab: SuiteLab) -> pd.DataFrame:
    """The suite table: per type, its tasks (training / near / far), the base model's exact match on
    each task's first `suite_items` test items (cached per task), and the held-out teachers' where they exist."""
    names = tasks.list_tasks(suite="large")
    base = base_accuracy(lab.model, lab.tokenizer, lab.fingerprint, names, lab.cfg.suite_items, progress=lab.progress)
    teacher = {t: r["checkpoints"][0]["test_acc"] for t, r in lab.teachers.items()}
    return suite_table(base, teacher)


def teachers_table(lab: SuiteLab) -> pd.DataFrame:
    """Each held-out teacher: its transfer, steps trained, best step, why it stopped, seconds, test exact match."""
    return pd.DataFrame([dict(task=t, transfer=tasks.get_task(t).transfer, steps=r["steps_trained"], best_step=r["best_step"],
                              stopped=r["stopped"], seconds=r["train_seconds"], exact_match=r["checkpoints"][0]["test_acc"])
                         for t, r in lab.teachers.items()]).set_index("task")


def user_task(lab: SuiteLab, head: dict, n: int = 64) -> pd.DataFrame:
    """The README's three steps for a task no generator saw (add_4): register it, generate a peft
    folder from its prompts with the best generator (seed 0), load it with PeftModel; base vs adapter."""
    task = tasks.register_task("add_4", "Add 4 to the number.", [(str(k), str(k + 4)) for k in range(10, 610)],
                               family="user", heldout=True, overwrite=True)
    gen = head["results"][head["best"], lab.cfg.seeds[0]].generator
    folder, _ = sample.generate_adapter(gen, lab.encoder, lab.lora_tokenizer, lab.lora_config, task.prompts("train"),
                                        lab.root / "generated" / "user-add_4")
    peft_model = PeftModel.from_pretrained(lab.model, str(folder))
    adapted = evaluate_task(peft_model, lab.tokenizer, task, n)
    peft_model.unload()
    base = evaluate_task(lab.model, lab.tokenizer, task, n)
    return pd.DataFrame({"exact_match": [base.acc, adapted.acc], "gold_loglik": [base.loglik_mean, adapted.loglik_mean]},
                        index=["base", "generated adapter"])


def scaling_figure(scale: pd.DataFrame, refs: dict[str, dict[str, float]]):
    """Gap recovery against training tasks, one panel per held-out group (near, far), a line per
    objective (bars: 95% CI over seeds and tasks where a point has seeds), k-shot prompting and the
    multi-task LoRA as dashed reference lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    panels = [g for g in ("near", "far") if g in set(scale["held out"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.8), layout="constrained", squeeze=False, sharey=True)
    colors = sns.color_palette("deep")
    for ax, group in zip(axes[0], panels):
        for i, (obj, g) in enumerate(scale[scale["held out"] == group].groupby("objective", sort=False)):
            g = g.sort_values("training tasks")
            err = np.array([g["gap_loglik"] - g["CI low"], g["CI high"] - g["gap_loglik"]])
            ax.errorbar(g["training tasks"], g["gap_loglik"], yerr=np.nan_to_num(err), marker="o", capsize=3, color=colors[i],
                        label=ledger.METHODS[obj])
        for j, (name, v) in enumerate(refs[group].items()):
            ax.axhline(v, ls="--", lw=1, color=colors[j + 4], label=name)
        ax.axhline(0, color="k", lw=0.8)
        ticks = sorted(set(scale["training tasks"]))
        ax.set(xscale="log", title=f"{group} held-out tasks", xlabel="training tasks (log scale)")
        ax.set_xticks(ticks, [str(t) for t in ticks])
    axes[0][0].set_ylabel("gap recovery of gold log-lik")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Does transfer grow with the number of training tasks? (bars: 95% CI over seeds and tasks)")
    return fig


def methods_figure(tables: dict[str, pd.DataFrame]):
    """Log-lik gap recovery of every method (0: the base model, 1: the task's own teacher), one panel
    per held-out group, with its 95% CI over seeds and tasks."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    groups = [g for g in ("near", "far") if g in tables]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), layout="constrained", squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        T = tables[group].drop(index="base", errors="ignore")
        y = np.arange(len(T))[::-1]
        err = np.nan_to_num(np.array([T["gap_loglik"] - T["gap_loglik_lo"], T["gap_loglik_hi"] - T["gap_loglik"]], dtype=float))
        ax.errorbar(T["gap_loglik"], y, xerr=err, fmt="o", capsize=3, color=sns.color_palette("deep")[0])
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(1, color="grey", ls="--", lw=0.8)
        ax.set(title=f"{group} held-out tasks", xlabel="gap recovery of gold log-lik (0 base, 1 teacher)")
        ax.set_yticks(y, [ledger.METHODS[m] for m in T.index])
    fig.suptitle("Which method recovers the gap on unseen tasks? (bars: 95% CI over seeds and tasks)")
    return fig


def plan_table(lab: SuiteLab) -> pd.DataFrame:
    """The compute plan: per condition, what it trains, its steps, seeds and the items it is scored on."""
    cfg, plan = lab.cfg, lab.plan
    n_items = f"{len(lab.near)} near + {len(lab.far)} far tasks × ({plan.test_items} test + {plan.dev_items} dev)"
    test_only = f"{len(lab.near)} near + {len(lab.far)} far tasks × {plan.test_items} test"
    sizes_ = [len(plan.training(s)) for s in plan.train_sizes]
    rows = [
        ("own teachers", "one LoRA per held-out task", f"to the dev plateau, ≤ {cfg.teacher_max_steps}", "0", n_items),
        ("k-shot prompting", f"nothing ({cfg.shots} demonstrations in the prompt)", "-", "-", n_items),
        ("multi-task LoRA", f"{sizes_[-1]} training tasks × {cfg.pool} examples", f"{cfg.steps} × batch {cfg.batch_size * cfg.per_adapter}",
         ", ".join(map(str, cfg.seeds)), n_items),
        *[(f"generator, {o}", f"{sizes_[-1]} training tasks × {cfg.pool} examples",
           f"{cfg.steps} × {cfg.batch_size} tasks × {cfg.per_adapter} examples", ", ".join(map(str, cfg.seeds)), n_items)
          for o in cfg.objectives],
        ("best generator + k-shot prompt", "-", "-", ", ".join(map(str, cfg.seeds)),
         test_only + ("" if cfg.adapter_icl_exact else ", log-lik only")),
        ("controls: other task's prompts, random text", "-", "-", ", ".join(map(str, cfg.control_seeds)), test_only),
        ("scaling, smallest point", f"{sizes_[0]} training tasks", f"{cfg.steps}", ", ".join(map(str, cfg.seeds)), "test, log-lik only"),
        ("scaling, between", ", ".join(map(str, sizes_[1:-1])) + " training tasks", f"{cfg.steps}",
         ", ".join(map(str, cfg.curve_seeds)), "test, log-lik only")]
    return pd.DataFrame(rows, columns=["condition", "trains on", "steps", "seeds", "items"]).set_index("condition")


def cold_budget(clock: StageClock, budget_s: float) -> dict[str, float]:
    """06's cold minutes (every stage's first run, summed) against its budget, for the ledger's budget
    row; the budget is the quick profile's on this machine's 2 cores, so other profiles get none."""
    if clock.profile != "quick":
        return {}
    return dict(cold_minutes=sum(clock.first.values()) / 60, budget_minutes=budget_s / 60, cold_split=float(bool(clock.interrupted)))


def stage_table(clock: StageClock) -> pd.DataFrame:
    """The plan's measured cost: wall minutes of each stage when it first ran (the cold run) and in
    this run (a warm rerun reads its results back), with the total."""
    order = list(dict.fromkeys([*clock.now, *clock.first]))              # this run's order, then stages it skipped
    frame = pd.DataFrame({"first run (min)": pd.Series(clock.first, dtype=float) / 60,
                          "this run (min)": pd.Series(clock.now, dtype=float) / 60}).loc[order]
    frame.insert(1, "first run split", [name in clock.interrupted for name in order])
    frame.loc["total"] = [frame["first run (min)"].sum(), bool(clock.interrupted), frame["this run (min)"].sum()]
    return frame.rename_axis("stage")

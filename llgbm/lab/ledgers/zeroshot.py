"""Phase 6's tables, paired tests, claims-ledger rows, metrics and verdict (notebook 06), from the
per-item held-out scores of every method ({(method, seed): {task: {correct, loglik}}})."""
from __future__ import annotations

import numpy as np
import pandas as pd

from llgbm.core import stats
from llgbm.eval import compare
from llgbm.lab.ledgers import Entry

METHODS = {"weight": "weight-only (DnD)", "delta": "delta-only", "kd": "output KD", "sft": "SFT (Text-to-LoRA)",
           "delta+sft": "delta + SFT", "labeled": "labeled-example generator", "multitask_lora": "multi-task LoRA",
           "multitask_lora_zoo_lr": "multi-task LoRA, zoo's lr", "icl": "few-shot prompting", "base": "base", "mean_lora": "mean of training LoRAs",
           "nearest_lora": "nearest task's LoRA", "teacher": "own teacher"}
GENERATOR_OBJECTIVES = ("weight", "delta", "kd", "sft", "delta+sft")


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
        out.update({f"gap_recovery_{k}": row["gap_loglik"], f"gap_recovery_{k}_ci_low": row["loglik_lo"],
                    f"gap_recovery_{k}_ci_high": row["loglik_hi"], f"acc_{k}": row["exact_match_mean"],
                    f"gap_recovery_acc_{k}": row["gap_acc"]})
    return out


def best_generator(table: pd.DataFrame, candidates=GENERATOR_OBJECTIVES + ("labeled",)) -> str:
    """The generator method with the highest log-lik gap recovery."""
    return max((m for m in candidates if m in table.index), key=lambda m: table.loc[m, "gap_loglik"])


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
    return stats.comparison_verdict({"gold log-lik": (d["loglik_lo"], d["loglik_hi"]),
                                     "exact match": (d["acc_lo"], d["acc_hi"])})


def evidence(d: pd.Series) -> str:
    return (f"log-lik {d['diff_loglik']:+.3f} [{d['loglik_lo']:+.3f}, {d['loglik_hi']:+.3f}] per token, "
            f"exact match {d['diff_acc'] * 100:+.1f} points [{d['acc_lo'] * 100:+.1f}, {d['acc_hi'] * 100:+.1f}]")


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


def method_keys(table: pd.DataFrame) -> pd.DataFrame:
    """The methods table indexed by method key ('sft', 'icl', …) instead of its display name."""
    return table.rename(index={v: k for k, v in METHODS.items()})


def paired_table(evals, held: list[str], best: str) -> pd.DataFrame:
    """The paired tests of phase 6, in this order: best − multi-task LoRA, best − weight-only,
    labeled − few-shot prompting, kd − delta, sft − weight-only."""
    pairs = [(best, "multitask_lora"), (best, "weight"), ("labeled", "icl"), ("kd", "delta"), ("sft", "weight")]
    return pd.DataFrame({f"{METHODS[a]} − {METHODS[b]}": paired(evals, held, a, b) for a, b in pairs}).T


def summary(T: pd.DataFrame, tests: pd.DataFrame, cost: pd.DataFrame, best: str) -> dict[str, float]:
    """metrics.json entries beyond `metrics(T)`: the best generator and the paired differences the
    targets are judged on, and the inference cost (T: `method_keys` of the methods table)."""
    d_mt, d_w, d_icl = (tests.iloc[i] for i in range(3))
    return dict(best_gap_recovery=T.loc[best, "gap_loglik"], best_gap_recovery_ci_low=T.loc[best, "loglik_lo"],
                best_minus_multitask_lora_loglik=d_mt["diff_loglik"], best_minus_multitask_lora_loglik_ci_low=d_mt["loglik_lo"],
                best_minus_multitask_lora_loglik_ci_high=d_mt["loglik_hi"], best_minus_weight_loglik=d_w["diff_loglik"],
                labeled_minus_icl_loglik=d_icl["diff_loglik"], labeled_minus_icl_loglik_ci_low=d_icl["loglik_lo"],
                labeled_minus_icl_loglik_ci_high=d_icl["loglik_hi"],
                prompt_tokens_icl=cost.iloc[0]["prompt tokens per item"], prompt_tokens_generated=cost.iloc[1]["prompt tokens per item"],
                items_per_s_icl=cost.iloc[0]["items/s"], items_per_s_generated=cost.iloc[1]["items/s"])


def verdict(T: pd.DataFrame, tests: pd.DataFrame, cost: pd.DataFrame, best: str, n_items: int, weight_steps: int) -> str:
    """The verdict paragraph, with each target stated as met or missed."""
    d_mt, d_icl = tests.iloc[0], tests.iloc[2]
    b = T.loc[best]
    target = b["gap_loglik"] >= 0.5 and b["loglik_lo"] > 0 and d_mt["loglik_lo"] > 0
    stretch = d_icl["diff_loglik"] >= 0
    return (f"The best generator is **{METHODS[best]}**: it recovers {b['gap_loglik']:.3f} [{b['loglik_lo']:.3f}, "
            f"{b['loglik_hi']:.3f}] of the log-likelihood gap on {n_items} held-out items (weight-only after {weight_steps} steps: "
            f"{T.loc['weight', 'gap_loglik']:.3f}; multi-task LoRA {T.loc['multitask_lora', 'gap_loglik']:.3f}; four examples "
            f"in the prompt {T.loc['icl', 'gap_loglik']:.3f}). Against the multi-task LoRA: {evidence(d_mt)}. Target (≥ 0.5 with a CI "
            f"above 0, and beating the multi-task LoRA in a paired test): **{'met' if target else 'missed'}**. The labeled-example generator "
            f"against few-shot prompting: {evidence(d_icl)}, with a prompt of {cost.iloc[1]['prompt tokens per item']:.0f} tokens instead of "
            f"{cost.iloc[0]['prompt tokens per item']:.0f} (stretch goal {'met' if stretch else 'missed'}).")


def cost_note(generator_seconds: float, multitask_lora_seconds: float, budget_seconds: float) -> str:
    """What a cold run of the notebook costs in training alone (the runs' own recorded seconds, cached
    or not), against the notebook's cold budget."""
    train = generator_seconds + multitask_lora_seconds
    verdict = ("within it" if train <= budget_seconds
               else f"**over it by {(train - budget_seconds) / 60:.0f} min** before any scoring")
    return (f"Cold cost: the generator runs trained for {generator_seconds / 60:.0f} min and the multi-task LoRA for "
            f"{multitask_lora_seconds / 60:.0f} min on this machine (their recorded training time); against the "
            f"notebook's cold budget of {budget_seconds / 60:.0f} min that is {verdict}.")


def run_metrics(T: pd.DataFrame, tests: pd.DataFrame, cost: pd.DataFrame, best: str, scale: pd.DataFrame, *, n_items: int,
                n_seeds: int, zcfg, kd_mass: float, user: pd.DataFrame, train_seconds: dict[str, float]) -> dict[str, float]:
    """Every metrics.json entry of notebook 06: the protocol, `metrics(T)`, `summary(...)`, the user
    task (base and generated exact match), the recorded training time and the smallest scaling point."""
    return dict(heldout_items=n_items, n_seeds=n_seeds, weight_steps=zcfg.weight_steps, lm_steps=zcfg.lm_steps, kd_topk_mass=kd_mass,
                **metrics(T), **summary(T, tests, cost, best), user_task_acc_base=user.loc["base", "exact_match"],
                user_task_acc_generated=user.loc["generated adapter", "exact_match"], **train_seconds,
                scaling_gap_recovery_smallest=scale.sort_values("training tasks").iloc[0]["seed_gap_loglik"])


def full_verdict(T: pd.DataFrame, tests: pd.DataFrame, cost: pd.DataFrame, best: str, scale: pd.DataFrame, *, n_items: int,
                 weight_steps: int, top_k: int, kd_mass: float, train_seconds: dict[str, float], budget_seconds: float) -> str:
    """`verdict` plus the kd cache's coverage, the figures' pointers and the cold training cost."""
    return (verdict(T, tests, cost, best, n_items, weight_steps) + f" kd's top-{top_k} teacher log-probs hold {kd_mass:.3f} of "
            f"the teacher's mass. Fig. 1 shows each objective's learning curve; fig. 3 gap recovery from {scale['training tasks'].min()} "
            f"to {scale['training tasks'].max()} training tasks. "
            + cost_note(train_seconds["generator_train_seconds"], train_seconds["multitask_lora_train_seconds"], budget_seconds))


def entry(evals, held: list[str], T: pd.DataFrame, tests: pd.DataFrame, cost: pd.DataFrame, best: str, scale: pd.DataFrame, *,
          n_items: int, n_seeds: int, zcfg, top_k: int, kd_mass: float, user: pd.DataFrame, train_seconds: dict[str, float],
          budget_seconds: float) -> Entry:
    """Notebook 06's ledger entry: `run_metrics`, `claims` and `full_verdict` from one set of numbers."""
    return Entry(run_metrics(T, tests, cost, best, scale, n_items=n_items, n_seeds=n_seeds, zcfg=zcfg, kd_mass=kd_mass, user=user,
                             train_seconds=train_seconds),
                 claims(evals, held, best),
                 full_verdict(T, tests, cost, best, scale, n_items=n_items, weight_steps=zcfg.weight_steps, top_k=top_k,
                              kd_mass=kd_mass, train_seconds=train_seconds, budget_seconds=budget_seconds))

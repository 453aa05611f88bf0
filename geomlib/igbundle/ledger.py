"""Notebook 10's tables, metrics, claims-ledger rows and verdict, computed from its runs (so the
wording follows each run's numbers, never the other way round)."""
from __future__ import annotations

import pandas as pd

from llgbm.core import stats
from llgbm.eval import compare

from .lab import paired_metrics

PAIRS = (("igbundle", "lora"), ("igbundle", "houlsby"), ("houlsby", "lora"))
FLOOR = 0.10           # every method must lift exact match ≥ 10 points over the base model


def methods_table(runs: dict, base: dict, params: dict[str, int], tasks: list[str]):
    """(frame, summary, tests): per (method, seed) scores, their mean and std over seeds with each
    method's trainable parameters and median s/step, and the paired tests of PAIRS."""
    evals = {k: r["scores"] for k, r in runs.items()}
    frame = compare.seed_frame(evals | {("base", 0): base}, None, tasks)
    summary = frame.groupby("method", sort=False)[["exact_match", "gold_loglik"]].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["trainable params"] = [params.get(m, 0) for m in summary.index]
    summary["s / step (median)"] = [pd.Series([r["seconds_per_step"] for (k, _), r in runs.items() if k == m]).median()
                                    for m in summary.index]
    return frame, summary, compare.paired_tests(evals, tasks, list(PAIRS))


def ablation_accuracy(runs: dict, ablations: dict[str, dict], tasks: list[str], seeds) -> dict[str, float]:
    """Exact match of IGBundle with the sheaf loss off / faithful / normalised, mean over `seeds`
    (the faithful runs are the main grid's)."""
    acc = {m: pd.Series([stats.pooled(r["scores"], "correct", tasks).mean() for r in grid.values()]).mean()
           for m, grid in ablations.items()}
    acc["faithful"] = pd.Series([stats.pooled(runs["igbundle", s]["scores"], "correct", tasks).mean() for s in seeds]).mean()
    return acc


def already_trained(*grids: dict) -> tuple[int, int]:
    """(runs an earlier run had trained, runs in all) over the grids."""
    runs = [r for g in grids for r in g.values()]
    return sum(r["already_trained"] for r in runs), len(runs)


def verdicts(tests: pd.DataFrame) -> dict[str, str]:
    """"A beats B" per row of the paired tests, from both metrics' 95% CIs."""
    return {k: stats.comparison_verdict({"exact match": (r["acc_lo"], r["acc_hi"]),
                                         "gold log-lik": (r["loglik_lo"], r["loglik_hi"])})
            for k, r in tests.iterrows()}


def metrics(summary: pd.DataFrame, tests: pd.DataFrame, params: dict[str, int], seed_params: int, init: dict,
            abl_acc: dict, mem: dict, sigma: pd.DataFrame, *, n_items: int, n_seeds: int, steps: int, seconds: float,
            already: int) -> dict[str, float]:
    s, methods = summary["exact_match_mean"], list(params)
    fp32, nf4 = mem["fp32"], mem["nf4"]
    return dict(
        params_igbundle=params["igbundle"], params_lora=params["lora"], params_houlsby=params["houlsby"],
        params_igbundle_seed_defaults=seed_params, **{f"acc_{m}_mean": s[m] for m in methods},
        **{f"loglik_{m}_mean": summary["gold_loglik_mean"][m] for m in methods}, acc_base=s["base"],
        **paired_metrics(tests, {"igbundle_vs_lora": "igbundle − lora", "igbundle_vs_houlsby": "igbundle − houlsby"}),
        eval_items=n_items, n_seeds=n_seeds, sheaf_faithful_value_at_init=init["faithful_value"],
        sheaf_faithful_grad_norm_at_init=init["faithful_grad_norm"], sheaf_normalised_value_at_init=init["normalised_value"],
        acc_sheaf_off=abl_acc["off"], acc_sheaf_faithful=abl_acc["faithful"], acc_sheaf_normalised=abl_acc["normalised"],
        peak_mem_mb_fp32=fp32["peak_rss_mb"], peak_mem_mb_nf4=nf4["peak_rss_mb"],
        peak_mem_mb_above_imports_fp32=fp32["peak_above_imports_mb"], peak_mem_mb_above_imports_nf4=nf4["peak_above_imports_mb"],
        seconds_per_step_fp32=fp32["seconds_per_step"], seconds_per_step_nf4=nf4["seconds_per_step"], acc_nf4=mem["acc_nf4"],
        acc_fp32_nf4_items=mem["acc_fp32_same_items"], floor_met=float(all(s[m] - s["base"] >= FLOOR for m in methods)),
        sigma_final_mean=float(sigma[sigma.step == sigma.step.max()].sigma.mean()), steps=steps, notebook_seconds=seconds,
        runs_already_trained=already)


def claims(m: dict, tests: pd.DataFrame, ablation_seeds, sigma: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """Seed 000's three claims this notebook measures: memory efficiency, the sheaf loss, sigma."""
    v, d = verdicts(tests), tests.loc["igbundle − lora"]
    efficient = m["params_igbundle_seed_defaults"] <= m["params_lora"] or v["igbundle − lora"] == "supported"
    off, faithful, normalised = m["acc_sheaf_off"], m["acc_sheaf_faithful"], m["acc_sheaf_normalised"]
    return [
        ("Bundle adapters are memory efficient (~72M vs ~900M parameters)", "seed 000",
         "supported" if efficient else f"refuted (more parameters than LoRA; at LoRA's count against LoRA: {v['igbundle − lora']})",
         f"at the seed's defaults IGBundle holds {m['params_igbundle_seed_defaults'] / 1e6:.1f}M parameters on SmolLM2; at LoRA's "
         f"count ({m['params_lora'] / 1e6:.2f}M) IGBundle − LoRA: exact match {d['diff_acc'] * 100:+.1f} points "
         f"[{d['acc_lo'] * 100:+.1f}, {d['acc_hi'] * 100:+.1f}]; peak RSS fp32 {m['peak_mem_mb_fp32']:.0f} MB "
         f"vs NF4 {m['peak_mem_mb_nf4']:.0f} MB"),
        ("The sheaf loss encourages consistent geometric structures", "seed 000",
         f"refuted as written (identically zero: value {m['sheaf_faithful_value_at_init']:.1g}, gradient norm "
         f"{m['sheaf_faithful_grad_norm_at_init']:.1g} at init)",
         f"exact match with the sheaf loss off / faithful / normalised: {off:.3f} / {faithful:.3f} / {normalised:.3f} "
         f"(seeds {list(ablation_seeds)}); the faithful loss's patch weights ω underflow to 0 in float32 at D_lat 128, so 'off' and "
         f"'faithful' differ only by float rounding (the gradient-norm clip sees one more zero tensor): their gap, "
         f"{abs(off - faithful) * 100:.1f} points, is the noise floor of one seed, and the normalised loss's effect "
         f"({(normalised - faithful) * 100:+.1f} points) {'is within' if abs(normalised - faithful) <= abs(off - faithful) else 'exceeds'} it"),
        ("Sigma measures the curvature of the informational manifold", "seed 000", "refuted (it is a width)",
         f"sigma is the mean of exp(log σ) of the mixture components: {float(sigma[sigma.step == 1].sigma.mean()):.2f} at the first "
         f"step, {m['sigma_final_mean']:.1f} at the last (the update's precision clamp at 1e-6 caps it at 1000); no curvature enters it"),
    ]


def verdict(m: dict, tests: pd.DataFrame, methods, n_runs: int) -> str:
    v = verdicts(tests)
    cleared = {x: m[f"acc_{x}_mean"] - m["acc_base"] >= FLOOR for x in methods}
    floor_text = ("met by every method" if all(cleared.values())
                  else "NOT met: cleared by " + (", ".join(x for x, ok in cleared.items() if ok) or "no method"))
    return (f"At {m['params_lora'] / 1e6:.2f}M trainable parameters, exact match on {m['eval_items']} mixture items is "
            + ", ".join(f"{x} {m[f'acc_{x}_mean']:.3f}" for x in methods) + f" (base {m['acc_base']:.3f}; the 10-point floor "
            f"over base is {floor_text} ). IGBundle against LoRA: {v['igbundle − lora']}; against Houlsby: {v['igbundle − houlsby']}. "
            f"The notebook took {m['notebook_seconds'] / 60:.1f} min (budget 10 min) with {m['runs_already_trained']} of {n_runs} "
            f"runs already trained by an earlier run.")

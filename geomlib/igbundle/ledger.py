"""Notebook 10's tables, metrics, claims-ledger rows and verdict, computed from its runs (so the
wording follows each run's numbers, never the other way round)."""
from __future__ import annotations

import pandas as pd

from llgbm.core import stats
from llgbm.eval import compare

from .adapter import PREC_MIN
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


def ablation(runs: dict, ablations: dict[str, dict], tasks: list[str], seeds) -> tuple[dict[str, float], pd.DataFrame]:
    """Exact match of IGBundle with the sheaf loss off / faithful / normalised, mean over `seeds` (the
    faithful runs are the main grid's), and the paired tests off − faithful and normalised − faithful
    over those seeds (95% CIs over seeds and tasks)."""
    evals = {("faithful", s): runs["igbundle", s]["scores"] for s in seeds}
    evals |= {(mode, s): r["scores"] for mode, grid in ablations.items() for (_, s), r in grid.items()}
    acc = {m: float(pd.Series([stats.pooled(e, "correct", tasks).mean() for (k, _), e in evals.items() if k == m]).mean())
           for m in ("off", "faithful", "normalised")}
    return acc, compare.paired_tests(evals, tasks, [("off", "faithful"), ("normalised", "faithful")])


def already_trained(*grids: dict) -> tuple[int, int]:
    """(runs an earlier run had trained, runs in all) over the grids."""
    runs = [r for g in grids for r in g.values()]
    return sum(r["already_trained"] for r in runs), len(runs)


def verdicts(tests: pd.DataFrame) -> dict[str, str]:
    """"A beats B" per row of the paired tests, from both metrics' 95% CIs over seeds and tasks."""
    return {k: compare.verdict_of(r, ("acc", "loglik")) for k, r in tests.iterrows()}


def metrics(summary: pd.DataFrame, tests: pd.DataFrame, params: dict[str, int], seed_params: int, init: dict, trained: dict,
            abl_acc: dict, abl_tests: pd.DataFrame, mem: dict, sigma: pd.DataFrame, *, n_items: int, n_seeds: int,
            n_ablation_seeds: int, steps: int, seconds: float, budget_seconds: float, already: int, runs: int) -> dict[str, float]:
    """`init`, `trained`: `lab.sheaf_at_init` at the seed's D_lat and at the one trained here."""
    s, methods = summary["exact_match_mean"], list(params)
    fp32, nf4 = mem["fp32"], mem["nf4"]
    return dict(
        params_igbundle=params["igbundle"], params_lora=params["lora"], params_houlsby=params["houlsby"],
        params_igbundle_seed_defaults=seed_params, **{f"acc_{m}_mean": s[m] for m in methods},
        **{f"loglik_{m}_mean": summary["gold_loglik_mean"][m] for m in methods}, acc_base=s["base"],
        **paired_metrics(tests, {"igbundle_vs_lora": "igbundle − lora", "igbundle_vs_houlsby": "igbundle − houlsby",
                                 "houlsby_vs_lora": "houlsby − lora"}),
        eval_items=n_items, n_seeds=n_seeds, n_ablation_seeds=n_ablation_seeds,
        sheaf_seed_latent_dim=init["latent_dim"], sheaf_faithful_value_at_init=init["faithful_value"],
        sheaf_faithful_grad_norm_at_init=init["faithful_grad_norm"], sheaf_normalised_value_at_init=init["normalised_value"],
        sheaf_faithful_omega_max_at_init=init["faithful_omega_max_offdiag"],
        sheaf_trained_latent_dim=trained["latent_dim"], sheaf_faithful_value_trained_dlat=trained["faithful_value"],
        sheaf_faithful_grad_norm_trained_dlat=trained["faithful_grad_norm"],
        sheaf_faithful_omega_max_trained_dlat=trained["faithful_omega_max_offdiag"],
        acc_sheaf_off=abl_acc["off"], acc_sheaf_faithful=abl_acc["faithful"], acc_sheaf_normalised=abl_acc["normalised"],
        **paired_metrics(abl_tests, {"sheaf_off_vs_faithful": "off − faithful", "sheaf_normalised_vs_faithful": "normalised − faithful"}),
        peak_mem_mb_fp32=fp32["peak_rss_mb"], peak_mem_mb_nf4=nf4["peak_rss_mb"],
        peak_mem_mb_above_imports_fp32=fp32["peak_above_imports_mb"], peak_mem_mb_above_imports_nf4=nf4["peak_above_imports_mb"],
        seconds_per_step_fp32=fp32["seconds_per_step"], seconds_per_step_nf4=nf4["seconds_per_step"], acc_nf4=mem["acc_nf4"],
        acc_fp32_nf4_items=mem["acc_fp32_same_items"], floor=FLOOR, floor_met=float(all(s[m] - s["base"] >= FLOOR for m in methods)),
        sigma_first_mean=float(sigma[sigma.step == sigma.step.min()].sigma.mean()),
        sigma_final_mean=float(sigma[sigma.step == sigma.step.max()].sigma.mean()), precision_clamp_min=PREC_MIN,
        sigma_cap=PREC_MIN ** -0.5, steps=steps, notebook_seconds=seconds, budget_seconds=budget_seconds, runs_already_trained=already, runs=runs,
        anchor_params_seed_readme=72e6, anchor_params_full_ft=900e6)


def _sheaf_verdict(m: dict) -> str:
    zero = m["sheaf_faithful_value_at_init"] == 0 and m["sheaf_faithful_grad_norm_at_init"] == 0
    d = (m["acc_diff_sheaf_off_vs_faithful_ci_low"], m["acc_diff_sheaf_off_vs_faithful_ci_high"])
    same = d[0] <= 0 <= d[1]
    return (f"refuted as written ({'identically zero' if zero else 'not zero'} at the seed's D_lat "
            f"{m['sheaf_seed_latent_dim']:.0f}; {'indistinguishable from no loss' if same else 'distinguishable from no loss'} "
            f"at the D_lat {m['sheaf_trained_latent_dim']:.0f} trained here)")


def claims(m: dict, tests: pd.DataFrame, abl_tests: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """Seed 000's three claims this notebook measures: memory efficiency, the sheaf loss, sigma."""
    v, d = verdicts(tests), tests.loc["igbundle − lora"]
    efficient = m["params_igbundle_seed_defaults"] <= m["params_lora"] or v["igbundle − lora"] == "supported"
    off, faithful, normalised = m["acc_sheaf_off"], m["acc_sheaf_faithful"], m["acc_sheaf_normalised"]
    o, n = abl_tests.loc["off − faithful"], abl_tests.loc["normalised − faithful"]
    return [
        ("Bundle adapters are memory efficient (~72M vs ~900M parameters)", "seed 000",
         "supported" if efficient else f"refuted (more parameters than LoRA; at LoRA's count against LoRA: {v['igbundle − lora']})",
         f"at the seed's defaults IGBundle holds {m['params_igbundle_seed_defaults'] / 1e6:.1f}M parameters on SmolLM2; at LoRA's "
         f"count ({m['params_lora'] / 1e6:.2f}M) IGBundle − LoRA: exact match {d['diff_acc'] * 100:+.1f} points "
         f"[{d['diff_acc_lo'] * 100:+.1f}, {d['diff_acc_hi'] * 100:+.1f}] (95% CI over seeds and tasks); peak RSS fp32 "
         f"{m['peak_mem_mb_fp32']:.0f} MB vs NF4 {m['peak_mem_mb_nf4']:.0f} MB"),
        ("The sheaf loss encourages consistent geometric structures", "seed 000", _sheaf_verdict(m),
         f"the faithful loss at the seed's D_lat {m['sheaf_seed_latent_dim']:.0f}: value {m['sheaf_faithful_value_at_init']:.1g}, gradient "
         f"norm {m['sheaf_faithful_grad_norm_at_init']:.1g} (patch weights ω ≤ {m['sheaf_faithful_omega_max_at_init']:.1g}); at the "
         f"D_lat {m['sheaf_trained_latent_dim']:.0f} trained here: value {m['sheaf_faithful_value_trained_dlat']:.2g}, gradient norm "
         f"{m['sheaf_faithful_grad_norm_trained_dlat']:.2g}, ω ≤ {m['sheaf_faithful_omega_max_trained_dlat']:.2g}. Exact match off / "
         f"faithful / normalised: {off:.3f} / {faithful:.3f} / {normalised:.3f} ({m['n_ablation_seeds']:.0f} seeds); off − faithful "
         f"{o['diff_acc'] * 100:+.1f} points [{o['diff_acc_lo'] * 100:+.1f}, {o['diff_acc_hi'] * 100:+.1f}], normalised − faithful "
         f"{n['diff_acc'] * 100:+.1f} points [{n['diff_acc_lo'] * 100:+.1f}, {n['diff_acc_hi'] * 100:+.1f}] (95% CIs over seeds and tasks)"),
        ("Sigma measures the curvature of the informational manifold", "seed 000", "refuted (it is a width)",
         f"sigma is the mean of exp(log σ) of the mixture components: {m['sigma_first_mean']:.2f} at the first step, "
         f"{m['sigma_final_mean']:.1f} at the last (the update's precision clamp at {m['precision_clamp_min']:.0e} caps it at "
         f"{m['sigma_cap']:.0f}); no curvature enters it"),
    ]


def verdict(m: dict, tests: pd.DataFrame, methods, n_runs: int) -> str:
    v = verdicts(tests)
    cleared = {x: m[f"acc_{x}_mean"] - m["acc_base"] >= FLOOR for x in methods}
    floor_text = ("met by every method" if all(cleared.values())
                  else "NOT met: cleared by " + (", ".join(x for x, ok in cleared.items() if ok) or "no method"))
    return (f"At {m['params_lora'] / 1e6:.2f}M trainable parameters, exact match on {m['eval_items']} mixture items is "
            + ", ".join(f"{x} {m[f'acc_{x}_mean']:.3f}" for x in methods) + f" (base {m['acc_base']:.3f}; the "
            f"{m['floor'] * 100:.0f}-point floor over base is {floor_text}). IGBundle against LoRA: {v['igbundle − lora']}; against "
            f"Houlsby: {v['igbundle − houlsby']} (95% CIs over {m['n_seeds']:.0f} seeds and the tasks). The notebook took "
            f"{m['notebook_seconds'] / 60:.1f} min (budget {m['budget_seconds'] / 60:.0f} min) with {m['runs_already_trained']} of "
            f"{n_runs} runs already trained by an earlier run.")

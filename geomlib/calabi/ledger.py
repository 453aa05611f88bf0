"""Notebook 11's figures, metrics, claims-ledger rows and verdict, computed from the compression
grid (so the wording follows each run's numbers, never the other way round)."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from geomlib.calabi import svd
from llgbm.core import stats

TARGET = 1.30          # lab target (issue 6): the best method at 20% within 1.30× dense perplexity


def spectra_figure(model, layer: int):
    """Singular values and cumulative energy of every linear weight in decoder layer `layer`."""
    spectra = {k: v for k, v in svd.spectral_summary(model).items() if k.startswith(f"model.layers.{layer}.")}
    curves = pd.concat([pd.DataFrame({"rank k": np.arange(1, len(s) + 1), "singular value": s.numpy(),
                                      "cumulative energy (fraction)": svd.energy_curve(s).numpy(), "layer": k.split(".")[-1]})
                        for k, s in spectra.items()])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    sns.lineplot(curves, x="rank k", y="singular value", hue="layer", ax=axes[0]).set(yscale="log", title=f"Is there a spectral gap? (layer {layer})")
    sns.lineplot(curves, x="rank k", y="cumulative energy (fraction)", hue="layer", ax=axes[1], legend=False).set(
        title="How fast does the energy accumulate?")
    return fig


def perplexity_figure(res: pd.DataFrame, ppl_dense: float):
    """Held-out perplexity against the measured fraction of parameters removed, per method."""
    ax = sns.lineplot(res, x="removed", y="ppl", hue="method", marker="o")
    ax.axhline(ppl_dense, color="k", ls=":", label="dense")
    ax.axhline(TARGET * ppl_dense, color="r", ls="--", lw=0.8, label=f"{TARGET:.2f}× dense (target)")
    ax.set(yscale="log", xlabel="fraction of decoder-linear parameters removed (measured)", ylabel="held-out perplexity (per token)",
           title="Which compression keeps perplexity near dense?")
    ax.legend(fontsize=8)
    return ax.figure


def metric_key(name: str) -> str:
    """A model's name as a metric-name part: "svdllm+alloc-type 20% recovered" -> "svdllm_alloc_type_20_recovered"."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def best_at_20(res: pd.DataFrame, methods=svd.METHODS) -> pd.Series:
    """The lowest-perplexity cell of `methods` at ratio 0.2 (or at the smallest ratio when 0.2 is not in
    the grid). The default, the uniform-rank methods of `svd.METHODS`, is the seed's comparison; with
    every method (issue 29's too) it is the frontier that the recovery, speed and task tables measure."""
    res = res[res.method.isin(methods)]
    at20 = res[np.isclose(res.ratio, 0.2)] if np.isclose(res.ratio, 0.2).any() else res[res.ratio == res.ratio.min()]
    return at20.sort_values("ppl").iloc[0]


def recovery_figure(curve: pd.DataFrame, ppl_dense: float, method: str, lm_loss: tuple[int, float] | None = None):
    """Held-out perplexity against distillation steps, with dense, the 1.30× target and (one point) the
    seed's LM-loss fine-tuning of the best uniform method."""
    ax = sns.lineplot(curve, x="step", y="ppl", marker="o", label=f"{method}, distilled from dense")
    ax.axhline(ppl_dense, color="k", ls=":", label="dense")
    ax.axhline(TARGET * ppl_dense, color="r", ls="--", lw=0.8, label=f"{TARGET:.2f}× dense (target)")
    if lm_loss is not None:
        ax.plot(*lm_loss, "s", color="grey", label="best uniform method, LM-loss fine-tuning")
    ax.set(yscale="log", xlabel="recovery steps (calibration windows)", ylabel="held-out perplexity",
           title="How far does recovery fine-tuning close the gap at 20%?")
    ax.legend(fontsize=8)
    return ax.figure


def frontier_tables(study: dict, cfg, front: pd.Series, best: pd.Series, ft: dict) -> list[tuple]:
    """(table, name, caption, floatfmt) for `NotebookReport.table`: the recovery curve, speed and memory, tasks."""
    return [(study["curve"].set_index("step"), "1e_recovery", f"{front.method} at {front.ratio:.0%}: held-out perplexity after each number "
             f"of distillation steps (kl: mean KL to dense over the steps before); {best.method} after {cfg.ft_steps} LM-loss steps: "
             f"{ft['ppl']:.2f}.", ".3f"),
            (study["sm"], "1f_speed_memory", f"Dense and {front.method} at each ratio, loaded from saved folders: forward tokens/s "
             f"({cfg.speed_repeats} interleaved repeats on {cfg.speed_windows} windows), all parameters, and resident MB after one "
             f"forward and at the loading peak, less a process without a model.", ".1f"),
            (task_table(study["names"], study["em"]), "1g_tasks", f"Exact match, {cfg.shots}-shot prompts, {cfg.task_items} test items "
             f"per task (tasks chosen on dev by the dense model); differences to dense with CIs in the claims.", ".3f"),
            (study["corpora"], "1h_corpora", f"Held-out perplexity on the pydoc topics (odd-numbered; calibration and recovery read the "
             f"even-numbered ones) and on a second corpus, the standard library's module docstrings ({cfg.eval_windows} windows of "
             f"{cfg.window} tokens), and each as a ratio to dense.", ".3f")]


def frontier_metrics(front: pd.Series, study: dict, *, ppl_dense: float, n_boot: int = 2000) -> dict[str, float]:
    """Issue 29's numbers from `frontier.study`: the frontier method at 20% before and after recovery,
    the share of all parameters it removes, its speed and memory against dense, and task exact match of
    each compressed model against dense with hierarchical intervals over tasks (items in blocks)."""
    curve, sm, names, em = study["curve"], study["sm"], study["names"], study["em"]
    at20, d = sm.loc[f"{front.method} {front.ratio:.0%}"], sm.loc["dense"]
    out = dict(front_ppl_ratio_20=float(front.ppl / ppl_dense), front_recovered_ppl_ratio_20=float(curve.ppl.iloc[-1] / ppl_dense),
               front_recover_steps=float(curve.step.iloc[-1]), front_removed_all_params=float(1 - at20["params"] / d["params"]),
               front_removed_linear=float(front.removed), front_layers=float(front.layers),
               front_speed_20=float(at20["median"] / d["median"]), front_speed_min_20=float(at20["min"]),
               front_speed_max_20=float(at20["max"]), dense_speed_min=float(d["min"]), dense_speed_max=float(d["max"]),
               front_speed_median_20=float(at20["median"]), dense_speed_median=float(d["median"]),
               front_rss_after_20=float(at20["rss_after_mb"]), dense_rss_after=float(d["rss_after_mb"]),
               front_rss_peak_20=float(at20["rss_peak_mb"]), dense_rss_peak=float(d["rss_peak_mb"]),
               task_count=float(len(names)), task_items=float(len(em["dense"])), em_dense=float(em["dense"].mean()),
               front_recovered_docstrings_ratio_20=float(study["corpora"].loc[study["recovered"], "stdlib_docstrings_ratio"]),
               lever_margin=LEVER_MARGIN,
               ppl_dense_docstrings=float(study["corpora"].loc["dense", "stdlib_docstrings"]))
    sizes = [len(em["dense"]) // len(names)] * len(names)
    for name, v in em.items():
        if name != "dense":
            ci = stats.hier_difference(v, em["dense"], sizes, n_boot=n_boot)
            key = metric_key(name)
            out |= {f"em_{key}": float(v.mean()), f"em_diff_{key}": ci.mean, f"em_diff_{key}_lo": ci.lo, f"em_diff_{key}_hi": ci.hi}
    return out


LEVERS = (("svdllm+alloc", "svdllm"), ("svdllm+alloc-type", "svdllm"), ("svdllm+alloc-rel", "svdllm"),
          ("asvd+update", "asvd"))   # (issue 29's method, the one it builds on)


LEVER_MARGIN = 0.05    # a lever's perplexity must differ from its base's by more than this share to decide


def lever_claims(m: dict) -> list[tuple[str, str, str, str]]:
    """Does each lever of issue 29 lower perplexity at 20% against the method it builds on? One deterministic
    compression each (no seeds): supported or refuted when they differ by more than 5%, else inconclusive."""
    what = {"svdllm+alloc": "Per-layer rank allocation across all layers (by whitened loss) beats uniform ranks at the same budget",
            "svdllm+alloc-type": "Per-layer rank allocation within each kind of layer (SVD-LLM v2's groups) beats uniform ranks",
            "svdllm+alloc-rel": "Per-layer rank allocation by each layer's relative (scale-free) loss beats uniform ranks",
            "asvd+update": "SVD-LLM's closed-form update of U lowers ASVD's perplexity"}
    rows = []
    for new, old in LEVERS:
        a, b = m.get(f"ppl_{metric_key(new)}_20"), m.get(f"ppl_{old}_20")
        if a is None or b is None:
            rows.append((what[new], "issue 29", "not measured", f"no {new} or {old} cell at 20% (an infeasible budget leaves none)"))
            continue
        margin = 1 + LEVER_MARGIN
        verdict = "supported" if a < b / margin else ("refuted" if a > b * margin else f"inconclusive (within {LEVER_MARGIN:.0%})")
        rows.append((what[new], "issue 29", verdict, f"at 20% removed: {new} perplexity {a:.2f} ({a / m['ppl_dense']:.2f}× dense) vs "
                     f"{old} {b:.2f} ({b / m['ppl_dense']:.2f}×), on {m['eval_tokens']:.0f} held-out tokens (one deterministic compression each)"))
    return rows


def frontier_claims(m: dict, front: pd.Series, recovered: str) -> list[tuple[str, str, str, str]]:
    """One ledger row per goal of issue 29, met or not, from `frontier_metrics`; `recovered` names the
    task-table model that is the recovered frontier."""
    key = metric_key(recovered)
    ratio, rec = m["front_ppl_ratio_20"], m["front_recovered_ppl_ratio_20"]
    speed_noise = ("beyond the repeats' spread" if m["front_speed_min_20"] > m["dense_speed_max"] or m["front_speed_max_20"] < m["dense_speed_min"]
                   else "within the repeats' spread")
    diff, lo, hi = m[f"em_diff_{key}"], m[f"em_diff_{key}_lo"], m[f"em_diff_{key}_hi"]
    em_verdict = "met" if lo >= -0.03 else ("not met" if hi < -0.03 else "inconclusive")
    return lever_claims(m) + [
        ("≤ 1.30× dense perplexity at 20% removed, recovery fine-tuning included", "issue 29",
         "met" if rec <= TARGET else "not met",
         f"{front.method}: {ratio:.2f}× before recovery, {rec:.2f}× after {m['front_recover_steps']:.0f} distillation steps; "
         f"{m['front_removed_linear']:.1%} of decoder-linear parameters and {m['front_removed_all_params']:.1%} of all parameters "
         f"(embeddings included) removed; on a second corpus (stdlib docstrings) {m['front_recovered_docstrings_ratio_20']:.2f}× after recovery"),
        ("Factored inference ≥ 1.0× dense tokens/s at 20%", "issue 29", "met" if m["front_speed_20"] >= 1.0 else "not met",
         f"{front.method} at 20%: {m['front_speed_median_20']:.0f} tokens/s [{m['front_speed_min_20']:.0f}, {m['front_speed_max_20']:.0f}] vs "
         f"dense {m['dense_speed_median']:.0f} [{m['dense_speed_min']:.0f}, {m['dense_speed_max']:.0f}], {m['front_speed_20']:.2f}× "
         f"(median [min, max] of interleaved repeats; {speed_noise}); resident memory {m['front_rss_after_20']:.0f} MB vs "
         f"{m['dense_rss_after']:.0f} MB dense"),
        ("Task exact match of the 20% model within 3 points of dense", "issue 29", em_verdict,
         f"{recovered}: {m[f'em_{key}']:.3f} vs dense {m['em_dense']:.3f} on {m['task_items']:.0f} test items of "
         f"{m['task_count']:.0f} tasks (4-shot), difference {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] (tasks resampled)"),
    ]


def metrics(res: pd.DataFrame, best: pd.Series, mini: pd.DataFrame, *, ppl_dense: float, tps_dense: float, params_dense: int,
            ppl_ft: float, ft_steps: int, eval_tokens: int, calib_tokens: int, speed: pd.DataFrame | None = None) -> dict[str, float]:
    """Every grid cell's perplexity and parameters, the best cell at 20% against dense (and the seed's
    energy_gap method at its ratio), fine-tuning recovery and MiniLM cosines."""
    out = dict(ppl_dense=ppl_dense, tokens_per_s_dense=tps_dense, params_dense=params_dense)
    done = res.dropna(subset=["ppl"])          # an allocation whose budget was infeasible has no cell
    name = lambda r: metric_key(f"{r.method}_{int(round(r.ratio * 100))}")   # noqa: E731
    out.update({f"ppl_{name(r)}": r.ppl for r in done.itertuples()})
    out.update({f"params_{name(r)}": r.params for r in done.itertuples()})
    out.update({f"ppl_ratio_{name(r)}": r.ppl / ppl_dense for r in done.itertuples()})
    seed_ratio = float(res[(res.method == "energy_gap") & np.isclose(res.ratio, best.ratio)].ppl.iloc[0] / ppl_dense)
    cos = {m: float(mini.query(f"method == '{m}' and ratio == 0.2").mean_cosine.iloc[0]) for m in ("plain", "svdllm")}
    if speed is not None:     # the interleaved repeats (`lab.speed_check`) decide "faster", not one perplexity pass
        out.update({f"speed_{k}_{m}": float(speed.loc[m, k]) for m in speed.index for k in ("median", "min", "max", "spread", "repeats")})
        out["speed_repeats"] = float(speed["repeats"].min())
        out["speed_best_20_median"] = float(speed.loc[best.method, "median"] / speed.loc["dense", "median"])
        a, b = speed.loc["asvd"], speed.loc["svdllm"]
        out["speed_asvd_over_svdllm"] = float(a["median"] / b["median"])
        out["speed_same_rank_within_noise"] = float(abs(a["median"] - b["median"]) <= max(a["max"] - a["min"], b["max"] - b["min"]))
    return dict(out, **{f"tokens_per_s_{best.method}_20": float(best.tokens_per_s)}, best_ppl_ratio_20=float(best.ppl / ppl_dense),
                seed_method_ppl_ratio_20=seed_ratio, ppl_best_20_finetuned=ppl_ft, ppl_ratio_best_20_finetuned=ppl_ft / ppl_dense, finetune_steps=ft_steps,
                minilm_cos_plain_20=cos["plain"], minilm_cos_svdllm_20=cos["svdllm"], eval_tokens=eval_tokens, calib_tokens=calib_tokens,
                speed_best_20=float(best.tokens_per_s) / tps_dense, ppl_min_compressed=float(done.ppl.min()), target_ppl_ratio=TARGET,
                ratio_best=float(best.ratio), params_best_20=float(best.params), ppl_best_20=float(best.ppl), anchor_svdllm_ppl_ratio_20=1.40)


def claims(m: dict, best: pd.Series) -> list[tuple[str, str, str, str]]:
    """Seed 001's three claims and the lab's 1.30× target."""
    ratio, seed_ratio = m["best_ppl_ratio_20"], m["seed_method_ppl_ratio_20"]
    if "front_rss_after_20" in m:     # resident memory of the frontier's saved model (frontier_metrics), in a fresh process
        less = m["front_rss_after_20"] < m["dense_rss_after"]
        memory = (f"; {'supported' if less else 'refuted'} on memory (the frontier's saved model)",
                  f"; resident memory after one forward {m['front_rss_after_20']:.0f} MB vs dense {m['dense_rss_after']:.0f} MB")
    else:
        memory = ("; memory not measured (parameters only)", "; runtime memory is not measured here")
    return [
        ("Calabi inference is faster and uses less memory", "seed 001", _speed_verdict(m, best) + memory[0],
         _speed_evidence(m, best) + f"; {best.params / 1e6:.1f}M vs {m['params_dense'] / 1e6:.1f}M linear parameters" + memory[1]),
        ("Compression maintains the shape of the transformation (quality preserved)", "seed 001",
         "supported" if seed_ratio <= TARGET else "refuted",
         f"the seed's energy_gap method: {seed_ratio:.2f}× dense perplexity at {best.ratio:.0%}; best method ({best.method}) {ratio:.2f}×"),
        ("Low-rank projection denoises the weights", "seed 001", "supported" if m["ppl_min_compressed"] < m["ppl_dense"] else "refuted",
         f"lowest perplexity of any compressed cell {m['ppl_min_compressed']:.2f} vs dense {m['ppl_dense']:.2f}"),
        ("Best uniform-rank method at 20% within 1.30× dense perplexity (SVD-LLM: 1.40× on LLaMA-7B)", "lab target (issue 6)",
         "met" if ratio <= TARGET else "not met", f"{best.method}: {ratio:.2f}× ({best.ppl:.2f} vs {m['ppl_dense']:.2f})"),
    ]


def _speed_verdict(m: dict, best: pd.Series) -> str:
    """Faster when the factored model's slowest repeat beats dense's fastest; slower when its fastest
    is below dense's slowest; else within noise. Without the repeats: one pass, said so."""
    if "speed_repeats" not in m:
        return ("supported on speed" if m["speed_best_20"] > 1 else "refuted on speed") + " (one timed pass)"
    f, d = best.method, "dense"
    if m[f"speed_min_{f}"] > m[f"speed_max_{d}"]:
        return "supported on speed"
    if m[f"speed_max_{f}"] < m[f"speed_min_{d}"]:
        return "refuted on speed"
    return "inconclusive on speed (within noise)"


def _speed_evidence(m: dict, best: pd.Series) -> str:
    if "speed_repeats" not in m:
        return f"at {best.ratio:.0%}: {m['speed_best_20']:.2f}× dense tokens/s ({best.method}), one timed pass"
    f = best.method
    same = "equal within noise" if m["speed_same_rank_within_noise"] else "apart by more than their spread"
    return (f"at {best.ratio:.0%}: {best.method} {m[f'speed_median_{f}']:.0f} tokens/s [{m[f'speed_min_{f}']:.0f}, "
            f"{m[f'speed_max_{f}']:.0f}] vs dense {m['speed_median_dense']:.0f} [{m['speed_min_dense']:.0f}, {m['speed_max_dense']:.0f}] "
            f"(median [min, max] of {m['speed_repeats']:.0f} interleaved repeats), {m['speed_best_20_median']:.2f}×; ASVD and SVD-LLM "
            f"keep the same ranks and time {m['speed_asvd_over_svdllm']:.2f}× apart ({same})")


def verdict(m: dict, best: pd.Series) -> str:
    ratio = m["best_ppl_ratio_20"]
    return (f"At {best.ratio:.0%} of decoder-linear parameters removed, the best method ({best.method}) reaches {ratio:.2f}× dense perplexity "
            f"({'within' if ratio <= TARGET else 'outside'} the {TARGET:.2f}× target) and the seed's energy+gap method "
            f"{m['seed_method_ppl_ratio_20']:.2f}×; {m['finetune_steps']} fine-tuning steps bring the best to "
            f"{m['ppl_best_20_finetuned'] / m['ppl_dense']:.2f}×. Speed: {_speed_evidence(m, best)}: {_speed_verdict(m, best)}.")


def frontier_verdict(m: dict, front: pd.Series, recovered: str) -> str:
    """Issue 29's sentence of the verdict, from `frontier_metrics`."""
    key = metric_key(recovered)
    rec = m["front_recovered_ppl_ratio_20"]
    levers = "; ".join(f"{new} {m[f'ppl_{metric_key(new)}_20'] / m['ppl_dense']:.2f}× against {old} {m[f'ppl_{old}_20'] / m['ppl_dense']:.2f}×"
                       for new, old in LEVERS if f"ppl_{metric_key(new)}_20" in m and f"ppl_{old}_20" in m)
    return (f"Issue 29's levers at 20%: {levers or 'none measured'}. The frontier, the lowest perplexity of all methods at 20%, is "
            f"{front.method}: {m['front_ppl_ratio_20']:.2f}× dense perplexity, "
            f"{rec:.2f}× after {m['front_recover_steps']:.0f} distillation steps ({'within' if rec <= TARGET else 'outside'} "
            f"the {TARGET:.2f}× target), runs at {m['front_speed_20']:.2f}× dense tokens/s, and scores {m[f'em_{key}']:.3f} exact match "
            f"against dense {m['em_dense']:.3f} ({m[f'em_diff_{key}']:+.3f} [{m[f'em_diff_{key}_lo']:+.3f}, {m[f'em_diff_{key}_hi']:+.3f}]).")


def task_table(names: list[str], em: dict) -> pd.DataFrame:
    """Exact match per task (rows, then all tasks pooled) for each model (columns)."""
    n = len(em["dense"]) // len(names)
    table = pd.DataFrame({t: {k: float(v[i * n:(i + 1) * n].mean()) for k, v in em.items()} for i, t in enumerate(names)}).T
    table.loc[f"all ({len(em['dense'])} items)"] = {k: float(v.mean()) for k, v in em.items()}
    return table

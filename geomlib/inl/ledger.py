"""Notebook 13's figures, metrics, claims-ledger rows and verdict, computed from its results (so the
wording follows the numbers of each run, never the other way round)."""
from __future__ import annotations

import torch

from llgbm.core import stats

from .lab import iteration_frame
from .tables import sharing_counts


SEED_SPEEDUP = 3.0        # the seed: 3× faster inference with adaptive early stopping
LOSS_TOL = 0.01           # "zero accuracy loss": within 0.01 nats of fixed K
EMB_RATIO = 0.14          # "-87% embedding parameters": at most 0.13 (rounded up) of the full embedding
MEM_RATIO = 0.35          # "-65% training memory"
CAPACITY_MARGIN = 0.02    # "fewer parameters for the same capacity": INL lower by more than this at equal parameters
SIZES_TOL = 0.10          # measured parameters within ±10% of the README's "Real Params"
SIZES_VOCAB = 50000       # the vocabulary the sizes are counted at (the seed's)
# CAPACITY_MARGIN: the INL − transformer loss difference must lie below −margin to count as a win


def claims(m: dict) -> list[tuple[str, str, str]]:
    """The claims-ledger rows (claim, verdict, evidence) from notebook 13's metrics."""
    K, it = int(m["max_iterations"]), m["mean_iterations_adaptive"]
    stopped = it < K - 1e-9
    fast = min(m["speedup_adaptive_b1"], m["speedup_adaptive_b8"])
    mem = m["peak_mem_mb_train_inl"] / m["peak_mem_mb_train_transformer"]
    d_loss = m["val_loss_adaptive_minus_fixed"]
    sizes = [s for s in ("small", "medium", "large") if f"params_size_{s}" in m]
    off = {s: m[f"params_size_{s}"] / m[f"params_readme_{s}"] - 1 for s in sizes}
    return [
        ("3× faster inference with adaptive early stopping", "supported" if fast >= SEED_SPEEDUP else "refuted",
         f"{m['speedup_adaptive_b1']:.2f}× at batch 1, {m['speedup_adaptive_b8']:.2f}× at batch 8 (KV cache, tokens/s); mean "
         f"{it:.2f} of {K} iterations; measured ceiling (every token at adaptive's minimum of {m['min_iterations_adaptive']:.0f}, no "
         f"checks) {m['measured_ceiling_b1']:.2f}× / {m['measured_ceiling_b8']:.2f}×; "
         f"a tol calibrated to stop steps ({m['tol_calibrated']:.3g}): {m['mean_iterations_calibrated']:.2f} iterations, "
         f"{m['speedup_calibrated_b1']:.2f}× / {m['speedup_calibrated_b8']:.2f}×, {m['val_loss_calibrated_minus_fixed']:+.4f} nats"),
        ("Adaptive stopping at zero accuracy loss", ("supported" if abs(d_loss) <= LOSS_TOL else "refuted") if stopped
         else "vacuous: no token stopped early", f"validation loss {d_loss:+.4f} nats vs fixed K={K}; a smaller fixed K: "
         f"{m['val_loss_small_k_minus_fixed']:+.4f} nats at {m['speedup_small_k_b1']:.2f}× speed (batch 1)"),
        ("-87% embedding parameters (low-rank embeddings)", "supported (parameters)" if m["embedding_params_ratio_seed_3b"] <= EMB_RATIO
         else "refuted", f"{1 - m['embedding_params_ratio_seed_3b']:.0%} fewer at the seed's 3B size (vocab 50k), "
         f"{1 - m['embedding_params_ratio']:.0%} here; quality cost {m['val_loss_lowrank_embedding_minus_full']:+.3f} nats (transformer)"),
        ("-65% training memory", "supported" if mem <= MEM_RATIO else "refuted",
         f"INL peak {m['peak_mem_mb_train_inl']:.0f} MB vs transformer {m['peak_mem_mb_train_transformer']:.0f} MB ({mem:.2f}×); "
         f"INL with gradient checkpointing {m['peak_mem_mb_train_inl_checkpointing']:.0f} MB"),
        ("Deterministic training", "supported" if m["deterministic"] == 1 else "refuted",
         "two trainings with one seed " + ("gave bit-identical weights" if m["deterministic"] == 1 else "differ")),
        ("Fewer parameters for the same capacity (README: 20-30%)", _capacity(m),
         f"at equal parameters and tokens, {m['n_seeds']:.0f} seeds each: INL {m['val_loss_inl_mean']:.3f} "
         f"[{m['val_loss_inl_ci_low']:.3f}, {m['val_loss_inl_ci_high']:.3f}] vs transformer {m['val_loss_transformer_mean']:.3f} "
         f"[{m['val_loss_transformer_ci_low']:.3f}, {m['val_loss_transformer_ci_high']:.3f}] nats (95% CIs over seeds); INL − "
         f"transformer {m['val_loss_inl_minus_transformer']:+.3f} [{m['val_loss_inl_minus_transformer_ci_low']:+.3f}, "
         f"{m['val_loss_inl_minus_transformer_ci_high']:+.3f}]; {m['train_seconds_inl']:.0f} s vs "
         f"{m['train_seconds_transformer']:.0f} s of training per run"),
        ("-96% controller parameters (shared controllers)",
         "refuted as built (no controller is shared)" if m["sharing_controller_ratio_built"] >= 1 else "supported",
         f"at the seed's 3B size each of the {m['sharing_layers']:.0f} blocks calls its own controller "
         f"({m['sharing_controllers_distinct']:.0f} distinct, {m['sharing_controller_params'] / 1e6:.1f}M parameters); one controller "
         f"shared by all would hold {m['sharing_controller_ratio_if_shared']:.1%} of that, the claimed "
         f"{m['sharing_claim_controller']:.0%}, but no block calls a shared one"),
        ("-98% equilibrium parameters (hierarchical equilibrium)",
         "supported (parameters)" if m["sharing_equilibrium_ratio"] <= m["sharing_claim_equilibrium"] + 0.005 else "refuted",
         f"μ is one global value plus one offset per group of dimensions in each layer: {m['sharing_equilibrium_params']:,.0f} "
         f"parameters against {m['sharing_equilibrium_params_per_dim']:,.0f} for one μ per dimension ({m['sharing_equilibrium_ratio']:.1%}) "
         f"at the 3B size: {m['sharing_equilibrium_saved']:,.0f} parameters saved in a {m['params_size_3b'] / 1e9:.1f}B model"),
        ("The README's \"Real Params\" per size (small 30M, medium 80M, large 220M)",
         "refuted" if any(abs(v) > SIZES_TOL for v in off.values()) else "supported",
         f"built at vocab {m['sizes_vocab']:,.0f}: " + ", ".join(f"{s} {m[f'params_size_{s}'] / 1e6:.1f}M vs {m[f'params_readme_{s}'] / 1e6:.0f}M "
                                               f"({off[s]:+.0%})" for s in sizes)),
    ]


def _capacity(m: dict) -> str:
    """INL beats the transformer at equal parameters when INL − transformer's CI lies below −margin;
    refuted when it lies above it; else inconclusive."""
    lo, hi = m["val_loss_inl_minus_transformer_ci_low"], m["val_loss_inl_minus_transformer_ci_high"]
    return "supported" if hi < -CAPACITY_MARGIN else "refuted" if lo > -CAPACITY_MARGIN else "inconclusive"


def verdict(m: dict, margin: float = 0.5) -> str:
    """One paragraph that the numbers support. A model within `margin` nats of the unigram entropy has
    not really learned, and the verdict says so first: its other comparisons mean little."""
    gaps = {k: m["unigram_entropy"] - m[f"val_loss_{k}"] for k in ("inl", "transformer")}
    learned = all(g >= margin for g in gaps.values())
    head = (f"Both models learned ({min(gaps.values()):.2f}+ nats below the unigram entropy {m['unigram_entropy']:.2f})."
            if learned else
            f"**Not every model learned**: {', '.join(f'{k} {g:+.2f}' for k, g in gaps.items())} nats below the unigram entropy "
            f"{m['unigram_entropy']:.2f} (the floor asks for {m['learned_margin']}); the comparisons below are not evidence.")
    ceiling = max(m["measured_ceiling_b1"], m["measured_ceiling_b8"])
    reach = (f": the seed's {SEED_SPEEDUP:.0f}× is beyond what this design reaches here." if ceiling < SEED_SPEEDUP else ".")
    fires = m["mean_iterations_adaptive"] < m["max_iterations"] - 1e-9
    within = int(m["modes_within_flop_ratio"])
    return (f"{head} At equal parameters and tokens the INL model reaches {m['val_loss_inl_mean']:.3f} "
            f"[{m['val_loss_inl_ci_low']:.3f}, {m['val_loss_inl_ci_high']:.3f}] nats against the transformer's "
            f"{m['val_loss_transformer_mean']:.3f} [{m['val_loss_transformer_ci_low']:.3f}, {m['val_loss_transformer_ci_high']:.3f}] "
            f"(95% CIs over {m['n_seeds']:.0f} seeds; {_capacity(m)} that INL does more per parameter), taking {m['train_seconds_inl'] / m['train_seconds_transformer']:.1f}× "
            f"its training time" + (f" (with the seed's embedding initialisation the same transformer reaches "
                                    f"{m['val_loss_transformer_seed_init']:.3f})" if "val_loss_transformer_seed_init" in m else "") +
            f". Adaptive stopping used {m['mean_iterations_adaptive']:.2f} of {int(m['max_iterations'])} "
            f"iterations and ran at {m['speedup_adaptive_b1']:.2f}× (batch 1) / {m['speedup_adaptive_b8']:.2f}× (batch 8) the "
            f"fixed-K speed, against a measured ceiling of {m['measured_ceiling_b1']:.2f}× / {m['measured_ceiling_b8']:.2f}× (fixed K at "
            f"adaptive's minimum){reach} The FLOP ratio does not bound wall time here: {within} of "
            f"{int(m['n_modes'])} modes' speed-ups stay within it at both batch sizes (per-iteration costs that are not matmul FLOPs). "
            f"The seed's tolerance (‖Δx‖ < {m['tol_seed']:g}) "
            + ("stops some tokens early" if fires else "never fires here") + f": the median step at the first check is "
            f"{m['tol_calibrated']:.3g}. This run took {m['notebook_seconds'] / 60:.1f} min (quick budget: "
            f"{m['budget_seconds'] / 60:.0f} min cold), {m['train_seconds_all']:.0f} s of it training.")


def seed_metrics(seeds) -> dict[str, float]:
    """From `lab.seed_table`: per headline model its mean validation loss over seeds with a 95% CI
    (seeds resampled) and each seed's value, and INL − transformer with its CI (each model's seeds
    resampled on their own)."""
    runs = {m: g.sort_values("seed").val_loss.to_numpy()[:, None] for m, g in seeds.groupby("model")}
    out = {"n_seeds": float(seeds.seed.nunique())}
    for m, x in runs.items():
        iv = stats.hierarchical_bootstrap({m: x}, (1,), lambda v, m=m: v[m])
        out.update({f"val_loss_{m}_mean": iv.mean, f"val_loss_{m}_ci_low": iv.lo, f"val_loss_{m}_ci_high": iv.hi})
        out.update({f"val_loss_{m}_seed{r.seed}": r.val_loss for r in seeds[seeds.model == m].itertuples()})
    d = stats.hier_difference(runs["inl"], runs["transformer"], (1,))
    return out | dict(val_loss_inl_minus_transformer=d.mean, val_loss_inl_minus_transformer_ci_low=d.lo,
                      val_loss_inl_minus_transformer_ci_high=d.hi)


def collect(final, modes, mem: dict, params, entropy: float, emb: dict, init_ratio: dict, same_seed: bool,
            ceiling: dict, steps: int, tol_calibrated: float, *, sizes=None, tol_seed: float, min_iterations: int,
            budget_seconds: float, seeds=None) -> dict[str, float]:
    """notebook 13's metrics.json from its tables: `final` (per model: val_loss, bits per byte, seconds),
    `modes` (rows: fixed K, the seed's batch stop, the per-token stop at the seed's and at a calibrated
    tol, a smaller fixed K), `mem` (per
    model, the memory run's report), `params` (per model), and the scalars."""
    fixed, adaptive, token, calibrated, small, floor = (modes.iloc[i] for i in range(6))
    within = (modes["within FLOP ratio b1"] & modes["within FLOP ratio b8"]).astype(bool)
    out = dict(params_inl=params["inl"], params_transformer=params["transformer"], unigram_entropy=entropy, steps=steps,
               max_iterations=fixed.max_iterations, deterministic=int(same_seed), tol_calibrated=tol_calibrated, tol_seed=tol_seed,
               speedup_ceiling=ceiling["ceiling"], iteration_flop_share=ceiling["iteration_share"], min_iterations_adaptive=min_iterations,
               measured_ceiling_b1=floor["speed-up b1"], measured_ceiling_b8=floor["speed-up b8"], n_modes=len(modes),
               modes_within_flop_ratio=int(within.sum()), budget_seconds=budget_seconds, learned_margin=0.5,
               train_seconds_all=float(final.seconds.sum()), seed_speedup_claim=SEED_SPEEDUP, loss_tol=LOSS_TOL,
               emb_ratio_claim=EMB_RATIO, mem_ratio_claim=MEM_RATIO, sizes_tol=SIZES_TOL)
    if seeds is not None:
        out.update(seed_metrics(seeds))
    out.update({f"sharing_{k}": v for k, v in sharing_counts("3B", SIZES_VOCAB).items()}, sharing_claim_controller=0.04,
               sharing_claim_equilibrium=0.02)
    out["sharing_equilibrium_saved"] = out["sharing_equilibrium_params_per_dim"] - out["sharing_equilibrium_params"]
    if sizes is not None:      # parameter_table (millions) at vocab 50k: the built size against the README's
        out["sizes_vocab"] = SIZES_VOCAB
        out["params_size_3b"] = sizes.loc["3B", "total"] * 1e6
        for s in ("small", "medium", "large"):
            out.update({f"params_size_{s}": sizes.loc[s, "total"] * 1e6, f"params_readme_{s}": sizes.loc[s, "README says"] * 1e6,
                        f"params_size_{s}_over_readme": sizes.loc[s, "total"] / sizes.loc[s, "README says"] - 1})
    for name in final.index:
        out[f"val_loss_{name}"] = final.val_loss[name]
        out[f"bits_per_byte_{name}"] = final["bits per byte"][name]
        out[f"train_seconds_{name}"] = final.seconds[name]
    for tag, row in (("adaptive", adaptive), ("token_adaptive", token), ("calibrated", calibrated), ("small_k", small)):
        out[f"val_loss_{tag}_minus_fixed"] = row.val_loss - fixed.val_loss
        out[f"mean_iterations_{tag}"] = row.mean_iterations
        for b in ("b1", "b8"):
            out[f"tokens_per_s_{tag}_{b}"] = row[f"tokens_per_s_{b}"]
            out[f"speedup_{tag}_{b}"] = row[f"tokens_per_s_{b}"] / fixed[f"tokens_per_s_{b}"]
    out.update(tokens_per_s_fixed_b1=fixed.tokens_per_s_b1, tokens_per_s_fixed_b8=fixed.tokens_per_s_b8)
    for name, key in (("inl", "inl"), ("transformer", "transformer"), ("inl + checkpointing", "inl_checkpointing")):
        out[f"peak_mem_mb_train_{key}"] = mem[name]["peak_above_start_mb"]
    out.update(peak_mem_ratio_inl_vs_transformer=out["peak_mem_mb_train_inl"] / out["peak_mem_mb_train_transformer"],
               train_seconds_ratio_inl_vs_transformer=out["train_seconds_inl"] / out["train_seconds_transformer"],
               **{f"below_unigram_{k}": entropy - out[f"val_loss_{k}"] for k in ("inl", "transformer")})
    out.update(embedding_params_ratio=emb["here"], embedding_params_ratio_seed_3b=emb["seed 3B"],
               val_loss_lowrank_embedding_minus_full=final.val_loss["transformer"] - final.val_loss["transformer_full_embedding"],
               embedding_to_position_norm_seed_init=init_ratio["seed"], embedding_to_position_norm_scaled_init=init_ratio["scaled"])
    return out


def loss_figure(hist, entropy: float):
    """Validation loss against training compute and against wall time, side by side."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=True)
    for ax, x in zip(axes, ["train PFLOPs", "seconds"]):
        sns.lineplot(hist, x=x, y="val_loss", hue="model", marker="o", ax=ax)
        ax.axhline(entropy, color="k", ls=":", label="unigram entropy")
    axes[0].set(xlabel="training compute (PFLOP, matmuls)", ylabel="validation loss (nats/token)", title="Which model learns more per FLOP?")
    axes[1].set(xlabel="training wall time (s, 2 CPU cores)", title="…and per second of this machine?")
    axes[1].legend(fontsize=8)
    return fig


def iteration_figure(iters: dict[str, torch.Tensor]):
    """Per-layer histograms of the iterations each token used, one colour per mode."""
    import seaborn as sns
    g = sns.displot(iteration_frame(iters), x="iterations", col="layer", hue="mode", multiple="dodge", discrete=True,
                    shrink=0.8, height=2.8, aspect=0.9, stat="probability", common_norm=False)
    g.set_axis_labels("iterations used (per token)", "share of tokens")
    g.figure.suptitle("How many iterations does each layer use before it stops?", y=1.05)
    return g.figure

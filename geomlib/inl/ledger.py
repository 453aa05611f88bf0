"""Notebook 13's figures, metrics, claims-ledger rows and verdict, computed from its results (so the
wording follows the numbers of each run, never the other way round)."""
from __future__ import annotations

import torch

from .lab import iteration_frame


def claims(m: dict) -> list[tuple[str, str, str]]:
    """The claims-ledger rows (claim, verdict, evidence) from notebook 13's metrics."""
    K, it = int(m["max_iterations"]), m["mean_iterations_adaptive"]
    stopped = it < K - 1e-9
    fast = min(m["speedup_adaptive_b1"], m["speedup_adaptive_b8"])
    mem = m["peak_mem_mb_train_inl"] / m["peak_mem_mb_train_transformer"]
    d_loss = m["val_loss_adaptive_minus_fixed"]
    return [
        ("3× faster inference with adaptive early stopping", "supported" if fast >= 3 else "refuted",
         f"{m['speedup_adaptive_b1']:.2f}× at batch 1, {m['speedup_adaptive_b8']:.2f}× at batch 8 (KV cache, tokens/s); mean "
         f"{it:.2f} of {K} iterations; FLOP ceiling {m['speedup_ceiling']:.2f}× even if every token stopped at the minimum; "
         f"a tol calibrated to stop steps ({m['tol_calibrated']:.3g}): {m['mean_iterations_calibrated']:.2f} iterations, "
         f"{m['speedup_calibrated_b1']:.2f}× / {m['speedup_calibrated_b8']:.2f}×, {m['val_loss_calibrated_minus_fixed']:+.4f} nats"),
        ("Adaptive stopping at zero accuracy loss", ("supported" if abs(d_loss) <= 0.01 else "refuted") if stopped
         else "vacuous: no token stopped early", f"validation loss {d_loss:+.4f} nats vs fixed K={K}; a smaller fixed K: "
         f"{m['val_loss_small_k_minus_fixed']:+.4f} nats at {m['speedup_small_k_b1']:.2f}× speed (batch 1)"),
        ("-87% embedding parameters (low-rank embeddings)", "supported (parameters)" if m["embedding_params_ratio_seed_3b"] <= 0.14
         else "refuted", f"{1 - m['embedding_params_ratio_seed_3b']:.0%} fewer at the seed's 3B size (vocab 50k), "
         f"{1 - m['embedding_params_ratio']:.0%} here; quality cost {m['val_loss_lowrank_embedding_minus_full']:+.3f} nats (transformer)"),
        ("-65% training memory", "supported" if mem <= 0.35 else "refuted",
         f"INL peak {m['peak_mem_mb_train_inl']:.0f} MB vs transformer {m['peak_mem_mb_train_transformer']:.0f} MB ({mem:.2f}×); "
         f"INL with gradient checkpointing {m['peak_mem_mb_train_inl_checkpointing']:.0f} MB"),
        ("Deterministic training", "supported" if m["deterministic"] == 1 else "refuted",
         "two trainings with one seed " + ("gave bit-identical weights" if m["deterministic"] == 1 else "differ")),
        ("Fewer parameters for the same capacity (README: 20-30%)",
         "supported" if m["val_loss_inl"] < m["val_loss_transformer"] - 0.02 else "refuted",
         f"at equal parameters and tokens: INL {m['val_loss_inl']:.3f} vs transformer {m['val_loss_transformer']:.3f} nats, "
         f"in {m['train_seconds_inl']:.0f} s vs {m['train_seconds_transformer']:.0f} s of training"),
    ]


def verdict(m: dict, margin: float = 0.5) -> str:
    """One paragraph that the numbers support. A model within `margin` nats of the unigram entropy has
    not really learned, and the verdict says so first: its other comparisons mean little."""
    gaps = {k: m["unigram_entropy"] - m[f"val_loss_{k}"] for k in ("inl", "transformer")}
    learned = all(g >= margin for g in gaps.values())
    head = (f"Both models learned ({min(gaps.values()):.2f}+ nats below the unigram entropy {m['unigram_entropy']:.2f})."
            if learned else
            f"**Not every model learned**: {', '.join(f'{k} {g:+.2f}' for k, g in gaps.items())} nats below the unigram entropy "
            f"{m['unigram_entropy']:.2f} (the floor asks for {margin}); the comparisons below are not evidence.")
    reach = ": the seed's 3× is beyond what this design can reach." if m["speedup_ceiling"] < 3 else "."
    return (f"{head} At equal parameters and tokens the INL model reaches {m['val_loss_inl']:.3f} nats against the "
            f"transformer's {m['val_loss_transformer']:.3f}, taking {m['train_seconds_inl'] / m['train_seconds_transformer']:.1f}× "
            f"its training time" + (f" (with the seed's embedding initialisation the same transformer reaches "
                                    f"{m['val_loss_transformer_seed_init']:.3f})" if "val_loss_transformer_seed_init" in m else "") +
            f". Adaptive stopping used {m['mean_iterations_adaptive']:.2f} of {int(m['max_iterations'])} "
            f"iterations and ran at {m['speedup_adaptive_b1']:.2f}× (batch 1) / {m['speedup_adaptive_b8']:.2f}× (batch 8) the "
            f"fixed-K speed, against a FLOP ceiling of {m['speedup_ceiling']:.2f}×{reach} The seed's tolerance (‖Δx‖ < 1e-3) "
            f"never fires here: the median step at the first check is {m['tol_calibrated']:.3g}. This run took "
            f"{m['notebook_seconds'] / 60:.1f} min (quick budget: 10 min cold), {sum(v for k, v in m.items() if k.startswith('train_seconds_')):.0f} s of it training.")


def collect(final, modes, mem: dict, params, entropy: float, emb: dict, init_ratio: dict, same_seed: bool,
            ceiling: dict, steps: int, tol_calibrated: float) -> dict[str, float]:
    """notebook 13's metrics.json from its tables: `final` (per model: val_loss, bits per byte, seconds),
    `modes` (rows: fixed K, the seed's batch stop, the per-token stop at the seed's and at a calibrated
    tol, a smaller fixed K), `mem` (per
    model, the memory run's report), `params` (per model), and the scalars."""
    fixed, adaptive, token, calibrated, small = (modes.iloc[i] for i in range(5))
    out = dict(params_inl=params["inl"], params_transformer=params["transformer"], unigram_entropy=entropy, steps=steps,
               max_iterations=fixed.max_iterations, deterministic=int(same_seed), tol_calibrated=tol_calibrated,
               speedup_ceiling=ceiling["ceiling"], iteration_flop_share=ceiling["iteration_share"])
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

"""Notebook 13's tables and long-form frames, from its runs: the validation curves, the iterations each
token used, the models' parameters by part and each model's last validation point."""
from __future__ import annotations

import math

import torch

from .model import INLConfig, IntegratorLanguageModel, create_model, parameter_breakdown


def history_frame(runs: dict[str, dict]):
    """One long table of every run's validation curve: model, step, tokens, training PFLOPs, seconds, loss."""
    import pandas as pd
    rows = [dict(model=name, **h) for name, r in runs.items() for h in r["history"]]
    df = pd.DataFrame(rows)
    df["train PFLOPs"] = df.pop("train_flops") / 1e15
    return df


def iteration_frame(iters: dict[str, torch.Tensor]):
    """(mode, layer, iterations) per token and layer, for the per-layer histograms."""
    import pandas as pd
    return pd.concat([pd.DataFrame({"mode": mode, "layer": layer, "iterations": it[layer].numpy()})
                      for mode, it in iters.items() for layer in range(it.shape[0])], ignore_index=True)


def parts_table(configs: dict[str, INLConfig]):
    """Parameters by part (and in all) of each configured model."""
    import pandas as pd

    rows = {}
    for name, c in configs.items():
        parts = parameter_breakdown(IntegratorLanguageModel(c))
        rows[name] = {**parts, "total": sum(parts.values())}
    return pd.DataFrame(rows).T


def final_table(hist, entropy: float, bytes_per_token: float):
    """Each model's last validation point, with bits per byte and its margin below the unigram entropy."""
    final = hist.sort_values("step").groupby("model").last()
    final["bits per byte"] = final.val_loss / math.log(2) / bytes_per_token
    final["below unigram (nats)"] = entropy - final.val_loss
    return final


def sharing_counts(size: str = "3B", vocab_size: int = 50000) -> dict[str, float]:
    """The parameters behind the seed's "-96% controller" and "-98% equilibrium" claims, counted on
    create_model(size) as built (meta device): the blocks' controllers (each block calls its own),
    what one controller shared by every block would hold, and the equilibrium μ (one global value
    plus one offset per group of dimensions, per layer) against one μ per dimension per layer."""
    with torch.device("meta"):
        m = create_model(size, vocab_size)
    inls = [b.inl for b in m.layers if hasattr(b, "inl")]
    ctrl = [sum(p.numel() for p in i.controller.parameters()) for i in inls]
    eq = sum(i.mu_global.numel() + i.mu_offsets.numel() for i in inls)
    distinct = len({id(i.controller) for i in inls})
    return dict(layers=len(inls), controllers_distinct=distinct, controller_params=sum(ctrl), controller_params_one=ctrl[0],
                controller_ratio_built=distinct / len(inls), controller_ratio_if_shared=ctrl[0] / sum(ctrl),
                equilibrium_params=eq, equilibrium_params_per_dim=len(inls) * m.cfg.d_model,
                equilibrium_ratio=eq / (len(inls) * m.cfg.d_model))

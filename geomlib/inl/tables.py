"""Notebook 13's tables and long-form frames, from its runs: the validation curves, the iterations each
token used, the models' parameters by part and each model's last validation point."""
from __future__ import annotations

import math

import torch

from .model import INLConfig, IntegratorLanguageModel, parameter_breakdown


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

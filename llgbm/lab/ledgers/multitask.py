"""Notebook 04's metrics and verdict: under λ_w·L_weight + λ_d·L_delta, do both terms fall, and how
close is the generated delta to the teachers' on training and held-out tasks."""
from __future__ import annotations

import numpy as np
import pandas as pd

from llgbm.core import stats
from llgbm.lab.ledgers import Entry


def loss_terms(history: dict) -> pd.DataFrame:
    """Mean of each term over the first and the last tenth of the steps, and the relative change."""
    hist = pd.DataFrame({k: history[k] for k in ("loss", "weight", "delta")})
    k = max(1, len(hist) // 10)
    terms = pd.DataFrame({"first steps": hist.head(k).mean(), "last steps": hist.tail(k).mean()})
    terms["change"] = terms["last steps"] / terms["first steps"] - 1
    return terms


def delta_cosines(fit: dict, ev: dict, heldout: list[str]) -> pd.Series:
    return pd.Series({"training tasks (fit)": np.mean(list(fit.values())),
                      "held-out tasks": stats.task_delta_cos(ev, heldout).mean()}, name="cos(Δ̂, Δ)")


def entry(history: dict, terms: pd.DataFrame, cosines: pd.Series, ev: dict, heldout: list[str]) -> Entry:
    steps = len(history["loss"])
    m = dict(steps=steps, seconds_per_step=float(np.mean(history["seconds"])),
             weight_loss_first=terms.loc["weight", "first steps"], weight_loss_last=terms.loc["weight", "last steps"],
             delta_loss_first=terms.loc["delta", "first steps"], delta_loss_last=terms.loc["delta", "last steps"],
             train_delta_cos=cosines.iloc[0], heldout_delta_cos=cosines.iloc[1],
             heldout_acc=float(np.mean([ev[t]["correct"].mean() for t in heldout])))
    both = terms.loc["weight", "change"] < 0 and terms.loc["delta", "change"] < 0
    verdict = (f"Over {steps} steps the weight term went {terms.loc['weight', 'first steps']:.3f} → {terms.loc['weight', 'last steps']:.3f} "
               f"and the delta term {terms.loc['delta', 'first steps']:.3f} → {terms.loc['delta', 'last steps']:.3f} "
               f"({'both fall' if both else 'they do not both fall'}). The generated delta reaches cos {cosines.iloc[0]:.3f} with the "
               f"teachers' on training tasks and {cosines.iloc[1]:.3f} on held-out tasks.")
    return Entry(m, [], verdict)

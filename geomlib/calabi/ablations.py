"""Two parts of seed 001's mechanism, each switched off at one compression ratio (notebook 11):

- the reconstruction bias (W − W')·E[x] folded into the bias: with and without it, for the seed's
  energy + gap method and for the best method of the grid;
- the energy + spectral-gap rank rule against uniform ranks at equal parameters: plain truncated SVD
  of the same weights, with the same bias, at the single ratio whose parameter count matches the
  energy + gap model's (`uniform_ratio`).

Every variant is scored per evaluation window (mean next-token NLL), so a difference between two
variants gets a paired 95% CI over the windows. A compression is deterministic: there are no seeds,
and the CI bounds the window-to-window noise of the text only (labelled so)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from geomlib.calabi.lab import CalabiConfig, cached, measure_key
from geomlib.calabi.svd import OptimizedCYModelUtils, break_even_rank, rank_for_ratio
from llgbm.core import models, stats

SEED_METHOD = "energy_gap"


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Mean next-token NLL (nats per token) of each window, scored from its start."""
    out = []
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        out += nll.mean(1).tolist()
    return out


def factored_count(model: nn.Module, ratio: float, min_features: int, bias: bool = True) -> int:
    """Linear parameters (lm_head excluded) after factorising every layer `replace_linear_layers` would
    at `ratio`: k·(m + n + 1) per factorised layer, plus a bias of m where it has one or gets the
    reconstruction bias; layers the ratio cannot shrink stay dense."""
    total = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or name.endswith("lm_head"):
            continue
        m, n, has_bias = mod.out_features, mod.in_features, mod.bias is not None
        k = rank_for_ratio(m, n, ratio)
        if min(m, n) >= min_features and k < break_even_rank(m, n):
            total += k * (m + n + 1) + (m if bias or has_bias else 0)
        else:
            total += m * n + (m if has_bias else 0)
    return total


def uniform_ratio(model: nn.Module, params: int, min_features: int, bias: bool = True) -> float:
    """The smallest uniform ratio whose factorised model has at most `params` linear parameters
    (bisection: the count falls as the ratio grows)."""
    lo, hi = 0.0, 0.999
    if factored_count(model, hi, min_features, bias) > params:
        raise ValueError(f"no uniform ratio below 1 reaches {params} linear parameters")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if factored_count(model, mid, min_features, bias) > params else (lo, mid)
    return hi


def ablations(model_name: str, dense, calib, eval_ids: torch.Tensor, cfg: CalabiConfig, best_method: str,
              ratio: float = 0.2) -> pd.DataFrame:
    """One row per variant at `ratio` (uniform ranks at the energy + gap model's parameters): variant,
    method, bias, ratio, params, ppl and `nll` (the per-window list). Each variant is cached."""
    decompositions: dict = {}

    def variant(method: str, bias: bool, r: float) -> dict:
        def run():
            model, _ = models.load_model(model_name, device="cpu")
            OptimizedCYModelUtils.replace_linear_layers(model, r, min_features=cfg.min_features, method=method, calib=calib,
                                                        decompositions=decompositions, bias_correction=bias)
            return dict(params=OptimizedCYModelUtils.count_parameters(model), nll=window_nll(model, eval_ids))
        row = cached("ablation", dict(measure_key(model_name, cfg), method=method, bias=bias, ratio=float(r)), run)
        return dict(method=method, bias=bias, ratio=float(r), params=row["params"], nll=row["nll"],
                    ppl=float(np.exp(np.mean(row["nll"]))))

    rows = []
    for method in dict.fromkeys([SEED_METHOD, best_method]):
        for bias in (True, False):
            rows.append(dict(variant=f"{method}, bias {'on' if bias else 'off'}", **variant(method, bias, ratio)))
    r_uniform = uniform_ratio(dense, rows[0]["params"], cfg.min_features)
    rows.append(dict(variant=f"uniform ranks at {SEED_METHOD}'s parameters, bias on", **variant("plain", True, r_uniform)))
    return pd.DataFrame(rows)


def _pair(abl: pd.DataFrame, worse: str, better: str) -> tuple[float, float, float]:
    """NLL(worse) − NLL(better), nats per token, mean over windows with a paired 95% CI over windows."""
    pick = abl.set_index("variant")["nll"]
    return stats.paired_diff_ci(pick[worse], pick[better])


def metrics(abl: pd.DataFrame) -> dict[str, float]:
    """Perplexity and parameters of every variant; the paired window differences that decide the rows."""
    out = {}
    for r in abl.itertuples():
        key = "uniform" if r.method == "plain" else f"{r.method}_bias_{'on' if r.bias else 'off'}"
        out |= {f"abl_ppl_{key}": r.ppl, f"abl_params_{key}": float(r.params), f"abl_ratio_{key}": r.ratio}
    names = list(abl.variant)
    for method in dict.fromkeys(abl.method[abl.method != "plain"]):
        d = _pair(abl, f"{method}, bias off", f"{method}, bias on")
        out |= dict(zip((f"abl_bias_gain_{method}", f"abl_bias_gain_{method}_lo", f"abl_bias_gain_{method}_hi"), d))
    d = _pair(abl, names[-1], f"{SEED_METHOD}, bias on")
    out |= dict(zip(("abl_rule_gain", "abl_rule_gain_lo", "abl_rule_gain_hi"), d))
    return out | {"abl_windows": float(len(abl.nll.iloc[0]))}


def claims(m: dict) -> list[tuple[str, str, str, str]]:
    """The two rows: the reconstruction bias helps; the energy + gap rule beats uniform ranks at equal
    parameters. Each verdict reads its paired CI over windows (positive: the seed's part helps)."""
    def verdict(key: str) -> str:
        return stats.comparison_verdict({"per-window NLL": (m[f"{key}_lo"], m[f"{key}_hi"])})

    methods = [k[len("abl_bias_gain_"):] for k in m if k.startswith("abl_bias_gain_") and not k.endswith(("_lo", "_hi"))]
    bias = "; ".join(f"{meth}: perplexity {m[f'abl_ppl_{meth}_bias_off']:.2f} without vs {m[f'abl_ppl_{meth}_bias_on']:.2f} with, "
                     f"NLL gain {m[f'abl_bias_gain_{meth}']:+.4f} [{m[f'abl_bias_gain_{meth}_lo']:+.4f}, "
                     f"{m[f'abl_bias_gain_{meth}_hi']:+.4f}] nats/token" for meth in methods)
    where = (f"at {m[f'abl_ratio_{SEED_METHOD}_bias_on']:.0%} removed; 95% CIs over the {m['abl_windows']:.0f} evaluation windows "
             f"(one deterministic compression: no seeds)")
    rule = (f"{SEED_METHOD} {m[f'abl_params_{SEED_METHOD}_bias_on'] / 1e6:.2f}M linear parameters, perplexity "
            f"{m[f'abl_ppl_{SEED_METHOD}_bias_on']:.2f}; uniform ranks (ratio {m['abl_ratio_uniform']:.3f}) "
            f"{m['abl_params_uniform'] / 1e6:.2f}M, perplexity {m['abl_ppl_uniform']:.2f}; NLL gain of the rule "
            f"{m['abl_rule_gain']:+.4f} [{m['abl_rule_gain_lo']:+.4f}, {m['abl_rule_gain_hi']:+.4f}] nats/token")
    return [
        ("The reconstruction bias (W − W')·E[x] improves the compressed model", "seed 001",
         verdict(f"abl_bias_gain_{SEED_METHOD}"), f"{bias} ({where})"),
        ("The energy + spectral-gap rank rule allocates ranks better than uniform ranks at equal parameters", "seed 001",
         verdict("abl_rule_gain"), f"{rule} ({where})"),
    ]


def table(abl: pd.DataFrame) -> pd.DataFrame:
    """The ablation rows for the report (the per-window NLLs left out)."""
    return abl.drop(columns="nll").set_index("variant")

"""Notebook 12's measurements of seed 003's engineering claims: GQA's KV-cache size and decoding speed
against the same model with full multi-head attention, and the cost of one θ-refinement step, both on
the seed's own base config (`SEED_CONFIG`, random weights: timing needs no training); and the
from-scratch comparison at equal parameters with a learning-rate sweep for both models, so that a
model that "stalls" is not just one trained at a bad rate. Each result is cached under
$LLGBM_HOME/coordinates/ with the settings that change it."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from llgbm.core import cache
from llgbm.core.utils import check_profile, config_hash, llgbm_home, preset_config, seed_everything

from .generation import refine
from .host import SEED_CONFIG, GeometricLlama
from .lab import ScratchConfig, build, train_scratch


@dataclass(frozen=True)
class MeasureConfig:
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)   # the from-scratch sweep (3e-3: the notebook's main runs, cached)
    repeats: int = 5                              # timing repeats (GQA decoding, refinement)
    new_tokens: int = 32                          # greedy tokens decoded per GQA timing
    layers: int | None = None                     # None: the seed's 10 layers (smoke: fewer, same shapes)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "MeasureConfig":
        base = {"smoke": dict(lrs=(3e-3, 1e-2), repeats=1, new_tokens=4, layers=1), "quick": {},
                "full": dict(lrs=(3e-4, 1e-3, 3e-3, 1e-2), repeats=9)}[check_profile(profile)]
        return preset_config(cls, base, overrides)


def _cached(kind: str, key: dict, compute) -> dict:
    return cache.cached(llgbm_home() / "coordinates" / f"{kind}-{config_hash(dict(key, v=1))}.json", compute)


def _seed_config(kv_heads: int | None = None, layers: int | None = None) -> dict:
    conf = copy.deepcopy(SEED_CONFIG)
    if kv_heads is not None:
        conf["base_architecture"]["num_kv_heads"] = kv_heads
    if layers is not None:       # smoke: fewer layers, same shapes
        conf["base_architecture"]["num_layers"] = layers
    return conf


def kv_bytes_per_token(conf: dict) -> int:
    """fp32 bytes the KV cache holds per token: keys and values of every layer's KV heads."""
    b = conf["base_architecture"]
    return 2 * b["num_layers"] * b["num_kv_heads"] * b["head_dim"] * 4


@torch.no_grad()
def gqa_check(repeats: int = 5, new_tokens: int = 32, prompt: int = 32, batches=(1, 8), layers: int | None = None) -> pd.DataFrame:
    """The seed's base Llama with its GQA (16 query heads, 4 KV heads) against the same model with 16
    KV heads (MHA): parameters, KV-cache bytes per token, and greedy decoding tokens/s with the KV
    cache at each batch size (median, min and max of `repeats`, the two models taking turns)."""
    def measure() -> dict:
        seed_everything(0)
        heads = SEED_CONFIG["base_architecture"]["num_attention_heads"]
        confs = {"GQA (the seed's)": _seed_config(layers=layers), "MHA": _seed_config(kv_heads=heads, layers=layers)}
        models = {k: GeometricLlama(c, modulated=False).eval() for k, c in confs.items()}
        ids = torch.randint(0, SEED_CONFIG["base_architecture"]["vocab_size"], (max(batches), prompt))
        speeds = {(k, b): [] for k in models for b in batches}
        for r in range(repeats + 1):                    # the first round warms up
            for b in batches:
                for k, m in models.items():
                    t0 = time.perf_counter()
                    m.generate(ids[:b], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                    if r:
                        speeds[k, b].append(b * new_tokens / (time.perf_counter() - t0))
        return {k: dict(params=sum(p.numel() for p in m.parameters()), kv_bytes_per_token=kv_bytes_per_token(confs[k]),
                        **{f"{s}_tokens_per_s_b{b}": float(f(speeds[k, b])) for b in batches
                           for s, f in (("median", np.median), ("min", np.min), ("max", np.max))})
                for k, m in models.items()}
    key = dict(repeats=repeats, new_tokens=new_tokens, prompt=prompt, batches=list(batches), layers=layers, torch=torch.__version__)
    return pd.DataFrame(_cached("gqa", key, measure)).T


def refinement_ms(repeats: int = 5, prompt: int = 16, steps: int = 2, layers: int | None = None) -> dict[str, float]:
    """Milliseconds per θ-refinement step (`generation.refine`: one forward and backward through the
    modulated model for the prompt) on the seed's config, batch 1: median, min and max of `repeats`."""
    def measure() -> dict:
        seed_everything(0)
        host = GeometricLlama(_seed_config(layers=layers)).eval()
        ids = torch.randint(0, SEED_CONFIG["base_architecture"]["vocab_size"], (1, prompt))
        with torch.no_grad():
            theta0 = host.predict(ids)
        theta0 = theta0[:, -1] if theta0.dim() == 3 else theta0       # the last position's θ, as generation refines it
        refine(host, ids, theta0, steps)                # warm-up
        per_step = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            refine(host, ids, theta0, steps)
            per_step.append((time.perf_counter() - t0) * 1000 / (steps + 1))   # steps updates + the final loss
        return dict(ms_median=float(np.median(per_step)), ms_min=float(np.min(per_step)), ms_max=float(np.max(per_step)),
                    params=sum(p.numel() for p in host.parameters()), prompt=prompt)
    return _cached("refine", dict(repeats=repeats, prompt=prompt, steps=steps, layers=layers, torch=torch.__version__), measure)


def matched_width(cfg: ScratchConfig, vocab_size: int, target: int) -> int:
    """The plain Llama's FFN width (a multiple of 8) whose parameter count is closest to `target`."""
    def params(width: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build("plain", replace(cfg, intermediate_dim=width), vocab_size).parameters())
    per_unit = (params(cfg.intermediate_dim + 8) - params(cfg.intermediate_dim)) / 8
    return max(8, cfg.intermediate_dim + round((target - params(cfg.intermediate_dim)) / per_unit / 8) * 8)


def lr_sweep(corpus: dict, cfg: ScratchConfig, lrs) -> pd.DataFrame:
    """GeometricLlama (modulation started at zero, causal θ) and a plain Llama widened to the same
    parameter count, each trained from scratch at every learning rate of `lrs` (cached runs): one
    row per (model, lr) with the validation loss, the parameters and the training seconds."""
    V = len(corpus["vocab"])
    with torch.device("meta"):
        target = sum(p.numel() for p in build("geometric_zero_init", cfg, V).parameters())
    plain = replace(cfg, intermediate_dim=matched_width(cfg, V, target))
    rows = []
    for label, kind, base in (("GeometricLlama", "geometric_zero_init", cfg), ("plain Llama, equal parameters", "plain", plain)):
        for lr in lrs:
            r = train_scratch(kind, corpus, replace(base, lr=lr), progress=False)
            rows.append(dict(model=label, lr=lr, val_loss=r["val_loss"], params=r["params"]["total"], seconds=r["seconds"]))
    return pd.DataFrame(rows)


def best_per_model(sweep: pd.DataFrame) -> pd.DataFrame:
    """Each model's best learning rate (lowest validation loss), and whether it lies inside the sweep."""
    best = sweep.loc[sweep.groupby("model", sort=False).val_loss.idxmin()].set_index("model")
    best["inside sweep"] = [sweep.lr.min() < lr < sweep.lr.max() for lr in best.lr]
    return best



def seed_claims(corpus: dict, cfg: ScratchConfig, mcfg: MeasureConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(the learning-rate sweep, the GQA table, the refinement timing): notebook 12's measurements of
    the seed's "competitive at 10M", GQA and refinement claims."""
    return (lr_sweep(corpus, cfg, mcfg.lrs), gqa_check(mcfg.repeats, mcfg.new_tokens, layers=mcfg.layers),
            refinement_ms(mcfg.repeats, layers=mcfg.layers))

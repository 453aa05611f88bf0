"""Notebook 11's harness for Calabi (seed 001): the profile presets, the method × ratio grid
(perplexity, real parameter counts, CPU throughput), fine-tuning the factors of a compressed model
(the seed's "advanced usage"), and MiniLM sentence embeddings before and after compression.

The dense reference and every grid cell are cached as JSON under $LLGBM_HOME/calabi/, keyed by the
model's content and the settings that change them, and so are the fine-tuning run and the MiniLM
cosines: a rerun measures nothing twice. A cached cell's tokens/s is the one measured with its
perplexity when it was computed."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.calabi import svd
from geomlib.calabi.svd import (METHODS, OptimizedCalabiYauLinear, OptimizedCYModelUtils, check_gradient_flow,
                                collect_calibration, compress_hf_model)
from llgbm.core import cache, models
from llgbm.core.utils import check_profile, config_hash, llgbm_home, preset_config
from llgbm.eval import lm


@dataclass
class CalabiConfig:
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)   # fractions of decoder-linear parameters removed
    calib_windows: int = 48        # pydoc windows for calibration (even-numbered topics)
    eval_windows: int = 32         # disjoint windows for perplexity (odd-numbered topics)
    window: int = 128              # tokens per window
    ft_steps: int = 20             # fine-tuning steps of the best method at 20%
    ft_lr: float = 5e-5
    ft_batch: int = 4
    min_features: int = 64         # layers narrower than this stay dense
    speed_repeats: int = 7         # interleaved forward timings per model (median and spread decide "faster")
    speed_windows: int = 8         # windows per timed forward

    @classmethod
    def preset(cls, profile: str, **overrides) -> "CalabiConfig":
        base = {"smoke": dict(ratios=(0.2, 0.4), calib_windows=4, eval_windows=4, ft_steps=2, window=32, speed_repeats=2, speed_windows=2),
                "quick": dict(),
                "full": dict(ratios=(0.1, 0.2, 0.3, 0.4, 0.6), calib_windows=256, eval_windows=256, ft_steps=200, window=256)}
        return preset_config(cls, base[check_profile(profile)], overrides)


CACHE_VERSION = 1


def cached(kind: str, key: dict, compute) -> dict:
    """`compute()` (a JSON-able dict) once per content key, kept under $LLGBM_HOME/calabi/."""
    return cache.cached(llgbm_home() / "calabi" / f"{kind}-{config_hash(dict(key, v=CACHE_VERSION))}.json", compute)


def measure_key(model_name: str, cfg: CalabiConfig) -> dict:
    """What a perplexity measurement depends on: the model's content and the windows."""
    return dict(model=models.model_fingerprint(model_name), calib_windows=cfg.calib_windows,
                eval_windows=cfg.eval_windows, window=cfg.window, min_features=cfg.min_features)


def dense_reference(model_name: str, dense, eval_ids: torch.Tensor, cfg: CalabiConfig) -> tuple[float, float]:
    """(perplexity, tokens/s) of the dense model on the evaluation windows (cached)."""
    row = cached("dense", measure_key(model_name, cfg),
                 lambda: dict(zip(("ppl", "tokens_per_s"), lm.perplexity(dense, eval_ids))))
    return row["ppl"], row["tokens_per_s"]


def compressed(model_name: str, ratio: float, method: str, stats, cfg: CalabiConfig, decompositions: dict | None = None):
    """A fresh copy of the model with its decoder linears compressed by `method` at `ratio`; returns
    (model, number of layers replaced). `decompositions` carries each layer's factorisation from one
    ratio to the next (see `OptimizedCYModelUtils.replace_linear_layers`)."""
    model, _ = models.load_model(model_name, device="cpu")
    n = OptimizedCYModelUtils.replace_linear_layers(model, ratio, min_features=cfg.min_features, method=method,
                                                    calib=None if method == "plain" else stats,
                                                    decompositions=decompositions)
    return model, n


def compression_grid(model_name: str, stats, eval_ids: torch.Tensor, cfg: CalabiConfig, dense_params: int,
                     methods=METHODS, progress: bool = True) -> pd.DataFrame:
    """Every method × ratio in one harness: layers replaced, real parameter count, fraction removed,
    held-out perplexity and tokens/s of the same pass. Each layer is factorised once per kind of
    decomposition (plain and energy_gap share the SVD of W) and truncated for every ratio."""
    rows, decompositions = [], {}
    cells = [(m, r) for m in methods for r in cfg.ratios]
    for method, r in tqdm(cells, desc="calabi grid", disable=not progress):
        kind = svd.DECOMPOSITION_OF[method]
        for key in [k for k in decompositions if k[1] != kind]:   # one kind held at a time (memory)
            if not any(svd.DECOMPOSITION_OF[m] == key[1] for m, _ in cells[cells.index((method, r)):]):
                del decompositions[key]

        def cell():
            model, n = compressed(model_name, r, method, stats, cfg, decompositions)
            ppl, tps = lm.perplexity(model, eval_ids)
            return dict(layers=n, params=OptimizedCYModelUtils.count_parameters(model), ppl=ppl, tokens_per_s=tps)
        row = cached("cell", dict(measure_key(model_name, cfg), method=method, ratio=r), cell)
        rows.append(dict(method=method, ratio=r, layers=row["layers"], params=row["params"],
                         removed=1 - row["params"] / dense_params, ppl=row["ppl"], tokens_per_s=row["tokens_per_s"]))
    return pd.DataFrame(rows)


def speed_check(model_name: str, dense, stats, eval_ids: torch.Tensor, cfg: CalabiConfig, best_method: str, ratio: float,
                same_rank=("asvd", "svdllm")) -> pd.DataFrame:
    """Forward tokens/s of the dense model and of the compressed ones at `ratio` (the best method and
    the `same_rank` pair, which keep identical ranks and so must time alike), interleaved,
    `speed_repeats` times on `speed_windows` evaluation windows (`lm.interleaved_speed`): median, min,
    max and spread per model, cached with the settings."""
    methods = list(dict.fromkeys([best_method, *same_rank]))

    def measure() -> dict:
        models_ = {"dense": dense} | {m: compressed(model_name, ratio, m, stats, cfg)[0] for m in methods}
        return lm.interleaved_speed(models_, eval_ids[:cfg.speed_windows], cfg.speed_repeats).to_dict("index")
    key = dict(measure_key(model_name, cfg), methods=methods, ratio=ratio, repeats=cfg.speed_repeats, windows=cfg.speed_windows)
    return pd.DataFrame(cached("speed", key, measure)).T


def finetune_factors(model, calib_ids: torch.Tensor, cfg: CalabiConfig) -> dict:
    """Train only the compressed layers' factors (U, S, V, bias) on calibration windows with the LM
    loss, `cfg.ft_steps` AdamW steps; batches are drawn by a seeded generator per step. Returns the
    gradient-flow check of the first compressed layer and the loss curve."""
    model.requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, OptimizedCalabiYauLinear)]
    if not layers:
        raise ValueError("the model has no OptimizedCalabiYauLinear layer to fine-tune")
    factors = [p for m in layers for p in m.parameters()]
    for p in factors:
        p.requires_grad_(True)
    grads = check_gradient_flow(layers[0])
    opt = torch.optim.AdamW(factors, lr=cfg.ft_lr)
    model.train()
    losses = []
    for step in range(cfg.ft_steps):
        ids = calib_ids[torch.randint(0, len(calib_ids), (cfg.ft_batch,), generator=torch.Generator().manual_seed(step))]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return dict(gradient_norms=grads, losses=losses)


def finetuned(model_name: str, method: str, ratio: float, stats, calib_ids: torch.Tensor, eval_ids: torch.Tensor,
              cfg: CalabiConfig) -> dict:
    """`finetune_factors` on the model compressed by `method` at `ratio`, then its held-out
    perplexity: {gradient_norms, losses, ppl} (cached)."""
    def run():
        model, _ = compressed(model_name, ratio, method, stats, cfg)
        out = finetune_factors(model, calib_ids, cfg)
        return dict(out, ppl=lm.perplexity(model, eval_ids)[0])
    key = dict(measure_key(model_name, cfg), method=method, ratio=float(ratio), ft_steps=cfg.ft_steps, ft_lr=cfg.ft_lr,
               ft_batch=cfg.ft_batch)
    return cached("finetune", key, run)


def minilm_cosines(sentences: list[str], ratios=(0.2, 0.4), methods=("plain", "svdllm"), min_features: int = 64) -> pd.DataFrame:
    """Mean cosine between MiniLM sentence embeddings before and after compressing its linears (cached)."""
    key = dict(sentences=config_hash(sentences), ratios=list(ratios), methods=list(methods), min_features=min_features)
    return pd.DataFrame(cached("minilm", key, lambda: _minilm_cosines(sentences, ratios, methods, min_features)))


def _minilm_cosines(sentences: list[str], ratios, methods, min_features: int) -> list[dict]:
    enc = models.load_encoder(device="cpu")
    ref = enc.encode(sentences, convert_to_tensor=True)
    feats = enc.tokenize(sentences[:32])
    stats = collect_calibration(enc[0].auto_model, [dict(feats)])
    rows = []
    for method in methods:
        for r in ratios:
            enc_c = models.load_encoder(device="cpu")
            compress_hf_model(enc_c[0].auto_model, r, method=method, calib=None if method == "plain" else stats,
                              min_features=min_features)
            cos = torch.nn.functional.cosine_similarity(ref, enc_c.encode(sentences, convert_to_tensor=True)).mean().item()
            rows.append(dict(method=method, ratio=r, mean_cosine=cos))
    return rows

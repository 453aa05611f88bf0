"""Notebook 11's harness for Calabi (seed 001): the profile presets, the method × ratio grid
(perplexity, real parameter counts, CPU throughput), fine-tuning the factors of a compressed model
(the seed's "advanced usage"), and MiniLM sentence embeddings before and after compression.

The dense reference and every grid cell are cached as JSON under $LLGBM_HOME/calabi/, keyed by the
model's content and the settings that change them, and so are the fine-tuning run and the MiniLM
cosines: a rerun measures nothing twice. A cached cell's tokens/s is the one measured with its
perplexity when it was computed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from geomlib.calabi import allocate, store, svd
from geomlib.calabi.svd import (OptimizedCalabiYauLinear, OptimizedCYModelUtils, check_gradient_flow,
                                collect_calibration, compress_hf_model)
from llgbm.core import cache, models
from llgbm.core.timing import machine
from llgbm.core.utils import check_profile, config_hash, llgbm_home, preset_config
from llgbm.eval import lm

# Issue 29's methods, beside the seed's and the baselines of `svd.METHODS`: ASVD truncation followed by
# SVD-LLM's closed-form update of U (`allocate.update_factors`), and SVD-LLM whitening with per-layer rank
# allocation at the same budget, dense where factorising is not faster here (`allocate.compress_allocated`):
# across all layers by whitened loss (`+alloc`), within each kind of layer (`+alloc-type`, SVD-LLM v2's groups), or
# across all layers by each layer's loss relative to its own whitened energy (`+alloc-rel`, scale-free).
NEW_METHODS = ("asvd+update", "svdllm+alloc", "svdllm+alloc-type", "svdllm+alloc-rel")
ALL_METHODS = ("plain", "energy_gap", "asvd", "asvd+update", "svdllm") + NEW_METHODS[1:]   # grouped by factorisation
ALLOCATED = NEW_METHODS[1:]
KIND_OF = svd.DECOMPOSITION_OF | {"asvd+update": "asvd"} | dict.fromkeys(ALLOCATED, "svdllm")   # what each truncates


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
    recover_steps: tuple[int, ...] = (0, 10, 20, 40)   # distillation checkpoints of the recovery curve
    recover_lr: float = 1e-4
    task_candidates: tuple[str, ...] = ("country_en_to_fr", "country_en_to_de", "country_en_to_es", "country_en_to_it",
                                        "country_to_alpha2", "alpha2_to_country", "number_words_en", "ordinal_words_en",
                                        "add_1", "add_2", "uppercase_letters", "reverse_letters")
    task_count: int = 4            # tasks kept (the dense model's best on dev)
    task_items: int = 64           # test items per task
    task_dev_items: int = 16       # dev items per candidate, to choose the tasks
    shots: int = 4                 # demonstrations in each task prompt

    @classmethod
    def preset(cls, profile: str, **overrides) -> "CalabiConfig":
        base = {"smoke": dict(ratios=(0.2, 0.4), calib_windows=4, eval_windows=4, ft_steps=2, window=32, speed_repeats=2, speed_windows=2,
                              recover_steps=(0, 2), task_count=2, task_items=4, task_dev_items=2),
                "quick": dict(),
                "full": dict(ratios=(0.1, 0.2, 0.3, 0.4, 0.6), calib_windows=256, eval_windows=256, ft_steps=200, window=256,
                             recover_steps=(0, 25, 50, 100, 200, 400), task_items=256)}
        return preset_config(cls, base[check_profile(profile)], overrides)


CACHE_VERSION = 1


def cache_file(kind: str, key: dict) -> Path:
    return llgbm_home() / "calabi" / f"{kind}-{config_hash(dict(key, v=CACHE_VERSION))}.json"


def cached(kind: str, key: dict, compute) -> dict:
    """`compute()` (a JSON-able dict) once per content key, kept under $LLGBM_HOME/calabi/."""
    return cache.cached(cache_file(kind, key), compute)


def save_whole(model, folder: Path, tokenizer=None, meta: dict | None = None) -> Path:
    """`store.save_compressed` through a temporary folder renamed at the end: whole or absent, so an
    interrupted save is redone, never read half-written."""
    tmp = folder.with_name(folder.name + ".partial")
    store.save_compressed(model, tmp, tokenizer, meta)
    tmp.replace(folder)
    return folder


def measure_key(model_name: str, cfg: CalabiConfig) -> dict:
    """What a perplexity measurement depends on: the model's content and the windows."""
    return dict(model=models.model_fingerprint(model_name), calib_windows=cfg.calib_windows,
                eval_windows=cfg.eval_windows, window=cfg.window, min_features=cfg.min_features)


def dense_reference(model_name: str, dense, eval_ids: torch.Tensor, cfg: CalabiConfig) -> tuple[float, float]:
    """(perplexity, tokens/s) of the dense model on the evaluation windows (cached)."""
    row = cached("dense", measure_key(model_name, cfg),
                 lambda: dict(zip(("ppl", "tokens_per_s"), lm.perplexity(dense, eval_ids))))
    return row["ppl"], row["tokens_per_s"]


def fast_ranks(model_name: str, cfg: CalabiConfig) -> dict[tuple[int, int], int]:
    """`allocate.fast_ranks` of the model's targeted shapes on this machine, for a forward of
    `speed_windows` × `window` tokens (the timed forward's GEMM height); cached per CPU and thread count."""
    model, _ = models.load_model(model_name, device="cpu")
    shapes = sorted({(m.out_features, m.in_features) for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= cfg.min_features
                     and not name.endswith("lm_head")})
    tokens = cfg.speed_windows * cfg.window
    key = dict(shapes=shapes, tokens=tokens, machine=machine(), threads=torch.get_num_threads(), forward=svd.FORWARD)
    row = cached("fast-ranks", key, lambda: {f"{m}x{n}": r for (m, n), r in
                                             allocate.fast_ranks(shapes, lambda m, n, r: allocate.gemm_seconds(m, n, r, tokens)).items()})
    return {tuple(map(int, k.split("x"))): r for k, r in row.items()}


def cell_key(model_name: str, cfg: CalabiConfig, method: str, ratio: float) -> dict:
    """What one compressed model depends on; an allocated one also on this machine's fast ranks."""
    key = dict(measure_key(model_name, cfg), method=check_method(method), ratio=float(ratio))
    return key | (dict(fast=sorted(fast_ranks(model_name, cfg).items())) if method in ALLOCATED else {})


def check_method(method: str) -> str:
    if method not in ALL_METHODS:
        raise ValueError(f"unknown compression method {method!r}; expected one of {ALL_METHODS}")
    return method


def compressed(model_name: str, ratio: float, method: str, stats, cfg: CalabiConfig, decompositions: dict | None = None):
    """A fresh copy of the model with its decoder linears compressed by `method` (of `ALL_METHODS`) at
    `ratio`; returns (model, number of layers factorised). `decompositions` carries each layer's
    factorisation from one ratio to the next (see `OptimizedCYModelUtils.replace_linear_layers`)."""
    model, _ = models.load_model(model_name, device="cpu")
    if check_method(method) in ALLOCATED:
        ranks = allocate.compress_allocated(model, ratio, stats, fast_ranks(model_name, cfg), min_features=cfg.min_features,
                                            decompositions=decompositions, by_type=method == "svdllm+alloc-type",
                                            scale_free=method == "svdllm+alloc-rel")
        return model, sum(r is not None for r in ranks.values())
    base = method.removesuffix("+update")
    n = OptimizedCYModelUtils.replace_linear_layers(model, ratio, min_features=cfg.min_features, method=base,
                                                    calib=None if base == "plain" else stats,
                                                    decompositions=decompositions)
    if method.endswith("+update"):
        allocate.update_factors(model, models.load_model(model_name, device="cpu")[0], stats)
    return model, n


def compressed_folder(model_name: str, ratio: float, method: str, stats, cfg: CalabiConfig) -> Path:
    """The model compressed by `method` at `ratio`, saved once (`store.save_compressed`) under
    $LLGBM_HOME/calabi/models/, keyed like the grid's cells; reloads with `store.load_compressed`."""
    folder = llgbm_home() / "calabi" / "models" / (f"{method.replace('+', '-')}-{round(ratio * 100)}-"
                                                    f"{config_hash(dict(cell_key(model_name, cfg, method, ratio), v=CACHE_VERSION))}")
    if not (folder / "calabi.json").is_file():
        model, _ = compressed(model_name, ratio, method, stats, cfg)
        save_whole(model, folder, models.load_model(model_name, device="cpu")[1], meta=dict(method=method, ratio=ratio))
    return folder


def compression_grid(model_name: str, stats, eval_ids: torch.Tensor, cfg: CalabiConfig, dense_params: int,
                     methods=ALL_METHODS, progress: bool = True) -> pd.DataFrame:
    """Every method × ratio in one harness: layers replaced, real parameter count, fraction removed,
    held-out perplexity and tokens/s of the same pass. Each layer is factorised once per kind of
    decomposition (plain and energy_gap share the SVD of W) and truncated for every ratio."""
    rows, decompositions = [], {}
    cells = [(m, r) for m in methods for r in cfg.ratios]
    for method, r in tqdm(cells, desc="calabi grid", disable=not progress):
        kind = KIND_OF[method]
        for key in [k for k in decompositions if k[1] != kind]:   # one kind held at a time (memory)
            if not any(KIND_OF[m] == key[1] for m, _ in cells[cells.index((method, r)):]):
                del decompositions[key]

        def cell():
            try:
                model, n = compressed(model_name, r, method, stats, cfg, decompositions)
            except allocate.InfeasibleBudget as e:        # too few layers are faster factorised: no such model here
                return dict(layers=0, params=None, ppl=None, tokens_per_s=None, infeasible=str(e))
            ppl, tps = lm.perplexity(model, eval_ids)
            return dict(layers=n, params=OptimizedCYModelUtils.count_parameters(model), ppl=ppl, tokens_per_s=tps)
        row = cached("cell", cell_key(model_name, cfg, method, r), cell)
        params = row["params"] if row["params"] is not None else float("nan")      # NaN: the budget was infeasible
        rows.append(dict(method=method, ratio=r, layers=row["layers"], params=params, removed=1 - params / dense_params,
                         ppl=row["ppl"] if row["ppl"] is not None else float("nan"),
                         tokens_per_s=row["tokens_per_s"] if row["tokens_per_s"] is not None else float("nan")))
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
    key |= dict(forward=svd.FORWARD, machine=machine())      # timings of today's kernels, on this machine
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


def calibrate(dense, calib_ids: torch.Tensor, batch: int = 8) -> dict:
    """Every linear layer's input statistics over the calibration windows, `batch` windows a forward."""
    return collect_calibration(dense, [{"input_ids": calib_ids[i:i + batch]} for i in range(0, len(calib_ids), batch)])


def compress_to_folder(model_name: str, ratio: float, method: str, out, calib_windows: int = 48, min_features: int = 64) -> dict:
    """`python -m geomlib.calabi compress --out`: `method` at `ratio` on a causal LM (a preset or a local
    folder), calibrated where the method needs it on `calib_windows` pydoc windows (even-numbered topics,
    as notebook 11), saved to `out` with its tokenizer (`store.save_compressed`). Returns
    {layers, params_before, params_after} (decoder-linear parameters)."""
    cfg = CalabiConfig(calib_windows=calib_windows, min_features=min_features)
    dense, tok = models.load_model(model_name, device="cpu")
    stats = None if check_method(method) in ("plain", "energy_gap") else calibrate(dense, lm.pydoc_windows(tok, "calib", calib_windows, cfg.window))
    model, n = compressed(model_name, ratio, method, stats, cfg)
    save_whole(model, Path(out), tok, meta=dict(model=model_name, method=method, ratio=ratio, calib_windows=calib_windows,
                                              min_features=min_features))
    return dict(layers=n, params_before=OptimizedCYModelUtils.count_parameters(dense),
                params_after=OptimizedCYModelUtils.count_parameters(model))

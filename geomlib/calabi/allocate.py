"""Beyond one ratio for every layer (issue 29): per-layer rank allocation at a fixed global parameter
budget, the factored shapes that are faster than dense on this machine, and the closed-form
least-squares update of a kept factor.

Allocation, as SVD-LLM v2 allocates: with whitening (`decompose(..., "svdllm")`), the singular values
σ of W·L (L the Cholesky factor of the calibration XᵀX/N) give every layer's truncation loss exactly:
keeping rank r leaves ‖(W − W_r)X‖²/N = Σ_{i≥r} σ_i². One more rank on an m×n layer costs m + n
parameters (m + n + 1 with the seed layer's separate S) and removes σ_r²; each layer's σ² falls with r, so handing out ranks greedily by loss removed
per parameter is optimal up to one rank unit per layer (a separable concave knapsack). A layer is
factorised only at ranks that save parameters (r(m + n + 1) < mn) and time (`fast_ranks`: the largest rank
whose two thin GEMMs beat the dense one, timed once per shape); a layer that cannot be both stays dense
and counts its mn against the budget, which the others then meet. Once a layer reaches its largest fast
rank, keeping it dense is one more candidate, at its cost and gain.

The closed-form update: given the kept right factor Vᵀ (r × n) of W ≈ U·Vᵀ, the U that minimises the
calibration error ‖(W − U·Vᵀ)X‖² is U = W·G·V·(Vᵀ·G·V)⁻¹ with G = XᵀX/N. After plain or activation-
scaled (ASVD) truncation it lowers that error; after whitened truncation (svdllm) it changes nothing,
since the whitened truncation is already the optimum for G (a test shows both). `refit_to_dense` goes
further: layer after layer, it refits U (and the bias) to what the dense layer outputs on the dense
model's inputs, from the inputs the *compressed* model feeds it, which undoes upstream truncation error.

`compress_allocated` puts allocation and factors together on a model; notebook 11 is to measure them
on SmolLM2 (issue 29: ≤ 1.30× perplexity at 20%, factored inference ≥ 1.0× dense speed)."""
from __future__ import annotations

import heapq
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from llgbm.core.timing import median_time

from .svd import OptimizedCalabiYauLinear, decompose


def tail_losses(s: torch.Tensor) -> torch.Tensor:
    """loss[r] = Σ_{i≥r} s_i² for r = 0 … len(s): what truncating to rank r leaves (float64)."""
    sq = s.double().pow(2)
    return torch.cat([sq.flip(0).cumsum(0).flip(0), sq.new_zeros(1)])


def factored_params(m: int, n: int, r: int) -> int:
    """U (m × r), S (r) and V (n × r), as `OptimizedCalabiYauLinear` holds them (its bias aside)."""
    return r * (m + n + 1)


def max_saving_rank(m: int, n: int) -> int:
    """The largest rank whose factors hold fewer parameters than the dense m×n weight."""
    return (m * n - 1) // (m + n + 1)


def gemm_seconds(m: int, n: int, r: int | None, tokens: int = 256, repeats: int = 7) -> float:
    """Median seconds of y = x·Wᵀ for a (tokens × n) input: one dense m×n GEMM (r None) or two thin
    ones through rank r, as `OptimizedCalabiYauLinear` runs them (fp32, this process's threads)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, n, generator=g)
    if r is None:
        w = torch.randn(m, n, generator=g)
        fn = lambda: x @ w.T   # noqa: E731
    else:
        v, s, u = torch.randn(n, r, generator=g), torch.randn(r, generator=g), torch.randn(m, r, generator=g)
        fn = lambda: F.linear(F.linear(x, (v * s).T), u)   # noqa: E731  (OptimizedCalabiYauLinear.forward's kernels)
    return median_time(fn, repeats)


def fast_ranks(shapes, timer: Callable[[int, int, int | None], float] = gemm_seconds) -> dict[tuple[int, int], int]:
    """{(m, n): the largest rank r ≤ max_saving_rank whose factored GEMM times faster than the dense one,
    0 where none does}. Factored time grows with r, so the crossing is found by bisection: about log2(mn/(m+n))
    timings per shape. `timer(m, n, r)` is seconds (r None: dense); a test passes a model of it."""
    out = {}
    for m, n in sorted(set(map(tuple, shapes))):
        dense, lo, hi = timer(m, n, None), 0, max_saving_rank(m, n)
        while lo < hi:                              # invariant: rank lo is fast (0 trivially), ranks > hi are not
            mid = (lo + hi + 1) // 2
            if timer(m, n, mid) < dense:
                lo = mid
            else:
                hi = mid - 1
        out[m, n] = lo
    return out


class InfeasibleBudget(ValueError):
    """The budget cannot be met: too few layers are faster factorised to remove that many parameters."""


def allocate(layers: dict[str, dict], budget: int, fast: dict[tuple[int, int], int]) -> dict[str, int | None]:
    """{layer: rank, or None where it stays dense} within `budget` parameters over these layers (biases
    aside), minimising the summed truncation loss. `layers[name]` holds m, n and `losses` (tail_losses of
    its whitened singular values); `fast` is `fast_ranks` over their shapes. Raises when even rank 1
    everywhere possible (and dense elsewhere) exceeds the budget."""
    rank, fixed = {}, 0
    for name, d in layers.items():
        top = min(fast.get((d["m"], d["n"]), 0), len(d["losses"]) - 1)
        if top >= 1:
            rank[name] = 1
            fixed += factored_params(d["m"], d["n"], 1)
        else:
            rank[name] = None
            fixed += d["m"] * d["n"]
    if fixed > budget:
        raise InfeasibleBudget(f"a budget of {budget:,} parameters is below the {fixed:,} that rank 1 (and dense where "
                         f"factorising is not faster) already takes: remove a smaller share")
    left = budget - fixed
    heap = []

    def push(name: str) -> None:
        d, r = layers[name], rank[name]
        top = min(fast.get((d["m"], d["n"]), 0), len(d["losses"]) - 1)
        if r is None:
            return
        if r < top:                                 # one more rank: gain σ_r², cost m + n + 1
            gain, cost = float(d["losses"][r] - d["losses"][r + 1]), factored_params(d["m"], d["n"], 1)
            heapq.heappush(heap, (-gain / cost, name, r + 1, cost))
        else:                                       # or the whole layer dense: gain what rank r still leaves
            gain, cost = float(d["losses"][r]), d["m"] * d["n"] - factored_params(d["m"], d["n"], r)
            if gain > 0:
                heapq.heappush(heap, (-gain / cost, name, None, cost))
    for name in layers:
        push(name)
    while heap:
        _, name, to, cost = heapq.heappop(heap)
        if cost > left:
            continue                                # it does not fit; cheaper steps of other layers still may
        left -= cost
        rank[name] = to
        push(name)
    return rank


def layer_type(name: str) -> str:
    """The kind of a layer, from its name's last part ("model.layers.3.self_attn.q_proj" -> "q_proj")."""
    return name.rsplit(".", 1)[-1]


def allocate_by_type(layers: dict[str, dict], ratio: float, fast: dict[tuple[int, int], int]) -> dict[str, int | None]:
    """`allocate` within each kind of layer (`layer_type`: all q_proj together, all down_proj together, …),
    each kind at `ratio` of its own parameters, as SVD-LLM v2 allocates within groups of one type: the
    whitened losses of one kind share their units (one shape, one place in the block), so the greedy
    trade moves rank across depth only, while the mix of kinds stays what uniform ranks give."""
    groups: dict[str, dict] = {}
    for name, d in layers.items():
        groups.setdefault(layer_type(name), {})[name] = d
    ranks = {}
    for group in groups.values():
        ranks |= allocate(group, budget_for(group, ratio), fast)
    return ranks


def relative(layers: dict[str, dict]) -> dict[str, dict]:
    """The layers with each one's losses divided by its whole whitened energy (losses[0] = Σσ²): the
    fraction of its own output energy a truncation leaves, a scale-free loss. Raw whitened losses grow
    with depth (the residual stream's scale) and differ by kind, so a greedy on them crushes early layers."""
    return {k: dict(d, losses=d["losses"] / d["losses"][0].clamp_min(1e-300)) for k, d in layers.items()}


def allocated_params(layers: dict[str, dict], ranks: dict[str, int | None]) -> int:
    return sum(d["m"] * d["n"] if ranks[k] is None else factored_params(d["m"], d["n"], ranks[k]) for k, d in layers.items())


def calibration_error(w: torch.Tensor, u: torch.Tensor, vh: torch.Tensor, gram: torch.Tensor) -> float:
    """‖(W − U·Vᵀ)X‖²/N = tr(E·G·Eᵀ) with E = W − U·Vᵀ and G = XᵀX/N (float64)."""
    e = w.double() - u.double() @ vh.double()
    return float(torch.einsum("ij,jk,ik->", e, gram.double(), e))


def closed_form_update(w: torch.Tensor, vh: torch.Tensor, gram: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """The U minimising ‖(W − U·Vᵀ)X‖² for a kept right factor Vᵀ (r × n): W·G·V·(Vᵀ·G·V)⁻¹, in float64,
    with G jittered by `ridge` × its mean diagonal, as `decompose` jitters it before whitening (so the
    update leaves svdllm's factors as they are, and a Gram from too few tokens does not blow U up);
    returned in W's dtype."""
    g = gram.double()
    g = g + ridge * g.diagonal().mean().clamp_min(1e-300) * torch.eye(g.shape[0], dtype=g.dtype)
    v = vh.double().T
    return torch.linalg.solve(v.T @ g @ v, (w.double() @ g @ v).T).T.to(w.dtype)


def gram_of(stats) -> torch.Tensor:
    """G = XᵀX/N from a layer's `CalibrationStats`."""
    return stats.xxt / max(stats.n, 1)


def budget_for(layers: dict[str, dict], ratio: float) -> int:
    """Parameters left after removing `ratio` of these layers' dense parameters (rounded down)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio is the fraction of parameters removed, in [0, 1); got {ratio}")
    return math.floor((1 - ratio) * sum(d["m"] * d["n"] for d in layers.values()))


def spectra(model: nn.Module, calib: dict, min_features: int = 128, skip: tuple[str, ...] = ("lm_head",),
            decompositions: dict | None = None) -> dict[str, dict]:
    """{layer: m, n, the svdllm `decomposition` and its `losses` (tail_losses of the whitened σ)} for
    every nn.Linear that `OptimizedCYModelUtils.replace_linear_layers` would consider. `decompositions`
    ({(layer, "svdllm"): decomposition}, as the grid keeps them) is read and filled: no layer twice."""
    out = {}
    for name, mod in model.named_modules():
        if (isinstance(mod, nn.Linear) and min(mod.in_features, mod.out_features) >= min_features
                and not any(name == s or name.endswith("." + s) for s in skip)):
            if name not in calib:
                raise ValueError(f"no calibration statistics for layer {name!r}: collect them over every layer compressed")
            store = decompositions if decompositions is not None else {}
            if (name, "svdllm") not in store:
                store[name, "svdllm"] = decompose(mod.weight.detach(), "svdllm", calib[name])
            d = store[name, "svdllm"]
            out[name] = dict(m=mod.out_features, n=mod.in_features, decomposition=d, losses=tail_losses(d["s"]))
    return out


def compress_allocated(model: nn.Module, ratio: float, calib: dict, fast: dict | None = None, update: bool = False,
                       min_features: int = 128, progress: bool = False, decompositions: dict | None = None,
                       by_type: bool = False, scale_free: bool = False) -> dict[str, int | None]:
    """Compress `model` in place at `ratio` of its targeted linears' parameters removed, each layer at the
    rank `allocate` gives it (svdllm factors; dense where factorising is not faster, `fast` as from
    `fast_ranks`, measured here when None). `by_type`: allocate within each kind of layer (`allocate_by_type`)
    rather than across all; `scale_free`: on each layer's losses relative to its own energy (`relative`).
    With `update`, each kept U is refitted in closed form to the calibration Gram
    (`update_layer`). `decompositions` as in `spectra`. Returns {layer: rank or None (dense)}."""
    layers = spectra(model, calib, min_features, decompositions=decompositions)
    fast = fast if fast is not None else fast_ranks([(d["m"], d["n"]) for d in layers.values()])
    scored = relative(layers) if scale_free else layers
    ranks = allocate_by_type(scored, ratio, fast) if by_type else allocate(scored, budget_for(scored, ratio), fast)
    for name in tqdm([k for k, r in ranks.items() if r is not None], desc=f"compress (allocated, {ratio:.0%})",
                     unit="layer", disable=not progress, leave=False):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        dense = getattr(parent, child)
        layer = OptimizedCalabiYauLinear(dense, method="svdllm", calib=calib[name], rank=ranks[name],
                                         decomposition=layers[name]["decomposition"])
        if update:
            update_layer(layer, dense, calib[name])
        setattr(parent, child, layer)
    return ranks


@torch.no_grad()
def update_layer(layer: OptimizedCalabiYauLinear, dense: nn.Linear, stats) -> None:
    """In place: the layer's U refitted in closed form to the calibration Gram (`closed_form_update` for
    the kept right factor diag(S)·Vᵀ, S kept), and the reconstruction bias refolded for the new U."""
    w, right = dense.weight.detach(), (layer.V * layer.S).T                # diag(S)·Vᵀ, (r × n)
    layer.U.copy_(closed_form_update(w, right, gram_of(stats)))            # W ≈ U·diag(S)·Vᵀ
    if layer.bias is not None:
        base = dense.bias.detach().double() if dense.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        resid = w.double() - layer.U.double() @ right.double()
        layer.bias.copy_((base + resid @ stats.mean.to(torch.float64)).to(layer.bias.dtype))


def update_factors(model: nn.Module, dense: nn.Module, calib: dict) -> int:
    """`update_layer` on every factorised layer of `model`, the dense weights read from `dense` (the same
    architecture, uncompressed): SVD-LLM's closed-form update after any truncation. Returns the count."""
    names = [n for n, m in model.named_modules() if isinstance(m, OptimizedCalabiYauLinear)]
    for name in names:
        update_layer(model.get_submodule(name), dense.get_submodule(name), calib[name])
    return len(names)


def _refit(layer, dense_layer, a: dict) -> None:
    """U and bias of one factored layer from its accumulated input statistics (see `refit_to_dense`)."""
    w, k = dense_layer.weight.double(), a["k"]
    mu, mu_t = a["mu"] / k, a["mu_t"] / k
    c = a["c"] / k - torch.outer(mu, mu_t)                       # Cov(x, x̃)
    g = a["g"] / k - torch.outer(mu_t, mu_t)                     # Cov(x̃)
    g = g + 1e-6 * g.diagonal().mean().clamp_min(1e-300) * torch.eye(g.shape[0], dtype=g.dtype)
    right = (layer.V * layer.S).T.double()                       # diag(S)·Vᵀ, (r × n)
    v = right.T
    u = torch.linalg.solve(v.T @ g @ v, (w @ c @ v).T).T
    layer.U.copy_(u.to(layer.U.dtype))
    if layer.bias is not None:
        base = dense_layer.bias.double() if dense_layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        layer.bias.copy_((base + w @ mu - u @ right @ mu_t).to(layer.bias.dtype))


@torch.no_grad()
def refit_to_dense(dense: nn.Module, compressed: nn.Module, batches, progress: bool = False) -> int:
    """Error-compensating refit (in place), layer after layer in the model's order: each factored layer's U
    and bias are refitted in closed form so that the layer, fed the *compressed* model's inputs x̃ (the
    layers before it already refitted), reproduces the dense layer fed the dense model's x on the
    calibration `batches`: U = W·Cov(x, x̃)·V·(Vᵀ·Cov(x̃)·V)⁻¹ for the kept right factor Vᵀ ← diag(S)·Vᵀ,
    and the bias matching the output means. It undoes the error of the layers before, which the
    per-layer update cannot see; one calibration pass per layer, each stopped at that layer. Returns the layers refitted."""
    names = [n for n, m in compressed.named_modules() if isinstance(m, OptimizedCalabiYauLinear)]
    batches = list(batches)
    for name in tqdm(names, desc="refit to the dense model", unit="layer", disable=not progress, leave=False):
        layer, dense_layer = compressed.get_submodule(name), dense.get_submodule(name)
        a, seen = dict(c=0.0, g=0.0, mu=0.0, mu_t=0.0, k=0), {}

        def keep(m, i, o):
            seen["x"] = i[0].reshape(-1, i[0].shape[-1]).double()
            raise _Done

        def take(m, i, o):
            x, xt = seen.pop("x"), i[0].reshape(-1, i[0].shape[-1]).double()
            a.update(c=a["c"] + x.T @ xt, g=a["g"] + xt.T @ xt, mu=a["mu"] + x.sum(0), mu_t=a["mu_t"] + xt.sum(0), k=a["k"] + len(x))
            raise _Done
        hooks = [dense_layer.register_forward_hook(keep), layer.register_forward_hook(take)]
        try:
            for batch in batches:
                for model in (dense, compressed):
                    try:
                        model(**batch)
                    except _Done:             # the layer's input is all this pass needs: stop there
                        pass
        finally:
            for h in hooks:
                h.remove()
        _refit(layer, dense_layer, a)
    return len(names)


class _Done(Exception):
    """Raised by a hook once it has the input it needs, to end the forward pass early."""

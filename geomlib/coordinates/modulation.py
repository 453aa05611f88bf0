"""Coordinate-modulated weights (seed 003): W_eff(θ) = W + Σ_i α_i(x)·[cos(θ·c_i)·U_iV_iᵀ + sin(θ·c_i)·P_iQ_iᵀ],
computed through the low-rank factors (x·V then ·Uᵀ), never by building W_eff; and the coordinate
predictor that maps the input's embeddings to θ. Both are causal by default: θ_t and α_t see the
prefix up to t. The seed pools the whole sequence, which lets position t see its own answer; that
mode is kept as `pooling="sequence"` and named for what it does."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOLING = ("causal", "sequence")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLING:
        raise ValueError(f"pooling={pooling!r}: expected 'causal' (θ_t from the prefix up to t) or 'sequence' "
                         f"(the seed's mean over the whole sequence, which leaks future tokens)")
    return pooling


class PrefixMean(nn.Module):
    """Mean over the positions so far, (B, S, D) → (B, S, D), carried across calls while `streaming`
    (KV-cache generation feeds one token at a time)."""

    def __init__(self):
        super().__init__()
        self.streaming, self.carry = False, None

    def reset(self, streaming: bool = False) -> None:
        self.streaming, self.carry = streaming, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.cumsum(1)
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        if self.streaming and self.carry is not None:
            total, count = total + self.carry[0], count + self.carry[1]
        if self.streaming:
            self.carry = (total[:, -1:].detach(), count[:, -1:])
        return total / count


def pool(x: torch.Tensor, pooling: str, prefix: PrefixMean) -> torch.Tensor:
    return prefix(x) if pooling == "causal" else x.mean(1, keepdim=True).expand_as(x)


class CoordinateModulatedLinear(nn.Module):
    """A frozen or trainable `base` nn.Linear plus `num_wavelet_pairs` cos/sin wavelets of rank
    `modulation_rank`, driven by θ ∈ R^num_coordinates. `init="zero"` starts the output-side factors
    U, P at zero, so attaching the layer leaves a pretrained model unchanged; `init="seed"` is the
    seed's N(0, 1/rank) for all four factors (entries of ΔW ≈ 0.29 against pretrained weights ≈ 0.02:
    for from-scratch models only). `gated`: the seed's α_i(x) = sigmoid(linear(pooled x))."""

    def __init__(self, base: nn.Linear, num_coordinates: int, num_wavelet_pairs: int, modulation_rank: int,
                 gated: bool = True, init: str = "zero", pooling: str = "causal"):
        super().__init__()
        if init not in ("zero", "seed"):
            raise ValueError(f"init={init!r}: expected 'zero' (pretrained models) or 'seed' (from scratch)")
        self.base, self.pooling = base, check_pooling(pooling)
        self.num_coordinates, self.n, self.r = num_coordinates, num_wavelet_pairs, modulation_rank
        d_in, d_out = base.in_features, base.out_features
        self.directions = nn.Parameter(torch.randn(self.n, num_coordinates) / math.sqrt(num_coordinates))
        # Inputs-side factors V (cos) and Q (sin), and output-side U (cos) and P (sin), stacked [cos | sin].
        self.v = nn.Parameter(torch.randn(2 * self.n, d_in, self.r) / math.sqrt(self.r))
        self.u = nn.Parameter(torch.randn(2 * self.n, d_out, self.r) / math.sqrt(self.r) if init == "seed"
                              else torch.zeros(2 * self.n, d_out, self.r))
        self.gate = nn.Linear(d_in, self.n) if gated else None
        self.prefix = PrefixMean()
        self.theta: torch.Tensor | None = None      # set by the host model before each forward

    def coefficients(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """(B, S, 2n): α_i·cos(θ·c_i) then α_i·sin(θ·c_i) for every position; θ is (B, C) or (B, S, C)."""
        if theta.shape[-1] != self.num_coordinates:
            raise ValueError(f"θ has {theta.shape[-1]} coordinates; this layer was built for {self.num_coordinates}")
        ang = theta @ self.directions.T
        ang = ang.unsqueeze(1).expand(-1, x.shape[1], -1) if ang.dim() == 2 else ang
        coef = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
        if self.gate is not None:
            alpha = torch.sigmoid(pool(self.gate(x), self.pooling, self.prefix))   # gate(mean x) = mean gate(x)
            coef = coef * alpha.repeat(1, 1, 2)
        return coef

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        theta = self.theta if theta is None else theta
        out = self.base(x)
        if theta is None:
            return out
        coef = self.coefficients(x, theta)                                  # (B, S, 2n)
        B, S, _ = x.shape
        xv = (x.reshape(B * S, -1) @ self.v.permute(1, 0, 2).reshape(x.shape[-1], -1)).view(B, S, 2 * self.n, self.r)
        mod = (xv * coef.unsqueeze(-1)).reshape(B * S, -1) @ self.u.permute(0, 2, 1).reshape(-1, out.shape[-1])
        return out + mod.view(B, S, -1).to(out.dtype)

    @torch.no_grad()
    def effective_weight(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """W_eff for one sequence (1, S, d_in) at each position: (S, d_out, d_in), built explicitly
        (for tests and inspection; forward never builds it)."""
        coef = self.coefficients(x, theta)[0]                               # (S, 2n)
        dw = torch.einsum("nor,nir->noi", self.u, self.v)                  # U_i V_iᵀ and P_i Q_iᵀ
        return self.base.weight + torch.einsum("sn,noi->soi", coef, dw)

    def modulation_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("base."))


class CoordinatePredictor(nn.Module):
    """The seed's amortised predictor: pooled token embeddings → MLP (input → hidden, `num_layers`
    residual GELU blocks behind one LayerNorm, → num_coordinates), L2-normalised to √num_coordinates
    (32 for the seed's 1024). Causal pooling gives one θ per position (B, S, C); the seed's sequence
    pooling gives one θ per sequence (B, C)."""

    def __init__(self, input_dim: int, num_coordinates: int = 1024, hidden_dim: int = 512, num_layers: int = 2,
                 pooling: str = "causal"):
        super().__init__()
        self.pooling, self.num_coordinates = check_pooling(pooling), num_coordinates
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, num_coordinates)
        self.prefix = PrefixMean()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        pooled = self.prefix(embeddings) if self.pooling == "causal" else embeddings.mean(1)
        h = F.gelu(self.input_proj(pooled))
        for layer in self.layers:
            h = h + F.gelu(layer(self.norm(h)))
        return F.normalize(self.output_proj(h), dim=-1) * math.sqrt(self.num_coordinates)

"""Phase 0: DnD's prompt-to-LoRA generator, scaled to this machine.

The condition is a batch of a task's unlabeled prompts encoded by the frozen MiniLM, keeping
token-level states: (prompts, tokens, 384), read as a 2-D map with one channel per prompt. A stack of
hyper-convolutional blocks grows it into the DnD token tensor (n_tokens, r + 2, chunk). Each block
applies LayerNorm, a width-wise and a height-wise map plus bias (averaged), then a channel conv, with
a residual where shapes match. The loss is DnD's: MSE weighted per token by the std of that token
across checkpoints, NaN-masked, with small noise on condition and target."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llgbm.core.utils import check_profile, preset_config


@dataclass
class GeneratorConfig:
    n_prompts: int = 16            # prompts per condition (DnD: 128)
    prompt_tokens: int = 24        # MiniLM token states kept per prompt (padded / truncated)
    enc_dim: int = 384             # MiniLM hidden size
    channels: tuple[int, ...] = (64, 256)   # hidden channel widths; the last block maps to n_tokens
    hidden_hw: tuple[int, int] = (16, 128)  # spatial size of the hidden maps
    cond_noise: float = 1e-4       # DnD's noise on the condition ...
    target_noise: float = 1e-5     # ... and on the target tokens
    init_scale: float = 1e-3       # the last map's initial weights are scaled by this (see HyperConvGenerator)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "GeneratorConfig":
        base = {"smoke": dict(n_prompts=4, prompt_tokens=8, channels=(8,), hidden_hw=(4, 16)),
                "quick": dict(), "full": dict(n_prompts=32, channels=(128, 512, 1024), hidden_hw=(24, 192))}
        return preset_config(cls, base[check_profile(profile)], overrides)


class HyperConvBlock(nn.Module):
    """(B, C, H, W) -> (B, C', H', W'): LayerNorm, mean of a width-wise and a height-wise map (each
    with bias; a map is a conv whose kernel spans the axis, which lets the block resize it), then a 1×1
    channel conv. Residual when the shapes match."""

    def __init__(self, c_in: int, c_out: int, hw_in: tuple[int, int], hw_out: tuple[int, int], last: bool = False):
        super().__init__()
        (h, w), (h2, w2) = hw_in, hw_out
        self.norm = nn.LayerNorm([h, w])
        self.width = nn.Linear(w, w2)           # acts along W, then H is resized by a fixed average
        self.height = nn.Linear(h, h2)          # acts along H, then W is resized likewise
        self.channel = nn.Conv2d(c_in, c_out, 1)
        self.hw_out, self.last = (h2, w2), last
        self.residual = (c_in, h, w) == (c_out, h2, w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h2, w2 = self.hw_out
        y = self.norm(x)
        a = F.adaptive_avg_pool2d(self.width(y), (h2, w2))                         # W -> W', then H -> H'
        b = F.adaptive_avg_pool2d(self.height(y.transpose(-1, -2)).transpose(-1, -2), (h2, w2))
        y = self.channel((a + b) / 2)
        if not self.last:
            y = F.gelu(y)
        return x + y if self.residual else y


class HyperConvGenerator(nn.Module):
    """Condition (B, n_prompts, prompt_tokens, enc_dim) -> DnD tokens (B, n_tokens, rows, cols)."""

    def __init__(self, cfg: GeneratorConfig, n_tokens: int, token_shape: tuple[int, int]):
        super().__init__()
        self.cfg, self.n_tokens, self.token_shape = cfg, n_tokens, tuple(token_shape)
        chans = [cfg.n_prompts, *cfg.channels]
        hws = [(cfg.prompt_tokens, cfg.enc_dim)] + [cfg.hidden_hw] * len(cfg.channels)
        blocks = [HyperConvBlock(chans[i], chans[i + 1], hws[i], hws[i + 1]) for i in range(len(cfg.channels))]
        blocks.append(HyperConvBlock(chans[-1], n_tokens, hws[-1], self.token_shape, last=True))
        self.blocks = nn.Sequential(*blocks)
        # Output = offset + a learned correction. The offset is set to the mean teacher token by
        # `set_offset`, and the last map starts near zero, so training starts from an adapter of the
        # teachers' scale. From a random start, the std row of every token would be O(1) against
        # teacher stds of O(0.01): LoRA weights ~100× too large, and deltas (phases 3–5) that dwarf
        # the teachers'.
        self.register_buffer("offset", torch.zeros(n_tokens, *self.token_shape))
        last = self.blocks[-1].channel
        with torch.no_grad():
            last.weight.mul_(cfg.init_scale)
            last.bias.zero_()

    def set_offset(self, mean_token: torch.Tensor) -> None:
        if tuple(mean_token.shape) != tuple(self.offset.shape):
            raise ValueError(f"offset must have shape {tuple(self.offset.shape)}, got {tuple(mean_token.shape)}")
        self.offset.copy_(torch.nan_to_num(mean_token))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg.cond_noise:
            cond = cond + self.cfg.cond_noise * torch.randn_like(cond)
        return self.blocks(cond) + self.offset

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def token_weights(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DnD's per-token loss weight: the std of each token across checkpoints (tokens: (N, T, R, C)),
    NaN-aware, normalised to mean 1 so the loss scale does not depend on the zoo."""
    mask = ~torch.isnan(tokens)
    x = torch.nan_to_num(tokens)
    n = mask.sum(0).clamp_min(1)
    mean = x.sum(0) / n
    var = ((x - mean) ** 2 * mask).sum(0) / n
    std = var.sqrt().flatten(1).sum(1) / (~torch.isnan(tokens[0])).flatten(1).sum(1).clamp_min(1)
    return std / std.mean().clamp_min(eps) + eps


class _ScaledSquareSum(torch.autograd.Function):
    """sum(scale · mask · (pred − target)²) with its gradient, 2·scale·mask·(pred − target), kept from
    the forward pass: a handful of passes over the (B, T, R, C) tokens instead of the dozen an autograd
    graph of sub, square, mask, sum, divide and weigh takes (on 2 cores the weight-only generator step
    spent more time there than in the generator itself)."""

    @staticmethod
    def forward(ctx, pred, target, mask, scale):
        diff = (pred - target).mul_(mask)
        scaled = diff * scale
        ctx.save_for_backward(scaled)
        return torch.dot(scaled.reshape(-1), diff.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        (scaled,) = ctx.saved_tensors
        g = scaled * (2 * grad)
        return g, (-g if ctx.needs_input_grad[1] else None), None, None


def weight_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                target_noise: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """NaN-masked, per-token weighted MSE between generated and teacher tokens (B, T, R, C): the mean
    over (B, T) of weights[t] × the mean squared error over the token's data entries.

    Pass `mask` (True on data, broadcastable to the target) with a NaN-free target to skip the NaN
    handling on every step: every checkpoint of one layout shares the same padding."""
    if mask is None:
        mask = ~torch.isnan(target)
        target = torch.nan_to_num(target)
    if target_noise:
        target = torch.randn_like(target).mul_(target_noise).add_(target)
    b, t = pred.shape[:2]
    counts = mask.flatten(2).sum(2) if mask.dim() == pred.dim() else mask.flatten(1).sum(1)[None]   # (B or 1, T)
    scale = 1.0 / (counts.clamp_min(1).to(pred.dtype) * (b * t))
    if weights is not None:
        scale = scale * weights
    return _ScaledSquareSum.apply(pred, target, mask, scale[..., None, None])


@torch.no_grad()
def encode_prompts(encoder, prompts: list[str], prompt_tokens: int, batch_size: int = 64) -> torch.Tensor:
    """MiniLM token-level states, padded/truncated to `prompt_tokens`: (len(prompts), prompt_tokens, 384)."""
    states = encoder.encode(prompts, output_value="token_embeddings", batch_size=batch_size,
                            convert_to_numpy=False, show_progress_bar=False)
    out = torch.zeros(len(prompts), prompt_tokens, states[0].shape[-1])
    for i, s in enumerate(states):
        s = s[:prompt_tokens].float().cpu()
        out[i, :len(s)] = s
    return out


def sample_condition(encoded: torch.Tensor, n_prompts: int, rng: np.random.Generator) -> torch.Tensor:
    """A random prompt batch of one task: (n_prompts, prompt_tokens, enc_dim), drawn without replacement."""
    idx = rng.choice(len(encoded), size=n_prompts, replace=len(encoded) < n_prompts)
    return encoded[torch.as_tensor(idx)]

"""The generator's objectives (phases 3–6): the delta of generated LoRA weights through the frozen
base model (DeltaSupervision), the delta loss, and LLGBM's MultiTaskLoss / DeltaOnlyLoss:
Loss = λ_w·L_weight(generated tokens, teacher tokens) + λ_d·L_delta(Δ_generated, Δ_teacher)
     + λ_kd·KL(teacher ‖ generated) + λ_sft·L_sft (phase 6; both from llgbm.generator.supervision).

L_delta is the squared error of the delta relative to the teacher delta's squared norm (1 for a
generator that predicts no change), so the two terms start on the same scale."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from llgbm.core.functional import FunctionalLoRA, compute_delta_differentiable, tokenize_probes
from llgbm.core.utils import hash_bytes
from llgbm.delta.activations import compute_base_activation, probe_hash
from llgbm.generator.network import weight_loss
from llgbm.generator.tokenizer import LoRATokenizer2D


class DeltaSupervision:
    """Δ of generated tokens on the frozen base model, differentiable (phase 3 machinery).

    The base model's parameters are frozen here (requires_grad False): only the generator learns, and
    the backward pass then computes input gradients alone, not weight gradients of 135M parameters."""

    def __init__(self, model, tokenizer, probes: list[str], lora_config, lora_tokenizer: LoRATokenizer2D,
                 base_activation: np.ndarray | torch.Tensor | None = None, mode: str = "hooks"):
        model.requires_grad_(False)
        self.flora = FunctionalLoRA.from_lora_config(model, lora_config, mode)
        self.probes = tokenize_probes(tokenizer, probes, next(model.parameters()).device)
        self.probe_hash = probe_hash(probes)
        if base_activation is None:
            base_activation = compute_base_activation(model, tokenizer, probes)
        self.base = torch.as_tensor(base_activation, dtype=torch.float32)
        self.lora_tokenizer = lora_tokenizer
        # What a generated Δ depends on besides the tokens: the probes and the base model (through its
        # activation on them). Cached deltas are filed under it.
        self.key = hash_bytes(self.probe_hash.encode(), self.base.numpy().tobytes())[:12]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generated tokens (B, T, R, C) -> Δ (B, hidden)."""
        return compute_delta_differentiable(self.flora, self.lora_tokenizer.detokenize_batch(tokens), self.probes, self.base)


def delta_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of ‖Δ̂ − Δ‖² / ‖Δ‖²: 0 for a perfect match, 1 for predicting no change."""
    return ((pred - target).square().sum(-1) / target.square().sum(-1).clamp_min(eps)).mean()


class MultiTaskLoss(nn.Module):
    """λ_w·L_weight + λ_d·L_delta + λ_kd·L_kd + λ_sft·L_sft; returns the total and its terms. The
    weight term is always computed, since every objective logs it (with λ_w = 0 without a graph: no
    backward pass through it); the others only when their λ > 0, since each costs a forward and
    backward pass of the base model. The output terms arrive computed (`outputs`: {"kd": …, "sft": …}
    from `outputs.OutputSupervision`)."""

    def __init__(self, lambda_w: float = 1.0, lambda_d: float = 1.0, token_weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, target_noise: float = 0.0, lambda_kd: float = 0.0,
                 lambda_sft: float = 0.0):
        super().__init__()
        lambdas = dict(λ_w=lambda_w, λ_d=lambda_d, λ_kd=lambda_kd, λ_sft=lambda_sft)
        if min(lambdas.values()) < 0 or sum(lambdas.values()) == 0:
            raise ValueError(f"need every λ ≥ 0 and not all 0, got {', '.join(f'{k}={v:g}' for k, v in lambdas.items())}")
        self.lambda_w, self.lambda_d, self.lambda_kd, self.lambda_sft = lambda_w, lambda_d, lambda_kd, lambda_sft
        self.token_weights, self.mask, self.target_noise = token_weights, mask, target_noise

    def forward(self, pred_tokens, target_tokens, pred_delta=None, target_delta=None, outputs=None):
        with torch.set_grad_enabled(bool(self.lambda_w) and torch.is_grad_enabled()):
            # λ_w = 0: its backward pass added exact zeros to the gradient, at the cost of several
            # passes over SmolLM2's (B, 2550, 10, 130) tokens every step
            l_w = weight_loss(pred_tokens, target_tokens, self.token_weights, self.target_noise, mask=self.mask)
        terms = {"weight": l_w}
        total = self.lambda_w * l_w
        if self.lambda_d:
            if pred_delta is None or target_delta is None:
                raise ValueError("λ_d > 0 needs the generated and teacher deltas")
            terms["delta"] = delta_loss(pred_delta, target_delta)
            total = total + self.lambda_d * terms["delta"]
        for name, lam in (("kd", self.lambda_kd), ("sft", self.lambda_sft)):
            if lam:
                if outputs is None or name not in outputs:
                    raise ValueError(f"λ_{name} > 0 needs the {name} loss of the generated adapters (outputs[{name!r}])")
                terms[name] = outputs[name]
                total = total + lam * outputs[name]
        return total, terms


class DeltaOnlyLoss(MultiTaskLoss):
    """L_delta alone (phase 5); the weight term is still returned, for the record."""

    def __init__(self, **kw):
        super().__init__(lambda_w=0.0, lambda_d=1.0, **kw)


def gradient_flow(gen: nn.Module, supervision: DeltaSupervision, cond: torch.Tensor, target_delta: torch.Tensor,
                  step_size: float = 1e-2) -> dict:
    """Does the delta loss train the generator? The gradient norm reaching each generator block, the
    number of base-model parameters that received a gradient (should be 0), and the loss before and
    after one gradient step of norm `step_size` on the same batch (a descent step if gradients flow)."""
    gen.zero_grad(set_to_none=True)
    loss = delta_loss(supervision(gen(cond)), target_delta)
    loss.backward()
    blocks = {f"block {i}": float(torch.sqrt(sum(p.grad.square().sum() for p in b.parameters())))
              for i, b in enumerate(gen.blocks)}
    base_with_grad = sum(p.grad is not None for p in supervision.flora.model.parameters())
    with torch.no_grad():
        total = torch.sqrt(sum(p.grad.square().sum() for p in gen.parameters()))
        for p in gen.parameters():
            p -= step_size / total * p.grad
        after = delta_loss(supervision(gen(cond)), target_delta).item()
    return dict(block_grad_norms=blocks, base_params_with_grad=int(base_with_grad), loss_before=loss.item(), loss_after=after)

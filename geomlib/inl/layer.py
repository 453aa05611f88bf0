"""The integrator neuron (seed 004): a controller reads [h, x, v] and sets an inertia α, a correction
β and a gate g; the state relaxes toward a learned equilibrium μ by v ← α·v − β·(x − μ),
x ← x + dt·g·v. `IntegratorNeuronLayer.relax` runs the iterations, with the seed's all-or-nothing
early stop per batch or our per-token one, and returns trajectories and iteration counts on request."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EARLY_STOP = (None, "batch", "token")


@dataclass(frozen=True)
class IntegratorConfig:
    dim: int
    controller_hidden: int = 64         # the seed's controller: Linear(3d, 64) → ReLU → Linear(64, 3d)
    dt: float = 0.1
    group_size: int = 64                # μ = μ_global + one learned offset per group of 64 dimensions (the LM's code)
    mu_init: float = 0.0                # the LM's target_value (the toy model's default is 5.0)
    # The fuller "integrator neuron" of the seed's toy model; the language model uses none of these.
    candidate_velocity: bool = False    # code (toy): v ← α·v + (1 − α)·v_cand − β·(x − μ)
    dynamic_gain: str | None = None     # "code": α = α_base·exp(−κ‖x − μ‖); "readme": α_base·(1 − exp(−κ‖x − μ‖))
    kappa: float = 1.0
    harmonic_amplitude: float = 0.0     # code (toy): v += A·sin(γ·t + φ), γ, φ learned, t a step counter (0.03 there)
    mu_ema: float | None = None         # README only: μ ← m·μ + (1 − m)·mean(x_T) in training (m = 0.9999 there)

    def __post_init__(self):
        if self.dynamic_gain not in (None, "code", "readme"):
            raise ValueError(f"dynamic_gain={self.dynamic_gain!r}: expected None, 'code' or 'readme'")
        if self.dim < 1 or self.group_size < 1:
            raise ValueError(f"dim and group_size must be ≥ 1, got {self.dim} and {self.group_size}")


class IntegratorNeuronLayer(nn.Module):
    def __init__(self, cfg: IntegratorConfig | int, **overrides):
        super().__init__()
        cfg = IntegratorConfig(dim=cfg, **overrides) if isinstance(cfg, int) else cfg
        self.cfg, d = cfg, cfg.dim
        n_out = 4 * d if cfg.candidate_velocity else 3 * d
        self.controller = nn.Sequential(nn.Linear(3 * d, cfg.controller_hidden), nn.ReLU(),
                                        nn.Linear(cfg.controller_hidden, n_out))
        self.mu_global = nn.Parameter(torch.tensor(float(cfg.mu_init)))
        self.mu_offsets = nn.Parameter(torch.zeros(math.ceil(d / cfg.group_size)))
        if cfg.harmonic_amplitude:
            self.gamma = nn.Parameter(torch.randn(d) * 0.1 + 1.0)
            self.phi = nn.Parameter(torch.rand(d) * 2 * math.pi)
            self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        if cfg.mu_ema is not None:
            self.register_buffer("mu_ema_offset", torch.zeros(d))

    def mu(self) -> torch.Tensor:
        mu = self.mu_global + self.mu_offsets.repeat_interleave(self.cfg.group_size)[: self.cfg.dim]
        return mu + self.mu_ema_offset if self.cfg.mu_ema is not None else mu

    def step(self, h: torch.Tensor, x: torch.Tensor, v: torch.Tensor, mu: torch.Tensor | None = None):
        """One integration step on rows of (h, x, v): returns (x_next, v_next)."""
        cfg = self.cfg
        mu = self.mu() if mu is None else mu
        ctrl = self.controller(torch.cat([h, x, v], dim=-1)).split(cfg.dim, dim=-1)
        alpha, beta, gate = torch.sigmoid(ctrl[0]), F.softplus(ctrl[1]), torch.sigmoid(ctrl[2])
        err = x - mu
        if cfg.dynamic_gain:
            decay = torch.exp(-cfg.kappa * err.norm(dim=-1, keepdim=True))
            alpha = alpha * (decay if cfg.dynamic_gain == "code" else 1 - decay)
        v_next = alpha * v - beta * err
        if cfg.candidate_velocity:
            v_next = v_next + (1 - alpha) * ctrl[3]
        if cfg.harmonic_amplitude:
            v_next = v_next + cfg.harmonic_amplitude * torch.sin(self.gamma * self.global_step.float() + self.phi)
            if self.training:
                self.global_step += 1
        return x + cfg.dt * gate * v_next, v_next

    def relax(self, h: torch.Tensor, x0: torch.Tensor, num_iterations: int, early_stop: str | None = None,
              tol: float = 1e-3, min_iterations: int = 3, return_trajectory: bool = False,
              compact_below: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Iterate from x0 (v0 = 0) with context h, rows (…, d). early_stop:
        - None: all `num_iterations`;
        - "batch": the seed's rule: from iteration index t ≥ min_iterations (0-based, so at least
          min_iterations + 1 steps), stop when ‖Δx‖ < tol for every row at once; rows that converged
          earlier keep moving until then (only the count stops);
        - "token": a converged row freezes at once; when fewer than `compact_below` of the rows are
          still active, only those are gathered and computed.
        info: `iterations` (per row), and `x`, `v` trajectories (rows, T+1, d) when asked."""
        if early_stop not in EARLY_STOP:
            raise ValueError(f"early_stop={early_stop!r}: expected one of {EARLY_STOP}")
        shape = x0.shape
        h, x = h.reshape(-1, shape[-1]), x0.reshape(-1, shape[-1])
        v = torch.zeros_like(x)
        mu = self.mu()
        n = x.shape[0]
        iters = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        xs, vs = ([x], [v]) if return_trajectory else (None, None)
        for t in range(num_iterations):
            check = early_stop is not None and t >= min_iterations
            if early_stop == "token" and not active.all():
                idx = active.nonzero().squeeze(1)
                if len(idx) < compact_below * n:
                    xa, va = self.step(h[idx], x[idx], v[idx], mu)
                    x_next, v_next = x.index_copy(0, idx, xa), v.index_copy(0, idx, va)
                else:
                    xa, va = self.step(h, x, v, mu)
                    keep = active.unsqueeze(1)
                    x_next, v_next = torch.where(keep, xa, x), torch.where(keep, va, v)
            else:
                x_next, v_next = self.step(h, x, v, mu)
            iters += active
            if check:
                done = (x_next - x).norm(dim=-1) < tol
                active = active & ~done
            x, v = x_next, v_next
            if return_trajectory:
                xs.append(x)
                vs.append(v)
            if check and not active.any():
                break
        if self.training and self.cfg.mu_ema is not None:
            with torch.no_grad():
                m = self.cfg.mu_ema
                target = x.detach().mean(0) - (mu.detach() - self.mu_ema_offset)
                self.mu_ema_offset.mul_(m).add_((1 - m) * target)
        info = {"iterations": iters.view(shape[:-1])}
        if return_trajectory:
            info.update(x=torch.stack(xs, dim=1), v=torch.stack(vs, dim=1))
        return x.view(shape), v.view(shape), info

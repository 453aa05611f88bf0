"""The seed's training objective and schedule: `IntegratorLoss` (task loss + variance-weighted,
annealed L_mean + early-weighted L_speed + L_energy on the velocities) and the equilibrium /
exploration cycle scheduler (`create_cycle_scheduler`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llgbm.core.utils import check_known

# The code's defaults and the README's V2 values differ; both are named so a reader can pick either.
LOSS_PRESETS = {
    "code": dict(target_value=5.0, lambda_mean_init=1.0, lambda_speed=0.1, lambda_energy=0.01),
    "readme": dict(target_value=0.0, lambda_mean_init=0.1, lambda_speed=0.01, lambda_energy=0.001),
}


class IntegratorLoss(nn.Module):
    """total = L_task + L_mean + L_speed + L_energy, as the seed's code computes them:
    - L_mean = λ_mean(epoch)·mean_d[w_d·mean_b (x_T − target)²], w_d = 1/(1 + Var_b x_T) normalised to mean 1
      (or the batch mean's squared error without variance weighting); λ_mean anneals from
      lambda_mean_init to ·annealing_factor over annealing_epochs (exponential or linear);
    - L_speed = λ_speed·mean_{b,d} Σ_t w_t |x_t − target|, w_t ∝ exp(−3t/T), t = 1..T;
    - L_energy = λ_energy·mean |v|^p over the whole trajectory (v_0 included).
    In the exploration phase λ_mean and λ_energy take their exploration values."""

    def __init__(self, target_value: float = 5.0, lambda_mean_init: float = 1.0, lambda_speed: float = 0.1,
                 lambda_energy: float = 0.01, energy_p: float = 2.0, annealing_schedule: str = "exponential",
                 annealing_factor: float = 0.1, annealing_epochs: int = 100, variance_weighted: bool = True,
                 exploration_phase: bool = False, exploration_lambda_mean: float = 0.05,
                 exploration_lambda_energy: float = 0.001, task_loss_type: str = "mse"):
        super().__init__()
        if task_loss_type not in ("mse", "ce"):
            raise ValueError(f"task_loss_type={task_loss_type!r}: expected 'mse' (regression) or 'ce' (language modelling)")
        if annealing_schedule not in ("exponential", "linear"):
            raise ValueError(f"annealing_schedule={annealing_schedule!r}: expected 'exponential' or 'linear'")
        self.target_value, self.lambda_mean_init = target_value, lambda_mean_init
        self.lambda_speed, self.lambda_energy, self.energy_p = lambda_speed, lambda_energy, energy_p
        self.annealing_schedule, self.annealing_factor, self.annealing_epochs = annealing_schedule, annealing_factor, annealing_epochs
        self.variance_weighted, self.exploration_phase = variance_weighted, exploration_phase
        self.exploration_lambda_mean, self.exploration_lambda_energy = exploration_lambda_mean, exploration_lambda_energy
        self.task_loss_type = task_loss_type

    @classmethod
    def preset(cls, name: str, **overrides) -> "IntegratorLoss":
        if name not in LOSS_PRESETS:
            raise ValueError(f"unknown IntegratorLoss preset {name!r}; known: {', '.join(LOSS_PRESETS)}")
        return cls(**{**LOSS_PRESETS[name], **overrides})

    def set_exploration_phase(self, is_exploration: bool) -> None:
        self.exploration_phase = bool(is_exploration)

    def get_lambda_mean(self, epoch: int) -> float:
        if self.exploration_phase:
            return self.exploration_lambda_mean
        if epoch >= self.annealing_epochs:
            return self.lambda_mean_init * self.annealing_factor
        p = epoch / self.annealing_epochs
        if self.annealing_schedule == "exponential":
            return self.lambda_mean_init * self.annealing_factor ** p
        return self.lambda_mean_init * (1 - p * (1 - self.annealing_factor))

    def task_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task_loss_type == "ce":
            return F.cross_entropy(predictions, targets)
        return F.mse_loss(predictions, targets)

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor, trajectory: dict | None = None,
                epoch: int = 0, learned_mu: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {"L_task": self.task_loss(predictions, targets)}
        total = out["L_task"]
        if trajectory is not None:
            xs, vs = trajectory["x"], trajectory["v"]           # (rows, T+1, d)
            target = self.target_value if learned_mu is None else learned_mu
            x_final = xs[:, -1]
            lam = self.get_lambda_mean(epoch)
            if self.variance_weighted:
                w = 1.0 / (1.0 + x_final.var(dim=0))
                w = w / w.sum() * w.numel()
                out["L_mean"] = lam * (w * ((x_final - target) ** 2).mean(0)).mean()
            else:
                out["L_mean"] = lam * ((x_final.mean(0) - target) ** 2).mean()
            T = xs.shape[1] - 1
            if T == 0:
                out["L_speed"] = xs.new_zeros(())
            else:
                wt = torch.exp(-torch.arange(1, T + 1, device=xs.device, dtype=xs.dtype) / (T / 3.0))
                wt = wt / wt.sum()
                out["L_speed"] = self.lambda_speed * ((xs[:, 1:] - self.target_value).abs() * wt.view(1, -1, 1)).sum(1).mean()
            lam_e = self.exploration_lambda_energy if self.exploration_phase else self.lambda_energy
            out["L_energy"] = lam_e * (vs.abs() ** self.energy_p).mean()
            total = total + out["L_mean"] + out["L_speed"] + out["L_energy"]
        out["total"] = total
        out["lambda_mean"] = torch.tensor(self.get_lambda_mean(epoch))
        return out


@dataclass(frozen=True)
class Phase:
    name: str
    lambda_mean: float
    excitation_amplitude: float
    duration_epochs: int


# The code's three presets, and 'equilibrium', which only the README uses (the code raises on it):
# we define it as the equilibrium phase throughout (λ_mean 0.5, no excitation, never exploring),
# the reading its name gives, so the README's loop runs.
CYCLE_PRESETS = {
    "conservative": dict(equilibrium=(0.8, 0.0, 15), exploration=(0.1, 0.02, 15), num_cycles=4, warmup_epochs=20),
    "balanced": dict(equilibrium=(0.5, 0.0, 10), exploration=(0.05, 0.05, 20), num_cycles=5, warmup_epochs=10),
    "aggressive": dict(equilibrium=(0.3, 0.0, 5), exploration=(0.01, 0.08, 25), num_cycles=6, warmup_epochs=5),
    "equilibrium": dict(equilibrium=(0.5, 0.0, 10), exploration=None, num_cycles=0, warmup_epochs=0),
}


class EquilibriumExplorationScheduler:
    """Warmup epochs in the equilibrium phase, then num_cycles × (equilibrium, exploration); after the
    last cycle the exploration phase continues (the code's rule), or equilibrium if there is none."""

    def __init__(self, equilibrium: tuple, exploration: tuple | None, num_cycles: int, warmup_epochs: int):
        self.equilibrium = Phase("equilibrium", *equilibrium)
        self.exploration = Phase("exploration", *exploration) if exploration else None
        self.schedule: list[tuple[int, int, Phase]] = []
        e = 0
        if warmup_epochs:
            self.schedule.append((0, warmup_epochs, self.equilibrium))
            e = warmup_epochs
        for _ in range(num_cycles):
            for ph in (self.equilibrium, self.exploration):
                self.schedule.append((e, e + ph.duration_epochs, ph))
                e += ph.duration_epochs

    def total_epochs(self) -> int:
        return self.schedule[-1][1] if self.schedule else 0

    def phase(self, epoch: int) -> Phase:
        for start, end, ph in self.schedule:
            if start <= epoch < end:
                return ph
        return self.exploration or self.equilibrium

    def step(self, epoch: int) -> dict:
        ph = self.phase(epoch)
        return {"phase_name": ph.name, "lambda_mean": ph.lambda_mean, "excitation_amplitude": ph.excitation_amplitude,
                "is_exploration": ph.name == "exploration"}


def create_cycle_scheduler(preset: str = "balanced", **overrides) -> EquilibriumExplorationScheduler:
    if preset not in CYCLE_PRESETS:
        raise ValueError(f"unknown cycle-scheduler preset {preset!r}; known presets: {', '.join(CYCLE_PRESETS)}")
    check_known(overrides, CYCLE_PRESETS[preset], "scheduler option(s)")
    return EquilibriumExplorationScheduler(**{**CYCLE_PRESETS[preset], **overrides})


"""The seed's training recipe: a three-phase curriculum (contrastive → interference → temporal
consistency) with phase boundaries at the README's fractions, two learning rates (base 3e-4,
coordinates 1e-3) in one AdamW (β 0.9/0.95, weight decay 0.1), clipping at 1.0, and checkpoints
(safetensors + optimizer state) that resume exactly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from llgbm.core import checkpoint

CHECKPOINT = "checkpoint.safetensors"

PHASES = ("primitive_differentiation", "compositional_blending", "conversational_dynamics")
README_BOUNDARIES = (0.2, 0.6)               # "0-20%, 20-60%, 60-100%"
CODE_BOUNDARIES = (500 / 7500, 2500 / 7500)  # the code sizes phases by tokens: 500M, 2B, 5B
PHASE_WEIGHTS = {"contrastive": 0.1, "sparsity": 0.1, "interference": 0.1, "smoothness": 0.05, "temporal": 0.05}


class CurriculumScheduler:
    def __init__(self, total_steps: int, boundaries: tuple[float, float] = README_BOUNDARIES, warmup: int = 0,
                 lr_base: float = 3e-4, lr_coords: float = 1e-3):
        if total_steps < 1:
            raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
        if not 0 < boundaries[0] < boundaries[1] < 1:
            raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {boundaries}")
        self.total, self.warmup, self.lr_base, self.lr_coords = total_steps, warmup, lr_base, lr_coords
        ends = [round(b * total_steps) for b in boundaries] + [total_steps]
        self.spans = list(zip(PHASES, [0, *ends[:-1]], ends))

    def phase(self, step: int) -> str:
        return next((name for name, s, e in self.spans if s <= step < e), PHASES[-1])

    def learning_rates(self, step: int) -> dict[str, float]:
        """Warmup, then a cosine decay within each phase (the seed's schedule)."""
        name, s, e = next(((n, s, e) for n, s, e in self.spans if s <= step < e), self.spans[-1])
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * (step - s) / max(1, e - s)))
        return {"base": self.lr_base * warm * decay, "coordinates": self.lr_coords * warm * decay}

    def losses(self, step: int, theta: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The phase's auxiliary losses on θ ((B, C), or (B, S, C) per position), the seed's weights:
        - contrastive (phase 1): −0.1·mean ‖θ_a − θ_b‖ over pairs from different `groups` (maximise distance),
          plus 0.1·mean|θ| sparsity;
        - interference (phase 2): 0.1·mean (θ − mean θ of its group)²… the seed's "composition" term,
          plus 0.05·Var θ smoothness;
        - temporal (phase 3): 0.05·mean ‖θ_t − θ_{t−1}‖² over positions (per-position θ only)."""
        name, w = self.phase(step), PHASE_WEIGHTS
        seq = theta.mean(1) if theta.dim() == 3 else theta
        out = {}
        if name == PHASES[0]:
            if groups is not None and len(seq) > 1:
                diff = groups[:, None] != groups[None, :]
                if diff.any():
                    out["contrastive"] = -w["contrastive"] * torch.cdist(seq, seq)[diff].mean()
            out["sparsity"] = w["sparsity"] * seq.abs().mean()
        elif name == PHASES[1]:
            if groups is not None:
                centre = torch.stack([seq[groups == g].mean(0) for g in groups.tolist()])
                out["interference"] = w["interference"] * ((seq - centre) ** 2).mean()
            out["smoothness"] = w["smoothness"] * seq.var(0).mean()
        elif theta.dim() == 3 and theta.shape[1] > 1:
            out["temporal"] = w["temporal"] * ((theta[:, 1:] - theta[:, :-1]) ** 2).sum(-1).mean()
        return out


def make_optimizer(host, lr_base: float = 3e-4, lr_coords: float = 1e-3, train_base: bool = True) -> torch.optim.AdamW:
    """One AdamW, two groups: the base model's weights and everything coordinate-related."""
    coord = {id(p) for p in host.coordinate_parameters()}
    base = [p for p in host.parameters() if id(p) not in coord and p.requires_grad] if train_base else []
    groups = [{"params": [p for p in host.coordinate_parameters() if p.requires_grad], "lr": lr_coords, "name": "coordinates"}]
    if base:
        groups.insert(0, {"params": base, "lr": lr_base, "name": "base"})
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.1)


def set_learning_rates(opt, rates: dict[str, float]) -> None:
    for g in opt.param_groups:
        g["lr"] = rates[g["name"]]


def save_checkpoint(path: Path | str, host, opt, step: int, extra: dict | None = None) -> None:
    """A checkpoint folder holding one file (`llgbm.core.checkpoint`): the weights (tied ones once),
    the AdamW state, `step` and `extra`."""
    Path(path).mkdir(parents=True, exist_ok=True)
    checkpoint.save(Path(path) / CHECKPOINT, dict(step=step, **(extra or {})), model=host, opt=opt)


def checkpoint_state(path: Path | str) -> dict:
    """The JSON state of the checkpoint folder `path` without loading its weights."""
    path = Path(path)
    if (path / CHECKPOINT).exists():
        return checkpoint.read_state(path / CHECKPOINT)
    if (path / "state.json").exists():                 # the layout before llgbm.core.checkpoint
        return json.loads((path / "state.json").read_text())
    raise FileNotFoundError(f"no checkpoint at {path} (expected {CHECKPOINT})")


def load_checkpoint(path: Path | str, host, opt=None) -> dict:
    """Weights into `host` and, when an optimizer is given (to resume training), its AdamW state."""
    path = Path(path)
    if (path / CHECKPOINT).exists():
        return checkpoint.load(path / CHECKPOINT, model=host, opt=opt)[1]
    if (path / "state.json").exists():                 # the layout before llgbm.core.checkpoint
        return checkpoint.load_legacy_folder(path, model=host, opt=opt)[1]
    raise FileNotFoundError(f"no checkpoint at {path} (expected {CHECKPOINT})")

"""Generator training. Phase 0 trains on weights alone (DnD); the behavioural losses of phases
3–5 plug into the same loop.

Conditions are encoded once per task (MiniLM on CPU would otherwise dominate every step). A training
pair is a random prompt batch of a training task with one of its zoo checkpoints."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .generator import GeneratorConfig, HyperConvGenerator, encode_prompts, sample_condition, token_weights, weight_loss
from .tasks import get_task
from .tokenizer import LoRATokenizer2D
from .utils import atomic_dir, check_profile, seed_everything
from .zoo import load_adapter_weights


@dataclass
class TrainingConfig:
    steps: int = 250
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seeds: tuple[int, ...] = (0, 1, 2)     # generator seeds (≥ 3 for the quick report)
    eval_items: int = 64                   # test items per held-out task (8 tasks x 64 = 512 items)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "TrainingConfig":
        base = {"smoke": dict(steps=4, batch_size=2, seeds=(0, 1), eval_items=4), "quick": dict(),
                "full": dict(steps=2000, eval_items=100)}
        return replace(cls(**base[check_profile(profile)]), **overrides)


class GeneratorData:
    """Training pairs for the generator: per-task encoded prompts and per-checkpoint DnD tokens."""

    def __init__(self, encoder, zoo_root: Path, manifest: list[dict], lora_tokenizer: LoRATokenizer2D,
                 gcfg: GeneratorConfig):
        self.rows = [r for r in manifest if not get_task(r["task"]).heldout]
        if not self.rows:
            raise ValueError("the zoo has no checkpoint of a training (non-held-out) task")
        self.gcfg, self.lora_tokenizer = gcfg, lora_tokenizer
        self.tasks = sorted({r["task"] for r in self.rows})
        self.encoded = {t: encode_prompts(encoder, get_task(t).prompts("train"), gcfg.prompt_tokens) for t in self.tasks}
        self.tokens = torch.stack([lora_tokenizer.tokenize(load_adapter_weights(zoo_root / r["path"]))
                                   for r in self.rows])
        self.weights = token_weights(self.tokens)
        self.mask = lora_tokenizer.mask()              # one padding pattern per layout
        self.tokens.nan_to_num_()                      # targets are NaN-free from here on; the mask remembers

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.integers(0, len(self.rows), size=batch_size)
        cond = torch.stack([sample_condition(self.encoded[self.rows[i]["task"]], self.gcfg.n_prompts, rng) for i in idx])
        return cond, self.tokens[torch.as_tensor(idx)]


def train_generator(data: GeneratorData, gcfg: GeneratorConfig, cfg: TrainingConfig, seed: int,
                    progress: bool = True) -> tuple[HyperConvGenerator, list[float]]:
    """Weight-only training (DnD's objective); returns the generator and its loss curve."""
    seed_everything(seed)
    gen = HyperConvGenerator(gcfg, data.tokens.shape[1], data.tokens.shape[2:])
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    rng = np.random.default_rng(seed)
    losses = []
    gen.train()
    for _ in tqdm(range(cfg.steps), desc=f"generator seed {seed}", disable=not progress, leave=False):
        cond, target = data.batch(rng, cfg.batch_size)
        loss = weight_loss(gen(cond), target, data.weights, gcfg.target_noise, mask=data.mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return gen.eval(), losses


@torch.no_grad()
def generate_adapter(gen: HyperConvGenerator, encoder, lora_tokenizer: LoRATokenizer2D, lora_config,
                     prompts: list[str], out_dir: Path | str) -> tuple[Path, float]:
    """Prompts -> a peft adapter folder (loads with PeftModel.from_pretrained); returns it and the seconds
    it took end to end (encoding, generation, detokenisation, writing)."""
    t0 = time.perf_counter()
    gcfg = gen.cfg
    encoded = encode_prompts(encoder, prompts, gcfg.prompt_tokens)
    if len(encoded) < gcfg.n_prompts:   # too few prompts: repeat them (DnD conditions on a fixed count)
        encoded = encoded[torch.arange(gcfg.n_prompts) % len(encoded)]
    tokens = gen(encoded[: gcfg.n_prompts][None])[0]
    state = lora_tokenizer.detokenize(tokens)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
    return out_dir, time.perf_counter() - t0

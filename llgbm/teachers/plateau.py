"""Teachers trained to a plateau of their dev loss, not a fixed step count (issue 27).

A held-out task's own teacher is the denominator of its gap recovery: a teacher stopped early makes
every method look closer to it than it is. `train_to_plateau` scores the dev split every
`check_every` steps and stops when `patience` checks in a row fail to lower the best dev loss by a
relative `tol` (`stats.PLATEAU`, the rule every plateau in this lab uses), or at `max_steps`. It
keeps the best checkpoint (by dev loss, never by test items) and records how many steps it took.

Crash-safe like the zoo's runs: a resume state is saved at every check, and a finished run writes
`run.json` and is never trained again. Its checkpoint row has the zoo manifest's fields."""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from llgbm.core import artefacts, checkpoint, stats
from llgbm.core.lora import adapter_hash, check_finite
from llgbm.core.tasks import get_task
from llgbm.core.utils import atomic_dir, atomic_write_json, check_profile, config_hash, preset_config
from llgbm.eval.scoring import build_batch, encode_pairs, evaluate_task, gold_loglik
from llgbm.teachers.run import HASH_VERSION, ZooConfig, batch_indices, teacher_step


@dataclass(frozen=True)
class PlateauConfig:
    check_every: int = 20          # steps between dev-loss checks
    max_steps: int = 400           # a run that has not plateaued by then stops, and says so
    patience: int = 2              # checks in a row without a relative drop ≥ tol
    tol: float = stats.PLATEAU
    dev_items: int = 32            # dev items scored per check (the task's dev split holds ≤ MAX_DEV)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "PlateauConfig":
        base = {"smoke": dict(check_every=2, max_steps=6, patience=1, dev_items=4),
                "quick": dict(),
                "full": dict(check_every=50, max_steps=2000, patience=3)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def __post_init__(self):
        if self.check_every < 1 or self.max_steps < self.check_every or self.patience < 1 or self.dev_items < 1:
            raise ValueError(f"need check_every ≥ 1, max_steps ≥ check_every, patience ≥ 1 and dev_items ≥ 1; got {self}")


def dev_loss(model, tokenizer, task, n: int) -> float:
    """Mean negative log-likelihood per gold-answer token over the task's first n dev items."""
    if not task.dev:
        raise ValueError(f"task {task.name!r} has no dev split: plateau training needs one (the large suite's tasks have it)")
    return float(-np.mean(gold_loglik(model, tokenizer, task, task.dev[:n])))


def run_key(zcfg: ZooConfig, pcfg: PlateauConfig) -> str:
    fields = {k: getattr(zcfg, k) for k in ("rank", "alpha", "targets", "lr", "warmup", "batch_size")}
    return config_hash(dict(fields, **asdict(pcfg)), 8)


def train_to_plateau(base_model, tokenizer, task_name: str, seed: int, zcfg: ZooConfig, pcfg: PlateauConfig, root: Path,
                     progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Train (or resume, or read back) one teacher to its dev-loss plateau; its run record.
    `stop_after` interrupts it after that many steps (to test resume) and returns None."""
    run_dir = Path(root) / task_name / f"seed{seed}-plateau-{run_key(zcfg, pcfg)}"
    if (run_dir / "run.json").exists():
        artefacts.used(run_dir, trained=False)
        return json.loads((run_dir / "run.json").read_text())
    task = get_task(task_name)
    dev_loss(base_model, tokenizer, task, 1)            # refuse a task without a dev split before training
    torch.manual_seed(zlib.crc32(f"{task_name}/{seed}".encode()))
    model = get_peft_model(base_model, zcfg.lora_config())
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=zcfg.lr, weight_decay=0.0)
        state_path, st = run_dir / "state.safetensors", dict(step=0, losses=[], checks=[], best_step=0, best_dev=None,
                                                           stale=0, seconds=0.0)
        best = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        if state_path.exists():
            weights, st = checkpoint.load(state_path, opt=opt, params=params)
            set_peft_model_state_dict(model, {k[5:]: v for k, v in weights.items() if k.startswith("lora/")})
            best = {k[5:]: v for k, v in weights.items() if k.startswith("best/")}
        else:                                              # step 0: the base model (LoRA B = 0)
            st["best_dev"] = dev_loss(model, tokenizer, task, pcfg.dev_items)
            st["checks"].append([0, st["best_dev"]])
        encoded = encode_pairs(tokenizer, task, task.train)
        device = next(model.parameters()).device
        for step in tqdm(range(st["step"], pcfg.max_steps), desc=f"{task_name}/seed{seed} to plateau", disable=not progress, leave=False):
            model.train()
            t0 = time.perf_counter()
            batch = build_batch([encoded[i] for i in batch_indices(len(encoded), zcfg.batch_size, seed, step)],
                                tokenizer.pad_token_id, device)
            loss = teacher_step(model, opt, batch, zcfg, step, f"teacher {task_name}/seed{seed}")
            st["seconds"] += time.perf_counter() - t0
            st["losses"].append(loss.item())
            st["step"] = done = step + 1
            if done % pcfg.check_every == 0:
                model.eval()
                d = dev_loss(model, tokenizer, task, pcfg.dev_items)
                if st["best_dev"] - d >= pcfg.tol * abs(st["best_dev"]):      # a relative drop of at least tol
                    st["best_step"], st["best_dev"], st["stale"] = done, d, 0
                    best = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
                else:
                    st["stale"] += 1
                st["checks"].append([done, d])
                weights = {f"lora/{k}": v for k, v in get_peft_model_state_dict(model).items()} | {f"best/{k}": v for k, v in best.items()}
                checkpoint.save(state_path, st, weights=weights, opt=opt, params=params)
                if st["stale"] >= pcfg.patience:
                    break
            if stop_after is not None and done >= stop_after:
                return None
        return _finish(model, tokenizer, task, seed, zcfg, pcfg, run_dir, best, st)
    finally:
        model.unload()


def _finish(model, tokenizer, task, seed: int, zcfg: ZooConfig, pcfg: PlateauConfig, run_dir: Path, best: dict, st: dict) -> dict:
    check_finite(best, f"teacher {task.name}/seed{seed} step {st['best_step']}")
    set_peft_model_state_dict(model, best)
    model.eval()
    folder = run_dir / f"step{st['best_step']:04d}"
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
    scores = evaluate_task(model, tokenizer, task, n=zcfg.eval_items)
    stopped = "plateau" if st["stale"] >= pcfg.patience else "max_steps"
    row = dict(task=task.name, family=task.family, seed=seed, step=st["best_step"], path=str(folder.relative_to(run_dir.parent.parent)),
               hash=adapter_hash(folder), hash_version=HASH_VERSION, test_acc=scores.acc, test_loglik=scores.loglik_mean)
    record = dict(task=task.name, seed=seed, steps_trained=st["step"], best_step=st["best_step"], best_dev_loss=st["best_dev"],
                  stopped=stopped, dev_checks=st["checks"], losses=st["losses"], train_seconds=st["seconds"],
                  checkpoints=[row], zoo_config=asdict(zcfg), plateau=asdict(pcfg))
    atomic_write_json(run_dir / "run.json", record)
    (run_dir / "state.safetensors").unlink(missing_ok=True)
    artefacts.used(run_dir, trained=True, seconds=st["seconds"])
    return record

"""One teacher run of the zoo, trained alone (`train_teacher`) or packed with others
(`train_packed`, see llgbm.teachers.packing): its config, its batches, its crash-safe resume state, and the
checkpoints and record it leaves. `llgbm.zoo` builds the zoo from these runs.

Crash-safe: a run saves a resume state (safetensors) every `save_every` steps, and a finished run
writes `run.json` and is never trained again."""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from llgbm.core import artefacts, checkpoint
from llgbm.core.compiling import compiled_backbone
from llgbm.core.lora import LORA_TARGETS, adapter_hash, check_finite
from llgbm.core.tasks import get_task, list_tasks
from llgbm.core.timing import measure_matmul_peak
from llgbm.core.utils import atomic_dir, atomic_write_json, check_profile, config_hash, preset_config, warmup_lr
from llgbm.eval.scoring import build_batch, encode_pairs, evaluate_task, target_logprobs
from llgbm.teachers import packing

QUICK_TASKS = ("country_en_to_de", "country_en_to_fr", "country_en_to_es", "country_en_to_it", "country_en_to_nl",
               "country_en_to_pt", "country_to_alpha2", "country_to_alpha3", "alpha2_to_country",
               "alpha3_to_country", "language_to_alpha2", "alpha2_to_language", "number_words_en",
               "number_words_fr", "number_words_de", "number_words_es", "number_words_it", "number_words_pt",
               "add_1", "add_2", "add_3", "caesar_1", "caesar_2", "caesar_3")
HASH_VERSION = 2   # 2: lora.adapter_hash (canonical); 1 hashed the folder's raw bytes


@dataclass
class ZooConfig:
    rank: int = 8                     # seed 002's Qwen2.5-0.5B setting, kept for the 135M model
    alpha: int = 16
    targets: tuple[str, ...] = LORA_TARGETS
    steps: int = 80
    lr: float = 2e-3                  # short runs on a small model: a LoRA needs a high rate
    warmup: int = 5
    batch_size: int = 16
    n_checkpoints: int = 3            # the last consecutive steps kept as checkpoints
    seeds: tuple[int, ...] = (0,)
    save_every: int = 20              # resume-state interval (steps)
    eval_items: int = 50              # test items scored per checkpoint
    tasks: tuple[str, ...] | None = None   # None: every registered task
    pack: int = 1                     # teachers trained together in one packed forward (llgbm.teachers.packing)
    pack_len: int = 128               # tokens per packed row
    compile: bool = False             # run the training steps under torch.compile (llgbm.core.compiling): an
                                      # execution option, equal within float tolerance, not in training_key

    @classmethod
    def preset(cls, profile: str, **overrides) -> "ZooConfig":
        base = {
            "smoke": dict(steps=6, warmup=1, batch_size=4, n_checkpoints=2, save_every=3, eval_items=8,
                          tasks=("country_en_to_de", "country_en_to_it", "add_1", "add_3")),
            # 24 of the 34 tasks (6 per family, both held-out tasks of each). Measured on 2 cores:
            # ~17 min of training at ~130-190 tokens/s plus ~6 min scoring checkpoints.
            "quick": dict(steps=30, batch_size=8, lr=3e-3, n_checkpoints=2, eval_items=32, tasks=QUICK_TASKS),
            "full": dict(steps=200, seeds=(0, 1, 2), n_checkpoints=5, eval_items=100),
        }[check_profile(profile)]
        return preset_config(cls, base, overrides)

    @classmethod
    def from_record(cls, record: dict) -> "ZooConfig":
        """The config a finished run (its run.json) was trained with."""
        c = record["config"]
        return cls(**{**c, "targets": tuple(c["targets"]), "seeds": tuple(c["seeds"]),
                      "tasks": c["tasks"] and tuple(c["tasks"])})

    def task_names(self) -> list[str]:
        return list(self.tasks) if self.tasks is not None else list_tasks()

    def training_key(self) -> str:
        """Hash of the fields that change what a run trains (not which tasks, seeds or eval size)."""
        fields = {k: getattr(self, k) for k in ("rank", "alpha", "targets", "steps", "lr", "warmup", "batch_size",
                                                 "n_checkpoints")}
        return config_hash(fields, 8)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    # A pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
    return np.random.default_rng([seed, step]).choice(n, size=min(batch_size, n), replace=False)


def _save_state(path: Path, lora_state: dict, opt, params, step: int, losses: list[float], tokens: list[int],
                seconds: float, kept) -> None:
    """A run's resume state (`checkpoint.save`): its LoRA tensors, AdamW state for `params` (peft's
    parameter order), the kept checkpoints, and step, losses, tokens and seconds."""
    weights = {f"lora/{k}": v for k, v in lora_state.items()}
    for j, (_, sd) in enumerate(kept):
        weights.update({f"kept/{j}/{k}": v for k, v in sd.items()})
    checkpoint.save(path, dict(step=step, losses=losses, tokens=tokens, seconds=seconds, kept_steps=[s for s, _ in kept]),
                    weights=weights, opt=opt, params=params)


def _read_state(path: Path, opt=None, params=None) -> dict:
    """A saved resume state: step, losses, tokens, seconds, kept checkpoints and LoRA tensors; with
    `opt`, its AdamW state restored for `params`."""
    weights, st = checkpoint.load(path, opt=opt, params=params)
    kept = [(s, {k.split("/", 2)[2]: v for k, v in weights.items() if k.startswith(f"kept/{j}/")})
            for j, s in enumerate(st["kept_steps"])]
    return dict(step=int(st["step"]), losses=st["losses"], tokens=st["tokens"], seconds=float(st["seconds"]), kept=kept,
                lora={k[5:]: v for k, v in weights.items() if k.startswith("lora/")})


def _load_state(path: Path, model, opt):
    st = _read_state(path, opt, [p for p in model.parameters() if p.requires_grad])
    set_peft_model_state_dict(model, st["lora"])
    return st["step"], st["losses"], st["tokens"], st["seconds"], st["kept"]


def _finish(model, tokenizer, task, task_name: str, seed: int, cfg: "ZooConfig", root: Path, kept, losses, tokens,
            seconds: float, matmul_peak: float, rank: int) -> dict:
    """Write a trained run's kept checkpoints (peft folders, scored on the task's test items) and its
    run.json; drop the resume state. `model` is a peft model of the run's LoRA config."""
    run_dir = root / task_name / f"seed{seed}"
    model.eval()
    checkpoints = []
    for step, sd in kept:
        set_peft_model_state_dict(model, sd)
        folder = run_dir / f"step{step:04d}"
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
        scores = evaluate_task(model, tokenizer, task, n=cfg.eval_items)
        checkpoints.append(dict(task=task_name, family=task.family, seed=seed, step=step,
                                path=str(folder.relative_to(root)), hash=adapter_hash(folder), hash_version=HASH_VERSION,
                                train_loss=float(np.mean(losses[max(0, step - 5):step])),
                                test_acc=scores.acc, test_loglik=scores.loglik_mean))
    record = dict(task=task_name, seed=seed, steps=cfg.steps, train_seconds=seconds, train_tokens=tokens[0],
                  train_target_tokens=tokens[1], matmul_peak_flops=matmul_peak, rank=rank,
                  losses=losses, checkpoints=checkpoints, config=asdict(cfg))
    atomic_write_json(run_dir / "run.json", record)
    (run_dir / "state.safetensors").unlink(missing_ok=True)
    artefacts.used(run_dir, trained=True, seconds=seconds)
    return record


def train_teacher(base_model, tokenizer, task_name: str, seed: int, cfg: ZooConfig, root: Path,
                  stop_after: int | None = None, progress: bool = True, matmul_peak: float | None = None,
                  task=None, rank: int = 0) -> dict | None:
    """Train (or resume, or skip if finished) one teacher run; return its run record.

    `task` (default: the registered task `task_name`) may be any object with a task's train/test
    pairs, prompt, target and score, such as the multi-task baseline's mixture of training tasks.

    `stop_after` interrupts the run after that many steps (used to test resume); returns None then.
    `matmul_peak` (FLOP/s, measured when training starts if not given) is stored with the record, so
    the peak fraction always compares a throughput with the peak of the same machine and run.
    `rank` is the process that trains it (`python -m llgbm.zoo` across processes); it is recorded."""
    run_dir = root / task_name / f"seed{seed}"
    record_path = run_dir / "run.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        done = ZooConfig.from_record(record)
        if done.training_key() != cfg.training_key():
            raise ValueError(f"{run_dir} was trained with another config ({done.training_key()} vs {cfg.training_key()}); "
                             f"use zoo_dir(profile, model, cfg) for this config, or delete that run to retrain it")
        artefacts.used(run_dir, trained=False)
        return record
    task = task if task is not None else get_task(task_name)
    matmul_peak = matmul_peak or measure_matmul_peak()
    torch.manual_seed(zlib.crc32(f"{task_name}/{seed}".encode()))
    model = get_peft_model(base_model, cfg.lora_config())
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        state_path = run_dir / "state.safetensors"
        run_dir.mkdir(parents=True, exist_ok=True)
        start, losses, tokens, seconds, kept = 0, [], [0, 0], 0.0, []  # tokens: [all, target]
        if state_path.exists():
            start, losses, tokens, seconds, kept = _load_state(state_path, model, opt)
        encoded = encode_pairs(tokenizer, task, task.train)
        model.train()
        with compiled_backbone(model, enabled=cfg.compile):     # the steps only: scoring stays eager
            seconds = _train_steps(model, opt, params, encoded, tokenizer, task_name, seed, cfg, state_path, start,
                                   (losses, tokens, kept), seconds, stop_after, progress)
        if seconds is None:
            return None
        return _finish(model, tokenizer, task, task_name, seed, cfg, root, kept, losses, tokens, seconds, matmul_peak, rank)
    finally:
        model.unload()  # strip the LoRA layers: the base model is shared across runs


def teacher_step(model, opt, batch, cfg: ZooConfig, step: int, what: str) -> torch.Tensor:
    """One teacher step: the mean NLL of the answer tokens, refused when not finite (naming `what`), backward,
    the warmup rate of `step`, AdamW. Returns the loss (the bench's peer times this same step)."""
    loss = -target_logprobs(model, batch).mean()
    if not torch.isfinite(loss):
        raise ValueError(f"{what} diverged at step {step} (loss {loss.item()}); refusing it: lower ZooConfig.lr (now {cfg.lr})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for g in opt.param_groups:
        g["lr"] = warmup_lr(cfg.lr, step, cfg.warmup)
    opt.step()
    return loss


def _train_steps(model, opt, params, encoded, tokenizer, task_name: str, seed: int, cfg: ZooConfig, state_path: Path,
                 start: int, logs: tuple[list, list, list], seconds: float, stop_after: int | None, progress: bool) -> float | None:
    """train_teacher's steps from `start`: `logs` (losses, [all, target] tokens, kept checkpoints) grow
    in place, the resume state is saved every `save_every` steps. Returns the training seconds so
    far, or None when `stop_after` interrupted the run."""
    losses, tokens, kept = logs
    device = next(model.parameters()).device
    for step in (bar := tqdm(range(start, cfg.steps), desc=f"{task_name}/seed{seed}", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        batch = build_batch([encoded[i] for i in batch_indices(len(encoded), cfg.batch_size, seed, step)],
                            tokenizer.pad_token_id, device)
        loss = teacher_step(model, opt, batch, cfg, step, f"teacher {task_name}/seed{seed}")
        seconds += time.perf_counter() - t0
        tokens[0] += int(batch["attention_mask"].sum())
        tokens[1] += int(batch["target_mask"].sum())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step >= cfg.steps - cfg.n_checkpoints:
            sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            check_finite(sd, f"teacher {task_name}/seed{seed} step {step + 1}")
            kept.append((step + 1, sd))
        done = step + 1
        if done % cfg.save_every == 0 or done == cfg.steps or done == stop_after:
            _save_state(state_path, get_peft_model_state_dict(model), opt, params, done, losses, tokens, seconds, kept)
        if stop_after is not None and done >= stop_after and done < cfg.steps:
            return None
    return seconds


def train_packed(base_model, tokenizer, runs: list[tuple[str, int]], cfg: ZooConfig, root: Path,
                 progress: bool = True, matmul_peak: float | None = None, rank: int = 0,
                 stop_after: int | None = None) -> list[dict] | None:
    """Train several unfinished (task, seed) runs together, packed (see llgbm.teachers.packing): the same
    initial LoRA, batches, resume state, checkpoints and record as each solo run. The runs must stand
    at the same step (all fresh, or resumed from one step); `stop_after` interrupts them as in
    `train_teacher` (returns None). Each run's train_seconds is its share of the packed steps."""
    done_already = [r for r in runs if (root / r[0] / f"seed{r[1]}" / "run.json").exists()]
    if done_already:
        raise ValueError(f"runs {done_already} are finished; pass only unfinished runs (zoo.missing_runs)")
    matmul_peak = matmul_peak or measure_matmul_peak()
    paths = [root / t / f"seed{s}" / "state.safetensors" for t, s in runs]
    saved = [_read_state(p) if p.exists() else None for p in paths]
    starts = sorted({st["step"] if st else 0 for st in saved})
    if len(starts) != 1:
        raise ValueError(f"packed runs must stand at one step; these stand at steps {starts}: train them in groups by step")
    lcfg, device, k = cfg.lora_config(), next(base_model.parameters()).device, len(runs)
    init = [st["lora"] if st else packing.initial_state(base_model, lcfg, t, s) for st, (t, s) in zip(saved, runs)]
    teachers = packing.PackedTeachers(base_model, lcfg, init, cfg.lr)
    for j, st in enumerate(saved):
        if st:
            _read_state(paths[j], teachers.opt, teachers.teacher_params(j))
    losses = [st["losses"] if st else [] for st in saved]
    tokens = [st["tokens"] if st else [0, 0] for st in saved]
    seconds = [st["seconds"] if st else 0.0 for st in saved]
    kept = [st["kept"] if st else [] for st in saved]
    tasks_ = [get_task(t) for t, _ in runs]
    encoded = [encode_pairs(tokenizer, task, task.train) for task in tasks_]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(starts[0], cfg.steps), desc=f"pack of {k}: {runs[0][0]}/seed{runs[0][1]}…", disable=not progress,
               leave=False)
    for step in bar:
        t0 = time.perf_counter()
        picks = [[enc[i] for i in batch_indices(len(enc), cfg.batch_size, s, step)] for enc, (_, s) in zip(encoded, runs)]
        batch = {key: v.to(device) for key, v in packing.pack(picks, cfg.pack_len, tokenizer.pad_token_id).items()}
        step_losses = teachers.step(batch, warmup_lr(cfg.lr, step, cfg.warmup))
        bad = [runs[j] for j in range(k) if not torch.isfinite(step_losses[j])]
        if bad:
            raise ValueError(f"teachers {bad} diverged at step {step}; refusing them: lower ZooConfig.lr (now {cfg.lr})")
        share = (time.perf_counter() - t0) / k
        done = step + 1
        for j in range(k):
            seconds[j] += share
            tokens[j][0] += sum(len(a) + len(b) for a, b in picks[j])
            tokens[j][1] += sum(len(b) for _, b in picks[j])
            losses[j].append(step_losses[j].item())
            if step >= cfg.steps - cfg.n_checkpoints:
                sd = {key: v.detach().clone() for key, v in teachers.states[j].items()}
                check_finite(sd, f"teacher {runs[j][0]}/seed{runs[j][1]} step {done}")
                kept[j].append((done, sd))
            if done % cfg.save_every == 0 or done == cfg.steps or done == stop_after:
                _save_state(paths[j], {key: v.detach() for key, v in teachers.states[j].items()}, teachers.opt,
                            teachers.teacher_params(j), done, losses[j], tokens[j], seconds[j], kept[j])
        bar.set_postfix(loss=f"{float(step_losses.mean()):.3f}")
        if stop_after is not None and done >= stop_after and done < cfg.steps:
            return None
    records = []
    for j, ((task_name, seed), task) in enumerate(zip(runs, tasks_)):
        model = get_peft_model(base_model, lcfg)
        try:
            records.append(_finish(model, tokenizer, task, task_name, seed, cfg, root, kept[j], losses[j], tokens[j],
                                   seconds[j], matmul_peak, rank))
        finally:
            model.unload()
    return records


def saved_step(root: Path, task_name: str, seed: int) -> int:
    """The step an unfinished run's resume state stands at (0: none saved)."""
    path = Path(root) / task_name / f"seed{seed}" / "state.safetensors"
    return _read_state(path)["step"] if path.exists() else 0

"""The teacher-LoRA zoo: one peft LoRA per (task, seed), keeping the last few consecutive steps as
checkpoints (as DnD keeps late checkpoints), each a standard peft adapter folder.

Crash-safe: a run saves a resume state (safetensors) every `save_every` steps, a finished run
writes `run.json` and is never trained again, and `manifest.json` is rebuilt from those files."""
from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .evaluation import build_batch, encode_pairs, evaluate_task, target_logprobs
from .tasks import get_task, list_tasks
from .utils import atomic_dir, atomic_write_json, check_profile, hash_folder, llgbm_home

QUICK_TASKS = ("country_en_to_de", "country_en_to_fr", "country_en_to_es", "country_en_to_it", "country_en_to_nl",
               "country_en_to_pt", "country_to_alpha2", "country_to_alpha3", "alpha2_to_country",
               "alpha3_to_country", "language_to_alpha2", "alpha2_to_language", "number_words_en",
               "number_words_fr", "number_words_de", "number_words_es", "number_words_it", "number_words_pt",
               "add_1", "add_2", "add_3", "caesar_1", "caesar_2", "caesar_3")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
        return replace(cls(**base), **overrides)

    def task_names(self) -> list[str]:
        return list(self.tasks) if self.tasks is not None else list_tasks()

    def training_key(self) -> str:
        """Hash of the fields that change what a run trains (not which tasks, seeds or eval size)."""
        fields = {k: getattr(self, k) for k in ("rank", "alpha", "targets", "steps", "lr", "warmup", "batch_size",
                                                 "n_checkpoints")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:8]

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def zoo_dir(profile: str, model_name: str, cfg: ZooConfig | None = None) -> Path:
    """Where a profile's zoo lives; the folder name carries the training config's hash, so teachers
    trained under other settings are never mistaken for these."""
    cfg = cfg or ZooConfig.preset(profile)
    return llgbm_home() / "zoo" / f"{Path(model_name).name}-{profile}-{cfg.training_key()}"


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what} has NaN/Inf weights in {len(bad)} tensor(s), e.g. {bad[0]}; "
                         f"refusing it (lower the learning rate or retrain this adapter)")


def load_adapter_weights(folder: Path | str) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a peft adapter folder, refused if any is NaN/Inf."""
    tensors = load_file(str(Path(folder) / "adapter_model.safetensors"))
    check_finite(tensors, f"adapter {folder}")
    return tensors


def flat_weights(root: Path, manifest: list[dict]) -> np.ndarray:
    """Each checkpoint's LoRA tensors flattened into one row (the weight-space baseline)."""
    return np.stack([torch.cat([v.flatten() for _, v in sorted(load_adapter_weights(root / r["path"]).items())]).numpy()
                     for r in manifest])


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    # A pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
    return np.random.default_rng([seed, step]).choice(n, size=min(batch_size, n), replace=False)


def _lr(cfg: ZooConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def _save_state(path: Path, model, opt, step: int, losses: list[float], tokens: list[int], seconds: float,
                kept) -> None:
    tensors = {f"lora/{k}": v for k, v in get_peft_model_state_dict(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            tensors[f"adam/{i}/exp_avg"], tensors[f"adam/{i}/exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
            tensors[f"adam/{i}/step"] = st["step"].reshape(1).float()
    for j, (s, sd) in enumerate(kept):
        tensors.update({f"kept/{j}/{k}": v for k, v in sd.items()})
    meta = dict(step=str(step), losses=json.dumps(losses), tokens=json.dumps(tokens), seconds=str(seconds),
                kept_steps=json.dumps([s for s, _ in kept]))
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_state(path: Path, model, opt):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    set_peft_model_state_dict(model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora/")})
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        if f"adam/{i}/exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"adam/{i}/exp_avg"], "exp_avg_sq": tensors[f"adam/{i}/exp_avg_sq"],
                            "step": tensors[f"adam/{i}/step"][0]}
    kept = [(s, {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"kept/{j}/")})
            for j, s in enumerate(json.loads(meta["kept_steps"]))]
    return int(meta["step"]), json.loads(meta["losses"]), json.loads(meta["tokens"]), float(meta["seconds"]), kept


def train_teacher(base_model, tokenizer, task_name: str, seed: int, cfg: ZooConfig, root: Path,
                  stop_after: int | None = None, progress: bool = True, matmul_peak: float | None = None) -> dict | None:
    """Train (or resume, or skip if finished) one teacher run; return its run record.

    `stop_after` interrupts the run after that many steps (used to test resume); returns None then.
    `matmul_peak` (FLOP/s, measured when training starts if not given) is stored with the record, so
    the peak fraction always compares a throughput with the peak of the same machine and run."""
    run_dir = root / task_name / f"seed{seed}"
    record_path = run_dir / "run.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        done = ZooConfig(**{**record["config"], "targets": tuple(record["config"]["targets"]),
                            "seeds": tuple(record["config"]["seeds"]),
                            "tasks": record["config"]["tasks"] and tuple(record["config"]["tasks"])})
        if done.training_key() != cfg.training_key():
            raise ValueError(f"{run_dir} was trained with another config ({done.training_key()} vs {cfg.training_key()}); "
                             f"use zoo_dir(profile, model, cfg) for this config, or delete that run to retrain it")
        return record
    task = get_task(task_name)
    device = next(base_model.parameters()).device
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
        bar = tqdm(range(start, cfg.steps), desc=f"{task_name}/seed{seed}", disable=not progress, leave=False)
        for step in bar:
            t0 = time.perf_counter()
            batch = build_batch([encoded[i] for i in _batch_indices(len(encoded), cfg.batch_size, seed, step)],
                                tokenizer.pad_token_id, device)
            loss = -target_logprobs(model, batch).mean()
            if not torch.isfinite(loss):
                raise ValueError(f"teacher {task_name}/seed{seed} diverged at step {step} (loss {loss.item()}); "
                                 f"refusing it: lower ZooConfig.lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            opt.step()
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
                _save_state(state_path, model, opt, done, losses, tokens, seconds, kept)
            if stop_after is not None and done >= stop_after and done < cfg.steps:
                return None
        model.eval()
        checkpoints = []
        for step, sd in kept:
            set_peft_model_state_dict(model, sd)
            folder = run_dir / f"step{step:04d}"
            with atomic_dir(folder) as tmp:
                model.save_pretrained(tmp)
            scores = evaluate_task(model, tokenizer, task, n=cfg.eval_items)
            checkpoints.append(dict(task=task_name, family=task.family, seed=seed, step=step,
                                    path=str(folder.relative_to(root)), hash=hash_folder(folder),
                                    train_loss=float(np.mean(losses[max(0, step - 5):step])),
                                    test_acc=scores.acc, test_loglik=scores.loglik_mean))
        record = dict(task=task_name, seed=seed, steps=cfg.steps, train_seconds=seconds, train_tokens=tokens[0],
                      train_target_tokens=tokens[1], matmul_peak_flops=matmul_peak,
                      losses=losses, checkpoints=checkpoints, config=asdict(cfg))
        atomic_write_json(record_path, record)
        state_path.unlink(missing_ok=True)
        return record
    finally:
        model.unload()  # strip the LoRA layers: the base model is shared across runs


def write_manifest(root: Path) -> list[dict]:
    """Rebuild manifest.json (one row per checkpoint) from the finished runs' records."""
    rows = []
    for rec in sorted(root.glob("*/seed*/run.json")):
        rows += json.loads(rec.read_text())["checkpoints"]
    atomic_write_json(root / "manifest.json", rows)
    return rows


def build_zoo(base_model, tokenizer, cfg: ZooConfig, root: Path, progress: bool = True) -> list[dict]:
    """Train every (task, seed) run not yet finished; return the records of all runs."""
    records, peak = [], None
    runs = [(t, s) for t in cfg.task_names() for s in cfg.seeds]
    for task_name, seed in tqdm(runs, desc="zoo", disable=not progress):
        if peak is None and not (root / task_name / f"seed{seed}" / "run.json").exists():
            peak = measure_matmul_peak()   # once, right before this process trains anything
        records.append(train_teacher(base_model, tokenizer, task_name, seed, cfg, root, progress=progress,
                                     matmul_peak=peak))
        write_manifest(root)
    return records


def training_flops_per_token(model_config, cfg: ZooConfig, target_fraction: float) -> float:
    """Model FLOPs per token of LoRA training: forward (2N) + backward to the activations (2N) over the
    decoder-block linears; the frozen lm_head runs (fwd + bwd) only on the target fraction of tokens.
    The LoRA matmuls and attention scores are left out (both < 2% here): the count is conservative."""
    h, f = model_config.hidden_size, model_config.intermediate_size
    kv = model_config.num_key_value_heads * (h // model_config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f
    body = model_config.num_hidden_layers * per_layer
    return 4 * body + 4 * model_config.vocab_size * h * target_fraction


def measure_matmul_peak(n: int = 2048, repeats: int = 4, trials: int = 5) -> float:
    """This machine's fp32 matmul throughput (FLOP/s) now: the best of `trials` timings, since a
    peak is what the hardware reaches, not the average over moments it was busy elsewhere."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, repeats * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def zoo_throughput(records: list[dict], model_config, cfg: ZooConfig) -> dict:
    """Tokens/s, model FLOP/s and their fraction of the matmul peak measured when those runs trained,
    over the runs' own training time (eval and I/O excluded)."""
    tokens = sum(r["train_tokens"] for r in records)
    seconds = sum(r["train_seconds"] for r in records)
    if not tokens or not seconds:
        return dict(tokens_per_s=math.nan, flops_per_s=math.nan, peak_flops_per_s=math.nan, peak_fraction=math.nan)
    tps = tokens / seconds
    target_fraction = sum(r["train_target_tokens"] for r in records) / tokens
    flops = tps * training_flops_per_token(model_config, cfg, target_fraction)
    peak = sum(r.get("matmul_peak_flops", math.nan) * r["train_seconds"] for r in records) / seconds
    return dict(tokens_per_s=tps, flops_per_s=flops, peak_flops_per_s=peak, peak_fraction=flops / peak)

"""Generator training and evaluation for every phase.

Phase 0 trains on weights alone (DnD); phases 3–5 add the behavioural term. One loop serves all:
Loss = λ_w·L_weight(generated tokens, teacher tokens) + λ_d·L_delta(Δ_generated, Δ_teacher), where
L_delta is the squared error of the delta relative to the teacher delta's squared norm (1 for a
generator that predicts no change), so the two terms start on the same scale.

Conditions are encoded once per task (MiniLM on CPU would otherwise dominate every step). A training
pair is a random prompt batch of a training task with one of its zoo checkpoints.

Runs are content-keyed folders under `llgbm_home()/generators/`: a run that finished is loaded, not
retrained; one that was interrupted resumes from its last checkpoint and takes exactly the steps it
would have taken (each step's randomness is derived from (seed, rank, step), not carried over); a run
asked for more steps than a finished one continues it (the learning rate is constant after warmup, so
continuing is the same as having trained longer). Evaluations are cached in the run folder too."""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .evaluation import TaskScores, evaluate_adapter
from .functional import FunctionalLoRA, compute_delta_differentiable, tokenize_probes
from .generator import GeneratorConfig, HyperConvGenerator, encode_prompts, sample_condition, token_weights, weight_loss
from .tasks import get_task
from .tokenizer import LoRATokenizer2D
from .utils import atomic_dir, atomic_write_bytes, atomic_write_json, check_profile, hash_bytes, llgbm_home
from .zoo import load_adapter_weights

OBJECTIVES = {"weight": (1.0, 0.0), "multitask": (1.0, 1.0), "delta": (0.0, 1.0)}   # (λ_w, λ_d)


@dataclass
class TrainingConfig:
    steps: int = 80
    batch_size: int = 4                    # checkpoints per step (per process under DDP)
    lr: float = 3e-4                       # weight-only (phase 0)
    delta_lr: float = 1e-4                 # when λ_d > 0. On SmolLM2 (quick) the delta loss went 0.94 -> 10 within
                                           # 8 steps at 3e-4 and never came back; at 1e-4 and 3e-5 it falls to ~0.7
                                           # in 24 steps. Weight-only keeps its own (higher) rate: the comparison
                                           # gives each objective a rate it trains at.
    warmup: int = 10                       # linear warmup, then constant
    weight_decay: float = 1e-4
    clip_norm: float = 1.0                 # gradient-norm clipping
    lambda_w: float = 1.0
    lambda_d: float = 0.0
    ckpt_every: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)     # generator seeds (≥ 3 for the quick report)
    eval_items: int = 32                   # test items per held-out task (8 tasks x 32 = 256 items)

    @classmethod
    def preset(cls, profile: str, objective: str = "weight", **overrides) -> "TrainingConfig":
        base = {"smoke": dict(steps=4, batch_size=2, seeds=(0, 1), eval_items=4, ckpt_every=2, warmup=1),
                "quick": dict(), "full": dict(steps=1000, ckpt_every=100, eval_items=100, seeds=(0, 1, 2, 3, 4))}
        cfg = cls(**base[check_profile(profile)])
        return replace(cfg.with_objective(objective), **overrides)

    def with_objective(self, objective: str) -> "TrainingConfig":
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        lw, ld = OBJECTIVES[objective]
        return replace(self, lambda_w=lw, lambda_d=ld)

    @property
    def objective(self) -> str:
        return next((k for k, v in OBJECTIVES.items() if v == (self.lambda_w, self.lambda_d)),
                    f"λw={self.lambda_w:g},λd={self.lambda_d:g}")

    @property
    def effective_lr(self) -> float:
        """The peak learning rate this objective trains at: `delta_lr` when the delta term is on, else `lr`."""
        return self.delta_lr if self.lambda_d > 0 else self.lr

    def run_key(self) -> dict:
        """The fields that change what a run computes (not how long, how it is saved or evaluated)."""
        key = {k: getattr(self, k) for k in ("batch_size", "warmup", "weight_decay", "clip_norm", "lambda_w", "lambda_d")}
        return dict(key, lr=self.effective_lr)


# ------------------------------------------------------------------ data


class GeneratorData:
    """Training pairs for the generator: per-task encoded prompts, per-checkpoint DnD tokens and (for
    behavioural objectives) per-checkpoint teacher deltas aligned with `rows`."""

    def __init__(self, encoder, zoo_root: Path, manifest: list[dict], lora_tokenizer: LoRATokenizer2D,
                 gcfg: GeneratorConfig, deltas: np.ndarray | None = None):
        keep = [i for i, r in enumerate(manifest) if not get_task(r["task"]).heldout]
        if not keep:
            raise ValueError("the zoo has no checkpoint of a training (non-held-out) task")
        if deltas is not None and len(deltas) != len(manifest):
            raise ValueError(f"{len(manifest)} checkpoints but {len(deltas)} deltas: pass deltas aligned with the manifest")
        self.rows = [manifest[i] for i in keep]
        self.gcfg, self.lora_tokenizer = gcfg, lora_tokenizer
        self.tasks = sorted({r["task"] for r in self.rows})
        self.encoded = {t: encode_prompts(encoder, get_task(t).prompts("train"), gcfg.prompt_tokens) for t in self.tasks}
        self.tokens = torch.stack([lora_tokenizer.tokenize(load_adapter_weights(zoo_root / r["path"]))
                                   for r in self.rows])
        self.weights = token_weights(self.tokens)
        self.mask = lora_tokenizer.mask()              # one padding pattern per layout
        self.tokens.nan_to_num_()                      # targets are NaN-free from here on; the mask remembers
        self.deltas = None if deltas is None else torch.as_tensor(np.asarray(deltas)[keep], dtype=torch.float32)

    def fingerprint(self, with_deltas: bool = True) -> str:
        """What the generator learns from: the checkpoints (by content hash), and their deltas if used."""
        parts = [json.dumps([r["hash"] for r in self.rows]).encode()]
        if with_deltas and self.deltas is not None:
            parts.append(self.deltas.numpy().tobytes())
        return hash_bytes(*parts)[:16]

    def batch(self, rng: np.random.Generator, batch_size: int):
        """(condition, teacher tokens, teacher deltas or None) for `batch_size` random checkpoints."""
        idx = rng.integers(0, len(self.rows), size=batch_size)
        cond = torch.stack([sample_condition(self.encoded[self.rows[i]["task"]], self.gcfg.n_prompts, rng) for i in idx])
        t = torch.as_tensor(idx)
        return cond, self.tokens[t], None if self.deltas is None else self.deltas[t]


class DeltaSupervision:
    """Δ of generated tokens on the frozen base model, differentiable (phase 3 machinery).

    The base model's parameters are frozen here (requires_grad False): only the generator learns, and
    the backward pass then computes input gradients alone, not weight gradients of 135M parameters."""

    def __init__(self, model, tokenizer, probes: list[str], lora_config, lora_tokenizer: LoRATokenizer2D,
                 base_activation: np.ndarray | torch.Tensor | None = None, mode: str = "hooks"):
        from .delta import compute_base_activation, probe_hash
        model.requires_grad_(False)
        self.flora = FunctionalLoRA.from_lora_config(model, lora_config, mode)
        self.probes = tokenize_probes(tokenizer, probes, next(model.parameters()).device)
        self.probe_hash = probe_hash(probes)
        if base_activation is None:
            base_activation = compute_base_activation(model, tokenizer, probes)
        self.base = torch.as_tensor(base_activation, dtype=torch.float32)
        self.lora_tokenizer = lora_tokenizer

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generated tokens (B, T, R, C) -> Δ (B, hidden)."""
        return compute_delta_differentiable(self.flora, self.lora_tokenizer.detokenize_batch(tokens), self.probes, self.base)


# ------------------------------------------------------------------ losses


def delta_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of ‖Δ̂ − Δ‖² / ‖Δ‖²: 0 for a perfect match, 1 for predicting no change."""
    return ((pred - target).square().sum(-1) / target.square().sum(-1).clamp_min(eps)).mean()


def cosine(a, b) -> np.ndarray:
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


class MultiTaskLoss(nn.Module):
    """λ_w·L_weight + λ_d·L_delta; returns the total and its terms. The weight term is always computed
    (it is cheap, and every objective logs it); the delta term only when λ_d > 0, since it costs a
    forward and backward pass of the base model."""

    def __init__(self, lambda_w: float = 1.0, lambda_d: float = 1.0, token_weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, target_noise: float = 0.0):
        super().__init__()
        if lambda_w < 0 or lambda_d < 0 or lambda_w + lambda_d == 0:
            raise ValueError(f"need λ_w, λ_d ≥ 0 and not both 0, got λ_w={lambda_w}, λ_d={lambda_d}")
        self.lambda_w, self.lambda_d = lambda_w, lambda_d
        self.token_weights, self.mask, self.target_noise = token_weights, mask, target_noise

    def forward(self, pred_tokens, target_tokens, pred_delta=None, target_delta=None):
        l_w = weight_loss(pred_tokens, target_tokens, self.token_weights, self.target_noise, mask=self.mask)
        terms = {"weight": l_w}
        total = self.lambda_w * l_w
        if self.lambda_d:
            if pred_delta is None or target_delta is None:
                raise ValueError("λ_d > 0 needs the generated and teacher deltas")
            terms["delta"] = delta_loss(pred_delta, target_delta)
            total = total + self.lambda_d * terms["delta"]
        return total, terms


class DeltaOnlyLoss(MultiTaskLoss):
    """L_delta alone (phase 5); the weight term is still returned, for the record."""

    def __init__(self, **kw):
        super().__init__(lambda_w=0.0, lambda_d=1.0, **kw)


# ------------------------------------------------------------------ training


@dataclass
class TrainResult:
    generator: HyperConvGenerator
    history: dict = field(default_factory=dict)   # per step: loss, weight, delta (when computed), seconds
    run_dir: Path | None = None
    resumed_from: int = 0                         # the step the run started from (0: from scratch)

    @property
    def seconds(self) -> float:
        return float(sum(self.history.get("seconds", [])))


def run_dir_for(data: GeneratorData, gcfg: GeneratorConfig, cfg: TrainingConfig, seed: int,
                supervision: DeltaSupervision | None = None, root: Path | None = None) -> Path:
    uses_delta = cfg.lambda_d > 0
    key = dict(gen=asdict(gcfg), train=cfg.run_key(), data=data.fingerprint(with_deltas=uses_delta), seed=seed,
               probes=supervision.probe_hash if uses_delta else None)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:12]
    return Path(root or llgbm_home() / "generators") / f"{cfg.objective}-seed{seed}-{digest}"


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in run_dir.glob("step_*.pt")} if run_dir.exists() else {}


def _save(run_dir: Path, step: int, gen, opt, history: dict, keep: int = 2) -> None:
    buf = io.BytesIO()
    torch.save(dict(step=step, generator=gen.state_dict(), optimizer=opt.state_dict(), history=history), buf)
    atomic_write_bytes(run_dir / f"step_{step:06d}.pt", buf.getvalue())
    for s, p in sorted(_checkpoints(run_dir).items())[:-keep]:
        p.unlink(missing_ok=True)


def _lr_at(cfg: TrainingConfig, step: int) -> float:
    return cfg.effective_lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def train(data: GeneratorData, gcfg: GeneratorConfig, cfg: TrainingConfig, seed: int,
          supervision: DeltaSupervision | None = None, run_dir: Path | str | None = None,
          accelerator=None, progress: bool = True) -> TrainResult:
    """Train one generator for `cfg.steps` steps (resuming or continuing a run in `run_dir`).

    With an `accelerate.Accelerator`, the generator is wrapped in DDP: each process draws its own
    batches (randomness from (seed, rank, step)), gradients are averaged, and only the main process
    writes checkpoints."""
    if cfg.lambda_d and supervision is None:
        raise ValueError(f"objective {cfg.objective!r} has a delta term: pass a DeltaSupervision")
    if cfg.lambda_d and data.deltas is None:
        raise ValueError(f"objective {cfg.objective!r} has a delta term: build GeneratorData with the zoo's deltas")
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(data, gcfg, cfg, seed, supervision)
    rank = accelerator.process_index if accelerator is not None else 0
    is_main = rank == 0

    torch.manual_seed(seed)
    gen = HyperConvGenerator(gcfg, data.tokens.shape[1], data.tokens.shape[2:])
    gen.set_offset(data.tokens.mean(0))                    # start from the mean teacher token
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
    history = {"loss": [], "weight": [], "delta": [], "seconds": []}
    start = 0
    usable = {s: p for s, p in _checkpoints(run_dir).items() if s <= cfg.steps}
    if usable:
        start = max(usable)
        state = torch.load(usable[start], map_location="cpu", weights_only=True)
        gen.load_state_dict(state["generator"])
        opt.load_state_dict(state["optimizer"])
        history = {k: list(v)[:start] for k, v in state["history"].items()}
    if start < cfg.steps and is_main:
        atomic_write_json(run_dir / "config.json", dict(generator=asdict(gcfg), training=asdict(cfg), seed=seed,
                                                        data=data.fingerprint(cfg.lambda_d > 0), objective=cfg.objective))
    loss_fn = MultiTaskLoss(cfg.lambda_w, cfg.lambda_d, data.weights, data.mask, gcfg.target_noise)
    model = gen
    if accelerator is not None:
        model, opt = accelerator.prepare(gen, opt)
    model.train()
    for step in tqdm(range(start, cfg.steps), desc=f"{cfg.objective} seed {seed}", disable=not progress or not is_main,
                     leave=False, initial=start, total=cfg.steps):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, rank, step])
        torch.manual_seed(int(rng.integers(2**62)))        # noise on condition and target, per step
        cond, target, target_delta = data.batch(rng, cfg.batch_size)
        pred = model(cond)
        pred_delta = supervision(pred) if cfg.lambda_d else None   # the costly part: skipped when unused
        loss, terms = loss_fn(pred, target, pred_delta, target_delta)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.clip_norm)
        opt.step()
        history["loss"].append(loss.item())
        history["weight"].append(terms["weight"].item())
        history["delta"].append(terms["delta"].item() if "delta" in terms else float("nan"))
        history["seconds"].append(time.perf_counter() - t0)
        done = step + 1
        if is_main and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            _save(run_dir, done, gen, opt, history)
        if not np.isfinite(history["loss"][-1]):
            raise FloatingPointError(f"generator loss became {history['loss'][-1]} at step {done} ({run_dir})")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return TrainResult(gen.eval(), history, run_dir, start)


def train_generator(data: GeneratorData, gcfg: GeneratorConfig, cfg: TrainingConfig, seed: int,
                    progress: bool = True) -> tuple[HyperConvGenerator, list[float]]:
    """Phase 0's entry point: weight-only training; returns the generator and its loss curve."""
    res = train(data, gcfg, cfg.with_objective("weight"), seed, progress=progress)
    return res.generator, res.history["loss"]


# ------------------------------------------------------------------ generation and evaluation


@torch.no_grad()
def generate_tokens(gen: HyperConvGenerator, encoder, prompts: list[str]) -> torch.Tensor:
    """Prompts -> generated DnD tokens (n_tokens, r + 2, chunk), conditioned on the first n_prompts."""
    gcfg = gen.cfg
    encoded = encode_prompts(encoder, prompts[: gcfg.n_prompts], gcfg.prompt_tokens)
    if len(encoded) < gcfg.n_prompts:   # too few prompts: repeat them (DnD conditions on a fixed count)
        encoded = encoded[torch.arange(gcfg.n_prompts) % len(encoded)]
    return gen.eval()(encoded[None])[0]


@torch.no_grad()
def generate_adapter(gen: HyperConvGenerator, encoder, lora_tokenizer: LoRATokenizer2D, lora_config,
                     prompts: list[str], out_dir: Path | str) -> tuple[Path, float]:
    """Prompts -> a peft adapter folder (loads with PeftModel.from_pretrained); returns it and the seconds
    it took end to end (encoding, generation, detokenisation, writing)."""
    t0 = time.perf_counter()
    state = lora_tokenizer.detokenize(generate_tokens(gen, encoder, prompts))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
    return out_dir, time.perf_counter() - t0


def evaluate(result: TrainResult, encoder, model, tokenizer, lora_tokenizer: LoRATokenizer2D, lora_config,
             task_names: list[str], n_items: int, supervision: DeltaSupervision | None = None,
             teacher_deltas: dict[str, np.ndarray] | None = None, progress: bool = True) -> dict[str, dict]:
    """Score a trained generator on tasks it never saw, from each task's unlabeled train prompts.

    Per task: `correct` and `loglik` per test item (the first `n_items`), cached in the run folder; and,
    with `supervision` and `teacher_deltas` ({task: (k, hidden) deltas of its zoo checkpoints}),
    `delta` (the generated Δ) and `delta_cos` (its cosine with each teacher checkpoint's Δ), which
    cost one probe forward per task and are recomputed every time."""
    key = hash_bytes(json.dumps(dict(tasks=list(task_names), n=n_items, step=len(result.history.get("loss", []))))
                     .encode())[:12]
    cache = result.run_dir / f"eval_{key}.json" if result.run_dir is not None else None
    scores = None
    if cache is not None and cache.exists():
        scores = {t: {k: np.asarray(v) for k, v in d.items()} for t, d in json.loads(cache.read_text()).items()}
    out = {}
    for name in tqdm(task_names, desc="evaluate", disable=not progress, leave=False):
        task = get_task(name)
        tokens = generate_tokens(result.generator, encoder, task.prompts("train"))
        if scores is not None:
            row = dict(scores[name])
        else:
            s: TaskScores = evaluate_adapter(model, tokenizer, task, lora_tokenizer.detokenize(tokens), n=n_items,
                                             lora_config=lora_config)
            row = dict(correct=s.correct.astype(float), loglik=s.loglik)
        if supervision is not None and teacher_deltas is not None:
            with torch.no_grad():
                d = supervision(tokens[None])[0].numpy()
            row["delta"], row["delta_cos"] = d, cosine(d, teacher_deltas[name])
        out[name] = row
    if cache is not None and scores is None:
        atomic_write_json(cache, {t: {k: np.asarray(d[k]).tolist() for k in ("correct", "loglik")} for t, d in out.items()})
    return out

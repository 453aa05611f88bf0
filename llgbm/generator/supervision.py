"""Phase 6: output-level supervision of generated adapters, through the frozen base model.

- ``sft``: the task's own next-token loss on its training examples, run through the generated adapter
  (Text-to-LoRA's training; it needs no teacher).
- ``kd``: KL(teacher ‖ generated) of the next-token distributions at the answer positions of the
  same examples. The delta (phases 3–5) is a 576-number summary of a teacher's behaviour; kd matches
  the behaviour itself. The teacher is a zoo LoRA, or (context distillation) the base model with
  `shots` other training examples of the task in its prompt: that needs no LoRA teacher, so it
  reaches every task of the suite (`context_topk`; a row with teacher="context").

Teacher outputs come from a content-keyed, crash-safe cache (`TeacherOutputCache`): SmolLM2's
vocabulary has 49,152 entries, so each answer position keeps the teacher's top-k log-probabilities
(which carry the log-normaliser: they are log-softmax values). The KL is then exact between the two
distributions coarsened to k + 1 outcomes (the top-k tokens and "any other token"): a lower bound on
the full KL that equals it when the top-k hold all the teacher's mass. `TeacherOutputCache.mass`
reports how much they hold.

Both losses read the answer positions only, as `scoring.gold_loglik` scores them."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import lora_applied
from llgbm.core.models import backbone_and_head
from llgbm.core.tasks import get_task
from llgbm.core.utils import atomic_file, hash_bytes, llgbm_home
from llgbm.eval.scoring import build_batch, encode_pairs

CACHE_VERSION = 1


def answer_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-softmax over the vocabulary at every position that predicts an answer token: (P, vocab),
    rows in batch order (sequence by sequence, position by position)."""
    body, head = backbone_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.log_softmax(head(hidden[:, :-1][batch["target_mask"][:, 1:]]).float(), -1)


def gold_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The answer tokens the `answer_logprobs` rows predict: (P,)."""
    return batch["input_ids"][:, 1:][batch["target_mask"][:, 1:]]


def kd_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_index: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student) on k + 1 outcomes: the teacher's top-k tokens
    (`teacher_logp`, `teacher_index`: (P, k)) and the rest of the vocabulary lumped together.

    `student_logp` is (P, vocab) log-softmax. With k = vocab this is the exact KL."""
    p_top = teacher_logp.exp()
    p_rest = (1 - p_top.sum(-1)).clamp_min(0)
    q_top = student_logp.gather(-1, teacher_index)
    q_rest = student_logp.scatter(-1, teacher_index, float("-inf")).logsumexp(-1)
    top = (p_top * (teacher_logp - q_top)).sum(-1)
    rest = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - q_rest), torch.zeros_like(p_rest))
    return (top + rest).mean()


def context_demos(task, i: int, shots: int) -> tuple[tuple[str, str], ...]:
    """The demonstrations in context distillation's teacher prompt for training example i: `shots`
    other training examples (never example i itself), drawn by (task name, i)."""
    if shots < 1:
        raise ValueError(f"context distillation needs shots ≥ 1, got {shots}")
    others = [j for j in range(len(task.train)) if j != i]
    rng = np.random.default_rng([zlib.crc32(task.name.encode()), i])
    return tuple(task.train[j] for j in sorted(rng.choice(others, size=min(shots, len(others)), replace=False)))


class ExamplePool:
    """Per task, the first `n` training examples (the split is already shuffled), tokenised once as
    (prompt ids, answer ids): what kd and sft see. Held-out tasks never enter a pool."""

    def __init__(self, tokenizer, task_names: list[str], n: int):
        if n < 1:
            raise ValueError(f"an example pool needs n ≥ 1 examples per task, got {n}")
        self.n, self.pad_id, self.tokenizer = n, tokenizer.pad_token_id, tokenizer
        self.encoded = {}
        for t in task_names:
            task = get_task(t)
            if task.heldout:
                raise ValueError(f"task {t!r} is held out: its examples must never train a generator")
            self.encoded[t] = encode_pairs(tokenizer, task, task.train[:n])

    def fingerprint(self, task: str) -> str:
        return hash_bytes(repr(self.encoded[task]).encode())[:16]

    def draw(self, task: str, k: int, rng: np.random.Generator) -> np.ndarray:
        pool = len(self.encoded[task])
        return rng.choice(pool, size=k, replace=pool < k)

    def batch(self, picks: list[tuple[str, np.ndarray]], device=None) -> dict[str, torch.Tensor]:
        """Right-padded sequences, adapter-major: for each (task, example ids), its examples in order."""
        return build_batch([self.encoded[t][i] for t, ids in picks for i in ids], self.pad_id, device)


class TeacherOutputCache:
    """Top-k teacher log-probabilities at the answer positions of a task's pool examples, one
    safetensors file per (base model, teacher adapter, examples, k). The key is the content, so a
    retrained teacher, another pool or another k is a new entry; a file is written whole or not at all
    (written beside, then renamed), and an unreadable one is recomputed, never served."""

    def __init__(self, model_fingerprint: str, top_k: int, root: Path | str | None = None):
        if top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {top_k}")
        self.model_fingerprint, self.top_k = model_fingerprint, top_k
        self.root = Path(root or llgbm_home() / "teacher_outputs")
        self.hits = self.misses = 0

    def path(self, adapter_hash: str, examples_fingerprint: str) -> Path:
        key = hash_bytes(f"v{CACHE_VERSION}|{self.model_fingerprint}|{adapter_hash}|{examples_fingerprint}|{self.top_k}"
                         .encode())[:24]
        return self.root / f"{key}.safetensors"

    def get_or_compute(self, adapter_hash: str, examples_fingerprint: str, compute) -> dict[str, torch.Tensor]:
        """{logp (P, k), index (P, k), offsets (examples + 1,)}; `compute()` returns the same dict."""
        path = self.path(adapter_hash, examples_fingerprint)
        if path.exists():
            try:
                out = load_file(str(path))
                if out["logp"].shape[-1] == self.top_k:
                    self.hits += 1
                    return out
            except Exception:  # a truncated or corrupt file: recompute it
                pass
        self.misses += 1
        out = {k: v.contiguous() for k, v in compute().items()}
        with atomic_file(path) as tmp:
            save_file(out, str(tmp), metadata=dict(adapter_hash=adapter_hash, model=self.model_fingerprint))
        return out

    @staticmethod
    def mass(entry: dict[str, torch.Tensor]) -> float:
        """Mean teacher probability held by the top-k (1: the coarsened KL is the exact KL)."""
        return float(entry["logp"].exp().sum(-1).mean())


@torch.no_grad()
def teacher_topk(model, adapter, lora_config, pool: ExamplePool, task: str, top_k: int,
                 batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Run a teacher (a peft folder or state dict) over a task's pool; its top-k answer log-probs."""
    device = next(model.parameters()).device
    encoded = pool.encoded[task]
    logps, idxs = [], []
    with lora_applied(model, adapter, lora_config) as adapted:
        for i in range(0, len(encoded), batch_size):
            lp = answer_logprobs(adapted, build_batch(encoded[i:i + batch_size], pool.pad_id, device))
            v, j = lp.topk(top_k, -1)
            logps.append(v.cpu())
            idxs.append(j.cpu())
    lengths = torch.tensor([len(t) for _, t in encoded])
    return dict(logp=torch.cat(logps), index=torch.cat(idxs).int(), offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))


@torch.no_grad()
def context_topk(model, pool: ExamplePool, task: str, shots: int, top_k: int, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Context distillation's teacher: the base model reading `shots` demonstrations (`context_demos`)
    before each pool example; its top-k answer log-probs, row for row as `teacher_topk`'s (the answer
    is tokenised apart, so its positions are the pool's)."""
    device, t = next(model.parameters()).device, get_task(task)
    encoded = [encode_pairs(pool.tokenizer, t, [(x, y)], prefix="".join(t.prompt(a) + t.target(b) for a, b in context_demos(t, i, shots)))[0]
               for i, (x, y) in enumerate(t.train[:pool.n])]
    if [a for _, a in encoded] != [a for _, a in pool.encoded[task]]:
        raise RuntimeError(f"task {task!r}: the answers tokenise differently after the demonstrations")
    logps, idxs = [], []
    for i in range(0, len(encoded), batch_size):
        v, j = answer_logprobs(model, build_batch(encoded[i:i + batch_size], pool.pad_id, device)).topk(top_k, -1)
        logps.append(v.cpu())
        idxs.append(j.cpu())
    lengths = torch.tensor([len(a) for _, a in encoded])
    return dict(logp=torch.cat(logps), index=torch.cat(idxs).int(), offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))


class OutputSupervision:
    """kd and sft losses of a batch of generated adapters on their tasks' pool examples.

    Each batch item is a zoo checkpoint (a manifest row: task, path, hash); that checkpoint is the kd
    teacher for it. A row with teacher="context" (`TaskData`'s rows) has the base model with
    `context_shots` demonstrations in its prompt as its kd teacher instead. Each call draws `per_adapter` examples per adapter from the row's task and runs one
    hooked forward over all of them (rows grouped by adapter), reading the answer positions."""

    def __init__(self, model, tokenizer, tasks: list[str], zoo_root: Path | str, lora_config, lora_tokenizer,
                 model_fingerprint: str, examples: int = 64, per_adapter: int = 4, top_k: int = 64,
                 cache_root: Path | str | None = None, context_shots: int = 4):
        model.requires_grad_(False)
        self.model, self.zoo_root, self.lora_config = model, Path(zoo_root), lora_config
        self.lora_tokenizer, self.per_adapter, self.context_shots = lora_tokenizer, per_adapter, context_shots
        self.flora = FunctionalLoRA.from_lora_config(model, lora_config)
        self.pool = ExamplePool(tokenizer, sorted(tasks), examples)
        self.cache = TeacherOutputCache(model_fingerprint, top_k, cache_root)
        self._teachers: dict[str, dict[str, torch.Tensor]] = {}

    def key(self) -> dict:
        """What the losses depend on, for run keys (context_shots only where it is not the default, so
        earlier runs keep their keys)."""
        return dict(examples=self.pool.n, per_adapter=self.per_adapter, top_k=self.cache.top_k,
                    **({"context_shots": self.context_shots} if self.context_shots != 4 else {}))

    def teacher(self, row: dict) -> dict[str, torch.Tensor]:
        if row.get("teacher") == "context":
            train = get_task(row["task"]).train          # the demonstrations are drawn from all of it
            key = f"context-{self.context_shots}-{hash_bytes(repr(train).encode())[:12]}"
            if (row["task"], key) not in self._teachers:
                self._teachers[row["task"], key] = self.cache.get_or_compute(
                    key, self.pool.fingerprint(row["task"]),
                    lambda: context_topk(self.model, self.pool, row["task"], self.context_shots, self.cache.top_k))
            return self._teachers[row["task"], key]
        if row["hash"] not in self._teachers:
            self._teachers[row["hash"]] = self.cache.get_or_compute(
                row["hash"], self.pool.fingerprint(row["task"]),
                lambda: teacher_topk(self.model, self.zoo_root / row["path"], self.lora_config, self.pool, row["task"],
                                     self.cache.top_k))
        return self._teachers[row["hash"]]

    def warm(self, rows: list[dict], progress: bool = True) -> float:
        """Fill the teacher cache for these checkpoints now (rather than during training); their mean top-k mass."""
        return float(np.mean([TeacherOutputCache.mass(self.teacher(r))
                              for r in tqdm(rows, desc="teacher outputs", disable=not progress, leave=False)]))

    def __call__(self, tokens: torch.Tensor, rows: list[dict], rng: np.random.Generator, kd: bool = True,
                 sft: bool = True) -> dict[str, torch.Tensor]:
        """Generated tokens (B, T, R, C) for checkpoints `rows` -> {"kd": …, "sft": …} (those asked for)."""
        if len(rows) != len(tokens):
            raise ValueError(f"{len(tokens)} generated adapters but {len(rows)} checkpoint rows")
        picks = [(r["task"], self.pool.draw(r["task"], self.per_adapter, rng)) for r in rows]
        batch = self.pool.batch(picks, next(self.model.parameters()).device)
        with self.flora.hooked(self.lora_tokenizer.detokenize_batch(tokens)):
            logp = answer_logprobs(self.model, batch)
        out = {}
        if sft:
            out["sft"] = -logp.gather(-1, gold_tokens(batch)[:, None]).mean()
        if kd:
            parts = []
            for row, (_, ids) in zip(rows, picks):
                t = self.teacher(row)
                for j in ids:
                    a, b = int(t["offsets"][j]), int(t["offsets"][j + 1])
                    parts.append((t["logp"][a:b], t["index"][a:b]))
            out["kd"] = kd_loss(logp, torch.cat([p for p, _ in parts]), torch.cat([j for _, j in parts]).long())
        return out

"""Phase 2: the delta-augmented dataset, the one path from zoo checkpoints to generator inputs.

Each item pairs a zoo checkpoint with a random batch of its task's unlabeled prompts (the
generator's condition), the checkpoint's DnD tokens (the weight target), its delta activation (the
behaviour target) and its task id. Checkpoints are tokenised once, here; `GeneratorData` draws the
generator's training batches from the same dataset, so nothing tokenises an adapter twice.

Held-out tasks never enter a training split: `split="train"` keeps only non-held-out tasks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from llgbm.core.lora import load_adapter_weights
from llgbm.core.tasks import get_task
from llgbm.core.utils import hash_bytes
from llgbm.generator.network import GeneratorConfig, encode_prompts, sample_condition, token_weights
from llgbm.generator.tokenizer import LoRATokenizer2D

SPLITS = ("train", "heldout", "all")


class DeltaAugmentedDataset(Dataset):
    """Items over zoo checkpoints; `repeats` draws several prompt batches per checkpoint per epoch.
    `deltas` (aligned with `manifest`) may be None for weight-only work before deltas exist."""

    def __init__(self, zoo_root: Path | str, manifest: list[dict], deltas: np.ndarray | None, tokenizer: LoRATokenizer2D,
                 split: str = "train", prompts_per_item: int = 16, repeats: int = 1, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if deltas is not None and len(manifest) != len(deltas):
            raise ValueError(f"{len(manifest)} checkpoints but {len(deltas)} deltas: they must be aligned row by row")
        keep = [i for i, row in enumerate(manifest)
                if split == "all" or get_task(row["task"]).heldout == (split == "heldout")]
        if not keep:
            raise ValueError(f"no checkpoint of the zoo falls in split {split!r}")
        self.root, self.tokenizer, self.split = Path(zoo_root), tokenizer, split
        self.rows = [manifest[i] for i in keep]
        self.deltas = None if deltas is None else torch.as_tensor(np.asarray(deltas)[keep], dtype=torch.float32)
        self.tasks = sorted({r["task"] for r in self.rows})
        self.task_ids = {t: i for i, t in enumerate(self.tasks)}
        self.prompts_per_item, self.repeats, self.seed = prompts_per_item, repeats, seed
        self._tokens: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def tokens(self, i: int) -> torch.Tensor:
        """DnD tokens of checkpoint i (tokenised once, then kept in memory)."""
        if i not in self._tokens:
            self._tokens[i] = self.tokenizer.tokenize(load_adapter_weights(self.root / self.rows[i]["path"]))
        return self._tokens[i]

    def token_tensor(self) -> torch.Tensor:
        """Every checkpoint's tokens stacked: (checkpoints, n_tokens, r + 2, chunk), NaN padding."""
        return torch.stack([self.tokens(i) for i in range(len(self.rows))])

    def fingerprint(self, with_deltas: bool = True) -> str:
        """What a generator learns from: the checkpoints (by content hash), and their deltas if used."""
        parts = [json.dumps([r["hash"] for r in self.rows]).encode()]
        if with_deltas and self.deltas is not None:
            parts.append(self.deltas.numpy().tobytes())
        return hash_bytes(*parts)[:16]

    def __getitem__(self, idx: int) -> dict:
        i = idx % len(self.rows)
        row = self.rows[i]
        prompts = get_task(row["task"]).prompts("train")
        rng = np.random.default_rng([self.seed, idx])
        pick = rng.choice(len(prompts), size=min(self.prompts_per_item, len(prompts)), replace=False)
        return dict(prompts=[prompts[j] for j in pick], tokens=self.tokens(i),
                    delta=None if self.deltas is None else self.deltas[i],
                    task_id=self.task_ids[row["task"]], task=row["task"], adapter_hash=row["hash"], path=row["path"])


# The seed's name, kept as an alias: the class is model-neutral (its layout comes from the model config).
Text2Qwen25LoRA_DeltaDataset = DeltaAugmentedDataset


def collate(items: list[dict]) -> dict:
    deltas = [it["delta"] for it in items]
    return dict(prompts=[it["prompts"] for it in items], tokens=torch.stack([it["tokens"] for it in items]),
                delta=None if any(d is None for d in deltas) else torch.stack(deltas),
                task_id=torch.tensor([it["task_id"] for it in items]),
                task=[it["task"] for it in items], adapter_hash=[it["adapter_hash"] for it in items])


def create_dataloader(dataset: DeltaAugmentedDataset, batch_size: int = 4, shuffle: bool = True,
                      seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


class GeneratorData:
    """Generator training batches drawn from a training-split DeltaAugmentedDataset: each task's
    condition texts encoded once (MiniLM on CPU would otherwise dominate every step), the dataset's
    tokens with their padding mask and DnD's per-token loss weights, and its deltas.

    The condition is DnD's by default: `n_prompts` unlabeled prompts of the task. With `labeled=True`
    it is made of labeled examples (prompt + answer, what few-shot prompting sees), and with `shots`
    each condition holds that many distinct examples, repeated to fill the `n_prompts` channels (as
    a held-out task conditioned on its `shots` demonstrations is)."""

    def __init__(self, dataset: DeltaAugmentedDataset, encoder, gcfg: GeneratorConfig, labeled: bool = False,
                 shots: int | None = None):
        if dataset.split != "train":
            raise ValueError(f"a generator trains on the 'train' split only, got a {dataset.split!r} dataset")
        if shots is not None and not 1 <= shots <= gcfg.n_prompts:
            raise ValueError(f"shots must be between 1 and n_prompts={gcfg.n_prompts}, got {shots}")
        self.dataset, self.gcfg, self.lora_tokenizer = dataset, gcfg, dataset.tokenizer
        self.labeled, self.shots = labeled, shots
        self.rows, self.tasks, self.deltas = dataset.rows, dataset.tasks, dataset.deltas
        self.encoded = {t: encode_prompts(encoder, condition_texts(get_task(t), labeled), gcfg.prompt_tokens)
                        for t in self.tasks}
        tokens = dataset.token_tensor()
        self.weights = token_weights(tokens)
        self.mask = dataset.tokenizer.mask()          # one padding pattern per layout
        self.tokens = tokens.nan_to_num_()            # targets are NaN-free from here on; the mask remembers

    def fingerprint(self, with_deltas: bool = True) -> str:
        base = self.dataset.fingerprint(with_deltas)
        if not self.labeled and self.shots is None:
            return base                                # DnD's condition: the key of every earlier run
        return hash_bytes(base.encode(), f"labeled={self.labeled},shots={self.shots}".encode())[:16]

    def condition(self, task: str, rng: np.random.Generator) -> torch.Tensor:
        encoded = self.encoded[task]
        if self.shots is None:
            return sample_condition(encoded, self.gcfg.n_prompts, rng)
        pick = sample_condition(encoded, self.shots, rng)
        return pick[torch.arange(self.gcfg.n_prompts) % self.shots]

    def draw(self, rng: np.random.Generator, batch_size: int):
        """(dataset rows, condition, teacher tokens, teacher deltas or None) for `batch_size` random checkpoints."""
        idx = rng.integers(0, len(self.rows), size=batch_size)
        cond = torch.stack([self.condition(self.rows[i]["task"], rng) for i in idx])
        t = torch.as_tensor(idx)
        return idx, cond, self.tokens[t], None if self.deltas is None else self.deltas[t]

    def batch(self, rng: np.random.Generator, batch_size: int):
        """(condition, teacher tokens, teacher deltas or None) for `batch_size` random checkpoints."""
        return self.draw(rng, batch_size)[1:]


class TaskData(GeneratorData):
    """Generator training batches over tasks instead of zoo checkpoints, for objectives that need no
    LoRA teacher: sft, and kd whose teacher is the base model with demonstrations in its prompt
    (`teacher="context"`: context distillation). So a generator can train on every task of the large
    suite, not only those with teachers. Each row is a task; its weight target is `offset` (the
    zoo's mean teacher token, or a fresh LoRA's init: where the generator starts), which these
    objectives never read. The condition draws from each task's first `prompt_pool` train prompts
    (None: all), encoded once; `encoded` is a dict shared between TaskData over overlapping tasks."""

    TEACHERS = ("none", "context")

    def __init__(self, task_names: list[str], encoder, gcfg: GeneratorConfig, lora_tokenizer: LoRATokenizer2D,
                 offset: torch.Tensor, teacher: str = "none", labeled: bool = False, shots: int | None = None,
                 prompt_pool: int | None = None, encoded: dict | None = None):
        if teacher not in self.TEACHERS:
            raise ValueError(f"unknown teacher {teacher!r}; expected one of {self.TEACHERS}")
        held = [t for t in task_names if get_task(t).heldout]
        if held or not task_names:
            raise ValueError(f"a generator trains on training tasks only; got held-out {held}" if held
                             else "TaskData needs at least one training task")
        if shots is not None and not 1 <= shots <= gcfg.n_prompts:
            raise ValueError(f"shots must be between 1 and n_prompts={gcfg.n_prompts}, got {shots}")
        expected = tuple(lora_tokenizer.mask().shape)
        if tuple(offset.shape) != expected:
            raise ValueError(f"offset must be one token tensor of shape {expected} (n_tokens, rank + 2, chunk), "
                             f"got {tuple(offset.shape)}")
        self.dataset, self.gcfg, self.lora_tokenizer, self.teacher = None, gcfg, lora_tokenizer, teacher
        self.labeled, self.shots, self.deltas, self.prompt_pool = labeled, shots, None, prompt_pool
        self.tasks = sorted(task_names)
        self.rows = [dict(task=t, hash=f"task:{t}", path=None, teacher=teacher) for t in self.tasks]
        shared = {} if encoded is None else encoded      # a caller's dict: runs over the same tasks encode once
        for t in self.tasks:
            key = (t, labeled, prompt_pool, gcfg.prompt_tokens)
            if key not in shared:
                shared[key] = encode_prompts(encoder, condition_texts(get_task(t), labeled)[:prompt_pool], gcfg.prompt_tokens)
        self.encoded = {t: shared[t, labeled, prompt_pool, gcfg.prompt_tokens] for t in self.tasks}
        offset = offset.nan_to_num()
        self.tokens = offset[None].expand(len(self.rows), *offset.shape)   # one shared tensor, no copies
        self.weights, self.mask = token_weights(offset[None]), lora_tokenizer.mask()

    def fingerprint(self, with_deltas: bool = True) -> str:
        """The tasks (by their training data), the teacher, the condition and the starting token."""
        data = [(t, get_task(t).train) for t in self.tasks]
        pool = f",prompt_pool={self.prompt_pool}" if self.prompt_pool is not None else ""
        return hash_bytes(repr(data).encode(), self.tokens[0].numpy().tobytes(),
                          f"teacher={self.teacher},labeled={self.labeled},shots={self.shots}{pool}".encode())[:16]


def lora_init_tokens(base_model, lora_config, lora_tokenizer: LoRATokenizer2D, seed: int = 0) -> torch.Tensor:
    """A fresh LoRA's init (peft's: A random, B zero) as DnD tokens: where a generator without a zoo
    starts (`TaskData`'s offset), as a LoRA trained from scratch would. All-zero tokens would not do:
    with both factors zero, neither gets a gradient."""
    from llgbm.teachers.packing import initial_state  # lazy: peft wraps the model only for this call
    return lora_tokenizer.tokenize(initial_state(base_model, lora_config, "generator-init", seed))


def condition_texts(task, labeled: bool = False, pairs=None) -> list[str]:
    """What a generator is conditioned on: the task's prompts (DnD), or with `labeled` its examples
    written out with their answers, as a few-shot prompt shows them. `pairs` defaults to the train split."""
    pairs = task.train if pairs is None else pairs
    return [task.prompt(x) + (task.target(y) if labeled else "") for x, y in pairs]

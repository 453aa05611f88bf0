"""Phase 2: the delta-augmented dataset. Each item pairs a zoo checkpoint with a random batch of its
task's unlabeled prompts (the generator's condition), the checkpoint's DnD tokens (the weight target),
its delta activation (the behaviour target) and its task id.

Held-out tasks never enter a training split: `split="train"` keeps only non-held-out tasks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .tasks import get_task
from .tokenizer import LoRATokenizer2D
from .zoo import load_adapter_weights

SPLITS = ("train", "heldout", "all")


class DeltaAugmentedDataset(Dataset):
    """Items over zoo checkpoints; `repeats` draws several prompt batches per checkpoint per epoch."""

    def __init__(self, zoo_root: Path | str, manifest: list[dict], deltas: np.ndarray, tokenizer: LoRATokenizer2D,
                 split: str = "train", prompts_per_item: int = 16, repeats: int = 1, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if len(manifest) != len(deltas):
            raise ValueError(f"{len(manifest)} checkpoints but {len(deltas)} deltas: they must be aligned row by row")
        keep = [i for i, row in enumerate(manifest)
                if split == "all" or get_task(row["task"]).heldout == (split == "heldout")]
        if not keep:
            raise ValueError(f"no checkpoint of the zoo falls in split {split!r}")
        self.root, self.tokenizer, self.split = Path(zoo_root), tokenizer, split
        self.rows = [manifest[i] for i in keep]
        self.deltas = torch.as_tensor(np.asarray(deltas)[keep], dtype=torch.float32)
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

    def __getitem__(self, idx: int) -> dict:
        i = idx % len(self.rows)
        row = self.rows[i]
        prompts = get_task(row["task"]).prompts("train")
        rng = np.random.default_rng([self.seed, idx])
        pick = rng.choice(len(prompts), size=min(self.prompts_per_item, len(prompts)), replace=False)
        return dict(prompts=[prompts[j] for j in pick], tokens=self.tokens(i), delta=self.deltas[i],
                    task_id=self.task_ids[row["task"]], task=row["task"], adapter_hash=row["hash"], path=row["path"])


# The seed's name, kept as an alias: the class is model-neutral (its layout comes from the model config).
Text2Qwen25LoRA_DeltaDataset = DeltaAugmentedDataset


def collate(items: list[dict]) -> dict:
    return dict(prompts=[it["prompts"] for it in items], tokens=torch.stack([it["tokens"] for it in items]),
                delta=torch.stack([it["delta"] for it in items]),
                task_id=torch.tensor([it["task_id"] for it in items]),
                task=[it["task"] for it in items], adapter_hash=[it["adapter_hash"] for it in items])


def create_dataloader(dataset: DeltaAugmentedDataset, batch_size: int = 4, shuffle: bool = True,
                      seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))

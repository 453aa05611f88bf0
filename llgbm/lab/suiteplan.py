"""Which tasks of the large suite (llgbm.core.suite) an experiment uses, per profile: the nested,
type-balanced training subsets of the scaling curve, the near and far held-out tasks it scores, and
the items per task. On 2 cores the quick profile cannot score all 63 held-out tasks nor give every
training task a LoRA teacher; the plan says which it takes, and the full profile takes all."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llgbm.core import cache, tasks
from llgbm.core.utils import check_profile, hash_bytes, llgbm_home, preset_config
from llgbm.eval.scoring import evaluate_task


def balanced_order(names: list[str], seed: int = 0) -> list[str]:
    """`names` in a type-balanced order: one task of each type in turn (types in sorted order, tasks
    of a type shuffled by `seed`), so every prefix is as balanced over types as it can be and the
    prefixes are nested (the 16 tasks of a scaling point are among its 32)."""
    by_type: dict[str, list[str]] = {}
    for n in sorted(names):
        by_type.setdefault(tasks.get_task(n).family, []).append(n)
    rng = np.random.default_rng(seed)
    queues = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(by_type.items())}
    out = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                out.append(q.pop(0))
    return out


@dataclass(frozen=True)
class SuitePlan:
    train_sizes: tuple[int | None, ...] = (16, 32, 64, 128, None)   # None: every training task
    near_tasks: int | None = 8             # held-out tasks scored, type-balanced (None: all)
    far_tasks: int | None = 8
    test_items: int = 64                   # per held-out task: 8 tasks x 64 = 512 pooled, the protocol's minimum
    dev_items: int = 16                    # per held-out task, from its dev split (choices only)
    seed: int = 0                          # the order of tasks within a type

    @classmethod
    def preset(cls, profile: str, **overrides) -> "SuitePlan":
        base = {"smoke": dict(train_sizes=(2, 4), near_tasks=2, far_tasks=2, test_items=4, dev_items=2),
                "quick": dict(train_sizes=(16, 64, None)),      # 32 and 128 left out: the 06 compute plan
                "full": dict(train_sizes=(16, 32, 64, 128, None), near_tasks=None, far_tasks=None, test_items=100,
                             dev_items=tasks.MAX_DEV)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def __post_init__(self):
        sizes = [s for s in self.train_sizes if s is not None]
        if not self.train_sizes or any(s < 1 for s in sizes) or sizes != sorted(set(sizes)):
            raise ValueError(f"train_sizes must be increasing positive counts (None last for all), got {self.train_sizes}")
        if self.test_items < 1 or self.dev_items < 1:
            raise ValueError(f"test_items and dev_items must be ≥ 1, got {self.test_items}, {self.dev_items}")

    def training(self, size: int | None = None) -> list[str]:
        """The first `size` training tasks in type-balanced order (None: all of them)."""
        order = balanced_order(tasks.list_tasks(suite="large", heldout=False), self.seed)
        if size is not None and size > len(order):
            raise ValueError(f"asked for {size} training tasks; the large suite has {len(order)}")
        return order[:size]

    def heldout(self, transfer: str) -> list[str]:
        """The near or far held-out tasks scored: type-balanced among those with ≥ test_items test items."""
        if transfer not in tasks.TRANSFERS:
            raise ValueError(f"unknown transfer {transfer!r}; expected one of {tasks.TRANSFERS}")
        eligible = [n for n in tasks.list_tasks(suite="large", transfer=transfer)
                    if len(tasks.get_task(n).test) >= self.test_items and len(tasks.get_task(n).dev) >= self.dev_items]
        count = self.near_tasks if transfer == "near" else self.far_tasks
        return balanced_order(eligible, self.seed)[:count]

    def items(self, transfer: str) -> int:
        """Test items pooled over the scored held-out tasks of one kind."""
        return len(self.heldout(transfer)) * self.test_items

    def table(self) -> list[dict]:
        """One row per scored held-out task and per scaling point: what the plan runs."""
        rows = [dict(part=f"held out, {tr}", task=n, type=tasks.get_task(n).family, items=self.test_items)
                for tr in tasks.TRANSFERS for n in self.heldout(tr)]
        return rows + [dict(part="training", task=f"{len(self.training(s))} tasks",
                            type=f"{len({tasks.get_task(n).family for n in self.training(s)})} types", items=None)
                       for s in self.train_sizes]


def base_accuracy(model, tokenizer, model_fingerprint: str, names: list[str], n_items: int,
                  progress: bool = True) -> dict[str, float]:
    """{task: the base model's exact match on its first `n_items` test items}. Each task is cached on
    its own under LLGBM_HOME/suite, keyed by model, items and the task's test data (an edited task
    is rescored; an interrupted run keeps the tasks it finished: the whole suite takes ~18 min on 2 cores)."""
    out = {}
    for n in tqdm(names, desc="base model on the suite", disable=not progress, leave=False):
        task = tasks.get_task(n)
        key = hash_bytes(json.dumps([model_fingerprint, n_items, n, task.test[:n_items]]).encode())[:16]
        out[n] = cache.cached(llgbm_home() / "suite" / f"base-accuracy-{n}-{key}.json",
                              lambda task=task: dict(acc=float(evaluate_task(model, tokenizer, task, n_items).acc)))["acc"]
    return out


def suite_table(base: dict[str, float], teacher: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per type: tasks (training / near / far), the base model's mean exact match over its
    tasks (`base`: {task: accuracy}) and, where a teacher exists, the teachers' (`teacher`)."""
    teacher = teacher or {}
    rows = []
    for n, acc in base.items():
        t = tasks.get_task(n)
        rows.append(dict(type=t.family, task=n, role=t.transfer or ("held out" if t.heldout else "training"),
                         base=acc, teacher=teacher.get(n, np.nan)))
    frame = pd.DataFrame(rows)
    out = frame.groupby("type", sort=False).agg(
        tasks=("task", "size"), training=("role", lambda r: int((r == "training").sum())),
        near=("role", lambda r: int((r == "near").sum())), far=("role", lambda r: int((r == "far").sum())),
        base_exact_match=("base", "mean"), teachers=("teacher", "count"), teacher_exact_match=("teacher", "mean"))
    return out

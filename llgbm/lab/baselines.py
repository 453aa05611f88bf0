"""The baselines a user would reach for before a generator (notebook 06, `suitelab`):
- few-shot prompting: k fixed training examples of the task in the prompt, no adapter;
- one multi-task LoRA on the union of the training tasks' examples (`TaskMixture`, at MULTITASK_LR)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from llgbm.core.tasks import Task, get_task
from llgbm.eval.scoring import demonstrations, icl_prefix  # noqa: F401  (re-exported)

# ------------------------------------------------------------------ few-shot prompting
# `demonstrations` and `icl_prefix` live in llgbm.eval.scoring (geomlib's notebooks prompt with them too).

def prompt_tokens(tokenizer, task: Task, n: int, prefix: str = "") -> float:
    """Mean prompt length in tokens over the first n test items (what a model reads per item)."""
    return float(np.mean([len(tokenizer(prefix + task.prompt(x), add_special_tokens=False).input_ids)
                          for x, _ in task.test[:n]]))


# ------------------------------------------------------------------ the multi-task LoRA

@dataclass(frozen=True)
class TaskMixture:
    """The union of several tasks' examples as one training task: each input is (task, input) and is
    prompted with its own task's instruction. `test` holds the first few test items of each task."""
    name: str
    members: tuple[str, ...]
    test_per_task: int = 4
    family: str = "mixture"
    heldout: bool = False

    @cached_property
    def train(self):
        return tuple(((t, x), y) for t in self.members for x, y in get_task(t).train)

    @cached_property
    def test(self):
        return tuple(((t, x), y) for t in self.members for x, y in get_task(t).test[:self.test_per_task])

    def prompt(self, x) -> str:
        task, inp = x
        return get_task(task).prompt(inp)

    dev = ()
    target = staticmethod(Task.target)
    score = staticmethod(Task.score)
    items = Task.items


# The multi-task LoRA's learning rate. At the zoo's 3e-3 (tuned for 30-step teachers) the 480-step
# multi-task run on SmolLM2 diverged near step 400 (training loss ~0.8 -> ~4.8, held-out log-lik far
# below the base model's); 1e-3 is the next rate down, not tuned on held-out scores.
MULTITASK_LR = 1e-3

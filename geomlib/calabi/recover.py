"""What a compressed model is worth beyond one perplexity (issue 29): recovery fine-tuning by distillation
from the dense model's logits, as a curve over steps; exact match on the lab's tasks (k-shot prompts,
tasks chosen on dev by the dense model, reported on test); and the memory a loaded model takes.

Recovery (`distill`): only the factorised layers' U, S, V and biases train (the dense layers and
embeddings stay frozen), on calibration windows, with the loss KL(dense ‖ compressed) of the next-token
distributions at every position: the dense model is the teacher, so no labels are needed and the
student learns the whole distribution rather than one token per position (SVD-LLM's second step trains
LoRA on the factors with the LM loss; `lab.finetune_factors` keeps that one for the seed's usage)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llgbm.core import tasks as tasks_
from llgbm.eval import scoring

from .svd import OptimizedCalabiYauLinear


def factor_parameters(model) -> list[torch.nn.Parameter]:
    """U, S, V and bias of every factorised layer; everything else is frozen."""
    model.requires_grad_(False)
    params = [p for m in model.modules() if isinstance(m, OptimizedCalabiYauLinear) for p in m.parameters()]
    if not params:
        raise ValueError("the model has no OptimizedCalabiYauLinear layer: nothing to recover")
    for p in params:
        p.requires_grad_(True)
    return params


def distill(model, dense, calib_ids: torch.Tensor, checkpoints, evaluate, lr: float = 1e-4, batch: int = 4,
            seed: int = 0, progress: bool = True) -> list[dict]:
    """Train `model`'s factors (in place) to match `dense`'s next-token distributions on calibration windows
    (AdamW, constant `lr`, `batch` windows a step drawn by a seeded generator), for max(`checkpoints`)
    steps; at each checkpoint (0 = before training) record {step, loss (mean KL of the steps since the
    last checkpoint), and evaluate(model)'s dict}. Returns the rows."""
    checkpoints = sorted(set(int(c) for c in checkpoints))
    if not checkpoints or checkpoints[0] < 0:
        raise ValueError(f"checkpoints are step counts ≥ 0; got {checkpoints}")
    opt = torch.optim.AdamW(factor_parameters(model), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    rows, losses = [], []
    bar = tqdm(total=checkpoints[-1], desc="recovery (distillation)", unit="step", disable=not progress, leave=False)
    for step in range(checkpoints[-1] + 1):
        if step in checkpoints:
            model.eval()
            rows.append(dict(step=step, kl=float(np.mean(losses)) if losses else float("nan"), **evaluate(model)))
            losses = []
        if step == checkpoints[-1]:
            break
        model.train()
        ids = calib_ids[torch.randint(0, len(calib_ids), (batch,), generator=gen)]
        with torch.no_grad():
            target = F.log_softmax(dense(input_ids=ids).logits.float(), -1)
        logp = F.log_softmax(model(input_ids=ids).logits.float(), -1)
        loss = F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update()
    bar.close()
    model.requires_grad_(False)
    return rows


def pick_tasks(model, tokenizer, candidates: list[str], k: int, n_dev: int, n_test: int, shots: int = 4) -> list[str]:
    """The `k` candidates the dense model does best on with a `shots`-shot prompt, on dev items (the test
    items after the first `n_test`, as `Task.items` takes them): a compressed model is compared where
    the dense one has something to lose, chosen without looking at test."""
    acc = {}
    for name in candidates:
        task = tasks_.get_task(name)
        dev = task.items(n_test, n_dev)[n_test:]
        answers = scoring.greedy_answers(model, tokenizer, task, [x for x, _ in dev], max_new_tokens=12,
                                         prefix=scoring.icl_prefix(task, shots))
        acc[name] = float(np.mean([task.score(a, y) for a, (_, y) in zip(answers, dev)]))
    return sorted(candidates, key=lambda t: (-acc[t], t))[:k]


def exact_match(model, tokenizer, names: list[str], n_test: int, shots: int = 4) -> np.ndarray:
    """0/1 per test item, task after task (`n_test` each, the `shots`-shot prompt of each task)."""
    out = []
    for name in names:
        task = tasks_.get_task(name)
        items = task.items(n_test)
        answers = scoring.greedy_answers(model, tokenizer, task, [x for x, _ in items], max_new_tokens=12,
                                         prefix=scoring.icl_prefix(task, shots))
        out += [float(task.score(a, y)) for a, (_, y) in zip(answers, items)]
    return np.array(out)


_RSS_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
what = sys.argv[1]
if what != "-":
    if what.startswith("preset:"):
        from llgbm.core.models import load_model
        model = load_model(what[len("preset:"):], device="cpu")[0]
    else:
        from geomlib.calabi.store import load_compressed
        model = load_compressed(what)
    with torch.no_grad():
        model(input_ids=torch.arange(1, 129)[None])
else:
    import transformers, accelerate, safetensors  # noqa: F401  the interpreter with the same libraries loaded
status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(("VmRSS:", "VmHWM:"))}
print(json.dumps(dict(peak_kb=status["VmHWM"], rss_kb=status["VmRSS"])))
"""


def rss_mb(what: str) -> dict[str, float]:
    """{peak, after}: resident memory (MB) of a fresh Python process that loads `what` and runs one 128-token
    forward, at its peak (loading included) and after the forward: `what` is a compressed-model folder,
    "preset:<name>" for a dense model, or "-" for the interpreter with the same libraries and no model
    (the baseline to subtract). Linux only (/proc). The peak is the process's own high-water mark (VmHWM):
    ru_maxrss would carry the parent's size across fork and exec."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(what)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"measuring the memory of {what} failed:\n{out.stderr[-2000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(peak=row["peak_kb"] / 1024, after=row["rss_kb"] / 1024)

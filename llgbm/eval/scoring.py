"""Scoring a model on a task: batched greedy exact-match accuracy and the mean log-likelihood of
the gold answer (a smooth metric that moves before accuracy does), with or without an adapter.

The lm_head runs only at answer positions: on a 135M model with a 49k vocabulary it is ~20% of a
full forward, and only a handful of positions per item need logits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import load_adapter_weights, lora_applied, stack_states
from llgbm.core.models import backbone_and_head
from llgbm.core.tasks import Task


def encode_pairs(tokenizer, task: Task, pairs, prefix: str = "") -> list[tuple[list[int], list[int]]]:
    """Prompt and target are tokenised apart so the answer boundary is exact. `prefix` goes before
    every prompt (few-shot demonstrations)."""
    prompts = tokenizer([prefix + task.prompt(x) for x, _ in pairs], add_special_tokens=False).input_ids
    targets = tokenizer([task.target(y) for _, y in pairs], add_special_tokens=False).input_ids
    return list(zip(prompts, targets))


def build_batch(encoded, pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded prompt+target ids with a mask over the target tokens (the positions to score)."""
    length = max(len(p) + len(t) for p, t in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, t) in enumerate(encoded):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        attn[i, :len(p) + len(t)] = 1
        target[i, len(p):len(p) + len(t)] = True
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=attn, target_mask=target).items()}


def target_logprobs(model, batch) -> torch.Tensor:
    """Log-probability of each target token, flattened over the batch's target positions."""
    body, head = backbone_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    predict = batch["target_mask"][:, 1:]               # position j predicts token j+1
    logits = head(hidden[:, :-1][predict]).float()
    return torch.gather(F.log_softmax(logits, -1), 1, batch["input_ids"][:, 1:][predict][:, None])[:, 0]


@torch.no_grad()
def gold_loglik(model, tokenizer, task: Task, pairs, batch_size: int = 32, prefix: str = "", copies: int = 1) -> np.ndarray:
    """Per item: mean log-probability per gold-answer token (the terminating newline included).
    `copies` > 1 runs each batch's rows that many times over in one forward (copy i for adapter i of a
    hooked FunctionalLoRA batch) and returns (copies, items)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pairs), batch_size):
        encoded = encode_pairs(tokenizer, task, pairs[i:i + batch_size], prefix)
        batch = {k: v.repeat(copies, 1) for k, v in build_batch(encoded, tokenizer.pad_token_id, device).items()}
        lp = target_logprobs(model, batch)
        counts = [len(t) for _, t in encoded] * copies
        out.append(np.array([c.mean().item() for c in torch.split(lp, counts)]).reshape(copies, -1))
    out = np.concatenate(out, axis=1) if out else np.zeros((copies, 0))
    return out if copies > 1 else out[0]


@torch.no_grad()
def greedy_answers(model, tokenizer, task: Task, inputs, max_new_tokens: int, batch_size: int = 32,
                   prefix: str = "", copies: int = 1) -> list[str] | list[list[str]]:
    """Greedy answers (left-padded batches, HF generate with its KV cache); with `copies` > 1, one
    list per copy of the rows, as in `gold_loglik`."""
    device = next(model.parameters()).device
    answers = [[] for _ in range(copies)]
    for i in range(0, len(inputs), batch_size):
        prompts = tokenizer([prefix + task.prompt(x) for x in inputs[i:i + batch_size]], add_special_tokens=False).input_ids
        length = max(map(len, prompts))
        ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(p)) + p for p in prompts], device=device)
        attn = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(input_ids=ids.repeat(copies, 1), attention_mask=attn.repeat(copies, 1),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts = [t.split("\n")[0] for t in tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)]
        for c in range(copies):
            answers[c] += texts[c * len(prompts):(c + 1) * len(prompts)]
    return answers if copies > 1 else answers[0]


@dataclass
class TaskScores:
    task: str
    correct: np.ndarray            # bool per item
    loglik: np.ndarray             # mean gold log-prob per item
    predictions: list[str] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return float(self.correct.mean())

    @property
    def loglik_mean(self) -> float:
        return float(self.loglik.mean())


def evaluate_task(model, tokenizer, task: Task, n: int | None = None, batch_size: int = 32, prefix: str = "",
                  loglik_only: bool = False, copies: int = 1, n_dev: int = 0) -> TaskScores | list[TaskScores]:
    """Score the first `n` test items (all when None), then `n_dev` dev items (`Task.items`): greedy
    exact match and gold log-likelihood (`loglik_only`: the log-likelihood alone, `correct` all NaN).
    `prefix` precedes every prompt. `copies` > 1: one TaskScores per copy of the rows (see
    `evaluate_adapters`)."""
    pairs = task.items(n, n_dev)
    ll = gold_loglik(model, tokenizer, task, pairs, batch_size, prefix, copies).reshape(copies, -1)
    if loglik_only:
        scores = [TaskScores(task.name, np.full(len(pairs), np.nan), ll[c]) for c in range(copies)]
    else:
        gold_len = max(len(tokenizer(task.target(y), add_special_tokens=False).input_ids) for _, y in pairs)
        preds = greedy_answers(model, tokenizer, task, [x for x, _ in pairs], gold_len + 1, batch_size, prefix, copies)
        preds = preds if copies > 1 else [preds]
        scores = [TaskScores(task.name, np.array([task.score(p, y) for p, (_, y) in zip(preds[c], pairs)]), ll[c], preds[c])
                  for c in range(copies)]
    return scores if copies > 1 else scores[0]


def evaluate_adapter(model, tokenizer, task: Task, adapter=None, n: int | None = None, lora_config=None,
                     batch_size: int = 32, **kw) -> TaskScores:
    """`evaluate_task` (and its keywords) with LoRA weights applied: None (the base model), a peft
    adapter folder, or a state dict with its LoraConfig. The base model is left clean."""
    if adapter is None:
        return evaluate_task(model, tokenizer, task, n, batch_size, **kw)
    with lora_applied(model, adapter, lora_config) as adapted:
        return evaluate_task(adapted, tokenizer, task, n, batch_size, **kw)


def evaluate_adapters(model, tokenizer, task: Task, adapters: list, n: int | None = None, lora_config=None,
                      batch_size: int = 32, **kw) -> list[TaskScores]:
    """`evaluate_adapter` for several adapters on the same items, in shared forwards: each batch's rows
    are repeated once per adapter, and FunctionalLoRA's hooks apply adapter i to copy i, decoding
    included (HF generate and its KV cache run under the hooks). An adapter is None (the base model:
    a zero LoRA), a peft folder or a state dict; all share one rank and targets (`lora_config`, or the
    first folder's). The scores equal one-at-a-time evaluation within float tolerance (tested)."""
    if not adapters:
        raise ValueError("no adapters to evaluate: pass at least one (None is the base model)")
    if all(a is None for a in adapters):
        return [evaluate_task(model, tokenizer, task, n, batch_size, **kw) for _ in adapters]
    if lora_config is None:
        from peft import LoraConfig
        folder = next((a for a in adapters if isinstance(a, (str, Path))), None)
        if folder is None:
            raise ValueError("state-dict adapters need their lora_config (rank, alpha, targets)")
        lora_config = LoraConfig.from_pretrained(str(folder))
    states = [load_adapter_weights(a) if isinstance(a, (str, Path)) else a for a in adapters]
    like = next(s for s in states if s is not None)
    states = [s if s is not None else {k: torch.zeros_like(v) for k, v in like.items()} for s in states]
    if any(s.keys() != like.keys() for s in states):
        raise ValueError("adapters evaluated together must share their LoRA tensors (same rank and targets)")
    device = next(model.parameters()).device
    flora = FunctionalLoRA.from_lora_config(model, lora_config, "hooks")
    with flora.hooked({k: v.to(device) for k, v in stack_states(states).items()}):
        scores = evaluate_task(model, tokenizer, task, n, batch_size, copies=len(states), **kw)
    return scores if len(states) > 1 else [scores]

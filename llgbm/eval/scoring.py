"""Scoring a model on a task: batched greedy exact-match accuracy and the mean log-likelihood of
the gold answer (a smooth metric that moves before accuracy does), with or without an adapter.

The lm_head runs only at answer positions: on a 135M model with a 49k vocabulary it is ~20% of a
full forward, and only a handful of positions per item need logits. A prefix shared by every item
(k-shot demonstrations, ~100 tokens before a ~20-token prompt) is read once per task: its KV cache
is computed once (per adapter copy) and every item's forward continues from it, so an item costs
what its own tokens cost. The tokens are the same as reading prefix + prompt whole (checked per
batch; where the tokeniser merges across the boundary the batch is read whole)."""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import load_adapter_weights, lora_applied, stack_states
from llgbm.core.models import backbone_and_head
from llgbm.core.tasks import Task


# ------------------------------------------------------------------ few-shot prompts

def demonstrations(task: Task, k: int = 4) -> tuple[tuple[str, str], ...]:
    """k training examples of the task, fixed per task (drawn by its name): the few-shot prompt's
    demonstrations, and the labeled generator's condition at test time."""
    if k < 1:
        raise ValueError(f"need k ≥ 1 demonstrations, got {k}")
    rng = np.random.default_rng(zlib.crc32(task.name.encode()))
    return tuple(task.train[i] for i in sorted(rng.choice(len(task.train), size=min(k, len(task.train)), replace=False)))


def icl_prefix(task: Task, k: int = 4) -> str:
    """The demonstrations written as the task's prompts with their answers, one after another; the
    test prompt follows. Refuses a demonstration whose input is a test item's."""
    demos = demonstrations(task, k)
    leak = {x for x, _ in demos} & {x for x, _ in task.test}
    if leak:
        raise ValueError(f"task {task.name!r}: demonstration input(s) {sorted(leak)} are test items")
    return "".join(task.prompt(x) + task.target(y) for x, y in demos)


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


REUSE_PREFIX = True      # False: read prefix + prompt whole for every item (the reference the tests compare with)


def target_logprobs(model, batch, past: tuple[int, object] | None = None) -> torch.Tensor:
    """Log-probability of each target token, flattened over the batch's target positions. `past`:
    (its length, a KV cache for every row) that the batch's tokens continue."""
    body, head = backbone_and_head(model)
    mask, kw = batch["attention_mask"], {}
    if past is not None:
        mask = torch.cat([mask.new_ones(mask.shape[0], past[0]), mask], 1)
        kw = dict(past_key_values=past[1], use_cache=True)
    hidden = body(input_ids=batch["input_ids"], attention_mask=mask, **kw).last_hidden_state
    predict = batch["target_mask"][:, 1:]               # position j predicts token j+1
    logits = head(hidden[:, :-1][predict]).float()
    return torch.gather(F.log_softmax(logits, -1), 1, batch["input_ids"][:, 1:][predict][:, None])[:, 0]


class SharedPrefix:
    """A prefix's tokens and KV cache, computed once for `copies` rows (one per adapter copy)."""

    def __init__(self, model, tokenizer, prefix: str, copies: int = 1):
        self.ids = tokenizer(prefix, add_special_tokens=False).input_ids
        body, _ = backbone_and_head(model)
        x = torch.tensor([self.ids], device=next(model.parameters()).device).repeat(copies, 1)
        self.cache = body(input_ids=x, use_cache=True).past_key_values

    def tails(self, prompts: list[list[int]]) -> list[list[int]] | None:
        """Each prompt's tokens after the prefix, if every prompt (prefix + prompt read whole) starts
        with exactly the prefix's tokens and has tokens of its own; else None (read them whole)."""
        n = len(self.ids)
        ok = all(len(p) > n and p[:n] == self.ids for p in prompts)
        return [p[n:] for p in prompts] if ok else None

    def past(self, rows_per_copy: int) -> tuple[int, object]:
        """(prefix length, a fresh cache with each copy's row repeated for its rows_per_copy items)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows_per_copy)
        return len(self.ids), cache


def shared_prefix(model, tokenizer, prefix: str, copies: int = 1) -> SharedPrefix | None:
    return SharedPrefix(model, tokenizer, prefix, copies) if prefix and REUSE_PREFIX else None


@torch.no_grad()
def gold_loglik(model, tokenizer, task: Task, pairs, batch_size: int = 32, prefix: str = "", copies: int = 1) -> np.ndarray:
    """Per item: mean log-probability per gold-answer token (the terminating newline included).
    `copies` > 1 runs each batch's rows that many times over in one forward (copy i for adapter i of a
    hooked FunctionalLoRA batch) and returns (copies, items)."""
    device = next(model.parameters()).device
    shared, out = shared_prefix(model, tokenizer, prefix, copies), np.zeros((copies, len(pairs)))
    every = encode_pairs(tokenizer, task, pairs, prefix)
    for rows in length_batches(every, batch_size):
        encoded = [every[j] for j in rows]
        tails = shared.tails([p for p, _ in encoded]) if shared else None
        past = None
        if tails is not None:
            encoded, past = [(tail, t) for tail, (_, t) in zip(tails, encoded)], shared.past(len(encoded))
        batch = {k: v.repeat(copies, 1) for k, v in build_batch(encoded, tokenizer.pad_token_id, device).items()}
        lp = target_logprobs(model, batch, past)
        counts = [len(t) for _, t in encoded] * copies
        out[:, rows] = np.array([c.mean().item() for c in torch.split(lp, counts)]).reshape(copies, -1)
    return out if copies > 1 else out[0]


def length_batches(encoded, batch_size: int) -> list[list[int]]:
    """Item indices in batches of `batch_size`, items of similar length together (sorted by prompt +
    target tokens; ties keep their order), so a batch pads little: on the held-out tasks 15% of the
    scored tokens were padding in item order, 5% sorted."""
    order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]) + len(encoded[j][1]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def greedy_answers(model, tokenizer, task: Task, inputs, max_new_tokens: int, batch_size: int = 32,
                   prefix: str = "", copies: int = 1) -> list[str] | list[list[str]]:
    """Greedy answers (left-padded batches, HF generate with its KV cache; after a shared prefix,
    `_greedy_after`); with `copies` > 1, one list per copy of the rows, as in `gold_loglik`."""
    device = next(model.parameters()).device
    shared = shared_prefix(model, tokenizer, prefix, copies)
    answers = [[] for _ in range(copies)]
    for i in range(0, len(inputs), batch_size):
        prompts = tokenizer([prefix + task.prompt(x) for x in inputs[i:i + batch_size]], add_special_tokens=False).input_ids
        tails = shared.tails(prompts) if shared else None
        if tails is not None:
            texts = _greedy_after(model, tokenizer, shared, tails, max_new_tokens, copies)
            for c in range(copies):
                answers[c] += texts[c * len(prompts):(c + 1) * len(prompts)]
            continue
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


def _greedy_after(model, tokenizer, shared: SharedPrefix, tails: list[list[int]], max_new_tokens: int,
                  copies: int) -> list[str]:
    """Greedy answers (to the first newline) of prompts that continue the shared prefix, rows in
    `copies` blocks. Prompts of one length go together (no padding); decoding stops at end of text,
    or once every row has a newline (nothing after it is kept)."""
    body, head = backbone_and_head(model)
    device = next(model.parameters()).device
    newline: dict[int, bool] = {}
    texts = [""] * (copies * len(tails))
    by_length: dict[int, list[int]] = {}
    for j, t in enumerate(tails):
        by_length.setdefault(len(t), []).append(j)
    for idx in by_length.values():
        ids = torch.tensor([tails[j] for j in idx], device=device).repeat(copies, 1)
        _, cache = shared.past(len(idx))
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        stopped = torch.zeros_like(done)
        out = []
        for _ in range(max_new_tokens):
            hidden = body(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
            ids = head(hidden[:, -1]).argmax(-1)
            ids = torch.where(stopped, torch.full_like(ids, tokenizer.pad_token_id), ids)
            out.append(ids)
            stopped |= ids == tokenizer.eos_token_id
            for r, tok in enumerate(ids.tolist()):
                if tok not in newline:
                    newline[tok] = "\n" in tokenizer.decode([tok])
                done[r] |= newline[tok]
            if bool((done | stopped).all()):
                break
            ids = ids[:, None]
        decoded = tokenizer.batch_decode(torch.stack(out, 1), skip_special_tokens=True)
        for c in range(copies):
            for k, j in enumerate(idx):
                texts[c * len(tails) + j] = decoded[c * len(idx) + k].split("\n")[0]
    return texts


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

"""Packed, multi-teacher zoo training: several (task, seed) teachers train in one forward/backward
of the shared base model, their examples packed into rows instead of padded.

- **Packing.** Each step, every teacher's batch (the same examples `zoo.train_teacher` draws) is laid
  end to end into rows of `row_len` tokens; an example never straddles two rows. Position ids
  restart at every example, so the model's attention keeps each example to itself (transformers'
  packed-sequence mask) and RoPE sees the positions it would see alone. Only a row's tail is padding.
- **Many teachers, one forward.** The teachers' examples follow each other in the flattened token
  stream, so each teacher owns one contiguous span of tokens; a forward hook on every target Linear
  adds s·B_k(A_k x) on teacher k's span. Teacher k's loss is the mean over its own answer tokens,
  and the step minimises their sum: no teacher's loss depends on another's LoRA, so each gets the
  gradient it would get alone. AdamW is elementwise: one optimizer over all teachers' factors is
  K independent ones.
- **The same runs.** A packed teacher starts from the LoRA init its solo run draws, sees the same
  batches, saves the same resume state (a solo run can resume it, and the reverse) and the same
  checkpoints, record and manifest rows. Only the float summation order differs (tested: weights,
  losses and scores match the solo run within float tolerance)."""
from __future__ import annotations

import contextlib
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from peft import get_peft_model, get_peft_model_state_dict

from llgbm.core.lora import pair_weights
from llgbm.core.models import backbone_and_head


def pack(examples: list[list[tuple[list[int], list[int]]]], row_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Teachers' encoded (prompt, target) examples -> packed rows.

    Returns input_ids / position_ids / target_mask (rows, L) with L = max(row_len, longest example),
    and `owner` (rows·L,): the teacher of every token of the flattened stream (a row's tail padding
    belongs to the teacher before it), non-decreasing, so each teacher owns one contiguous span."""
    longest = max(len(p) + len(t) for ex in examples for p, t in ex)
    length = max(row_len, longest)
    rows, current = [], []   # a row: list of (teacher, prompt, target)

    def used(row):
        return sum(len(p) + len(t) for _, p, t in row)
    for k, ex in enumerate(examples):
        for p, t in ex:
            if current and used(current) + len(p) + len(t) > length:
                rows.append(current)
                current = []
            current.append((k, p, t))
    if current:
        rows.append(current)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    owner = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        at = 0
        for k, p, t in row:
            n = len(p) + len(t)
            ids[r, at:at + n] = torch.tensor(p + t)
            pos[r, at:at + n] = torch.arange(n)
            target[r, at + len(p):at + n] = True
            owner[r, at:] = k
            at += n
        pos[r, at:] = torch.arange(length - at)   # the tail padding: a segment of its own
    return dict(input_ids=ids, position_ids=pos, target_mask=target, owner=owner.reshape(-1))


def spans(owner: torch.Tensor, n_teachers: int) -> list[tuple[int, int]]:
    """[start, end) of each teacher's tokens in the flattened stream (`owner` is non-decreasing)."""
    counts = torch.bincount(owner, minlength=n_teachers).tolist()
    ends = np.cumsum(counts).tolist()
    return [(e - c, e) for c, e in zip(counts, ends)]


@contextlib.contextmanager
def span_lora(model, factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], scaling: float, token_spans):
    """Forward hooks: teacher k's (A, B) on its span of the flattened tokens of every target Linear."""
    modules = dict(model.named_modules())
    handles = []

    def make_hook(name):
        def hook(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            parts = []
            for k, (s, e) in enumerate(token_spans):
                a, b = factors[k][name]
                parts.append((x[s:e] @ a.T) @ b.T)
            return output + scaling * torch.cat(parts).reshape(output.shape)
        return hook
    try:
        for name in factors[0]:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield model
    finally:
        for h in handles:
            h.remove()


def packed_losses(model, batch: dict[str, torch.Tensor], n_teachers: int) -> torch.Tensor:
    """(n_teachers,) mean negative log-likelihood of each teacher's answer tokens in a packed batch."""
    body, head = backbone_and_head(model)
    hidden = body(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    predict = batch["target_mask"][:, 1:]                 # position j predicts token j+1 (same example)
    logits = head(hidden[:, :-1][predict]).float()
    lp = torch.gather(F.log_softmax(logits, -1), 1, batch["input_ids"][:, 1:][predict][:, None])[:, 0]
    owner = batch["owner"].reshape(batch["input_ids"].shape)[:, 1:][predict]
    total = torch.zeros(n_teachers, dtype=lp.dtype).index_add(0, owner, -lp)
    return total / torch.bincount(owner, minlength=n_teachers).clamp_min(1)


def initial_state(base_model, lora_config, task_name: str, seed: int) -> dict[str, torch.Tensor]:
    """The LoRA init the solo run of (task, seed) draws (peft's, under the run's seed)."""
    torch.manual_seed(zlib.crc32(f"{task_name}/{seed}".encode()))
    model = get_peft_model(base_model, lora_config)
    try:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    finally:
        model.unload()


def peft_param_order(base_model, lora_config) -> list[str]:
    """State-dict keys of the LoRA factors in the order peft's trainable parameters come (the order
    the solo run's optimizer state is saved in)."""
    model = get_peft_model(base_model, lora_config)
    try:
        return [n.replace(".default", "") for n, p in model.named_parameters() if p.requires_grad]
    finally:
        model.unload()


class PackedTeachers:
    """K teachers' LoRA factors as leaf tensors, one AdamW over all, and the packed step."""

    def __init__(self, base_model, lora_config, states: list[dict[str, torch.Tensor]], lr: float):
        self.model, self.scaling = base_model, lora_config.lora_alpha / lora_config.r
        self.order = peft_param_order(base_model, lora_config)
        self.states = [{k: s[k].clone().requires_grad_(True) for k in self.order} for s in states]
        self.factors = [pair_weights(s) for s in self.states]     # {module: (A, B)}, views of the leaves
        self.params = [s[k] for s in self.states for k in self.order]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def teacher_params(self, k: int) -> list[torch.Tensor]:
        return [self.states[k][key] for key in self.order]

    def step(self, batch: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        """One optimizer step on the sum of the teachers' losses; returns the (K,) losses."""
        k = len(self.states)
        flags = [p.requires_grad for p in self.model.parameters()]
        self.model.requires_grad_(False)
        try:
            with span_lora(self.model, self.factors, self.scaling, spans(batch["owner"], k)):
                losses = packed_losses(self.model, batch, k)
            if not torch.isfinite(losses).all():
                return losses.detach()
            self.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
        finally:
            for p, f in zip(self.model.parameters(), flags):
                p.requires_grad_(f)
        return losses.detach()

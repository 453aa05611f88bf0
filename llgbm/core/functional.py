"""Phase 3: generated LoRA weights applied to the frozen base model without touching it, so that a
loss on the delta activation sends gradients back into the generator.

Two modes compute the same function:
- ``"hooks"`` (default): a forward hook on every target Linear adds s·B(Ax) to its output. It never
  forms B·A, and it carries a *batch* of adapters at once: the rows of the input are split into
  `n_adapters` equal groups (adapter i sees group i), so one forward serves a whole generator batch.
- ``"functional"``: the seed's description: `apply_lora_weights` returns the effective weights
  W + s·B·A, and `torch.func.functional_call` runs the model with them, one adapter at a time.

Both take LoRA tensors in peft's state-dict naming (what `LoRATokenizer2D.detokenize` returns), with a
leading adapter dimension for the hooks mode."""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from torch.func import functional_call

from llgbm.core.lora import load_adapter_weights, lora_applied, pair_weights, stack_states
from llgbm.core.models import backbone_and_head
from llgbm.core.timing import median_time


class FunctionalLoRA:
    """LoRA on a frozen causal LM, differentiable in the LoRA tensors. `scaling` is peft's α/r."""

    MODES = ("hooks", "functional")

    def __init__(self, model: nn.Module, scaling: float, mode: str = "hooks"):
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {self.MODES}")
        self.model, self.scaling, self.mode = model, float(scaling), mode
        self.modules = dict(model.named_modules())

    @classmethod
    def from_lora_config(cls, model: nn.Module, lora_config, mode: str = "hooks") -> "FunctionalLoRA":
        return cls(model, lora_config.lora_alpha / lora_config.r, mode)

    def _linear(self, name: str) -> nn.Linear:
        module = self.modules.get(name)
        if not isinstance(module, nn.Linear):
            raise KeyError(f"the LoRA tensors name module {name!r}, which is not a Linear of this model")
        return module

    def apply_lora_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One adapter's effective parameters {'<module>.weight': W + s·B·A}, connected to A and B."""
        params = {}
        for name, (a, b) in pair_weights(state).items():
            w = self._linear(name).weight
            params[f"{name}.weight"] = w + self.scaling * (b.to(w.dtype) @ a.to(w.dtype))
        return params

    @contextlib.contextmanager
    def hooked(self, state: dict[str, torch.Tensor]):
        """Within the block, the model carries a batch of adapters (tensors with a leading adapter
        dimension n): its input rows are read as n equal groups, group i under adapter i."""
        handles = []

        def make_hook(a: torch.Tensor, b: torch.Tensor):
            n = a.shape[0]

            def hook(module, inputs, output):
                x = inputs[0]
                if x.shape[0] % n:
                    raise ValueError(f"{x.shape[0]} input rows cannot be split among {n} adapters")
                g = x.reshape(n, -1, x.shape[-1])                      # (n, rows·tokens, in)
                low = torch.bmm(g, a.transpose(1, 2).to(x.dtype))      # (n, ·, r)
                up = torch.bmm(low, b.transpose(1, 2).to(x.dtype))     # (n, ·, out)
                return output + self.scaling * up.reshape(output.shape)
            return hook

        try:
            for name, (a, b) in pair_weights(state).items():
                if a.dim() != 3:
                    raise ValueError(f"hooks mode takes a leading adapter dimension: {name} A has shape {tuple(a.shape)}")
                handles.append(self._linear(name).register_forward_hook(make_hook(a, b)))
            yield self.model
        finally:
            for h in handles:
                h.remove()

    def last_token_states(self, state: dict[str, torch.Tensor], probes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last-layer hidden state at each probe's last real token under each adapter:
        (n_adapters, n_probes, hidden). `probes` is `tokenize_probes` output; no lm_head runs."""
        body, _ = backbone_and_head(self.model)
        ids, attn, last = probes["input_ids"], probes["attention_mask"], probes["last"]
        if self.mode == "hooks":
            n = next(iter(state.values())).shape[0]
            with self.hooked(state):
                hidden = body(input_ids=ids.repeat(n, 1), attention_mask=attn.repeat(n, 1)).last_hidden_state
            hidden = hidden.reshape(n, len(ids), *hidden.shape[1:])
            return hidden[:, torch.arange(len(ids)), last]
        # functional: one adapter at a time, the model run with its effective weights
        prefix = self.model.base_model_prefix + "."
        out = []
        n = next(iter(state.values())).shape[0] if next(iter(state.values())).dim() == 3 else None
        for i in range(n or 1):
            one = {k: (v[i] if n else v) for k, v in state.items()}
            params = {k[len(prefix):]: v for k, v in self.apply_lora_weights(one).items() if k.startswith(prefix)}
            hidden = functional_call(body, params, args=(), kwargs=dict(input_ids=ids, attention_mask=attn),
                                     strict=False).last_hidden_state
            out.append(hidden[torch.arange(len(ids)), last])
        return torch.stack(out)


def tokenize_probes(tokenizer, probes: list[str], device=None) -> dict[str, torch.Tensor]:
    """Right-padded probe ids, their mask and each probe's last real position (as `delta.last_token_states`)."""
    ids = tokenizer(list(probes), add_special_tokens=False).input_ids
    if not ids or min(map(len, ids)) == 0:
        raise ValueError("probe texts must be non-empty")
    length = max(map(len, ids))
    input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (length - len(x)) for x in ids], device=device)
    attn = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids], device=device)
    return dict(input_ids=input_ids, attention_mask=attn, last=attn.sum(1) - 1)


def compute_delta_differentiable(flora: FunctionalLoRA, state: dict[str, torch.Tensor], probes: dict[str, torch.Tensor],
                                 base_activation: torch.Tensor) -> torch.Tensor:
    """Δ = v(base + adapter) − v(base) for a batch of adapters: (n_adapters, hidden), differentiable in
    the LoRA tensors. `base_activation` is computed once per (model, probes) (`delta.compute_base_activation`)."""
    states = flora.last_token_states(state, probes)
    return states.float().mean(1) - torch.as_tensor(base_activation, dtype=torch.float32, device=states.device)


@torch.no_grad()
def peft_equality(model, adapter, flora_hooks: FunctionalLoRA, flora_call: FunctionalLoRA,
                  probes: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |logit difference| on the probes' real tokens: each FunctionalLoRA mode against peft
    carrying the same adapter folder, and the plain base model against peft (the LoRA's own effect)."""
    state = load_adapter_weights(adapter)
    batch = dict(input_ids=probes["input_ids"], attention_mask=probes["attention_mask"])
    with lora_applied(model, adapter) as peft_model:
        ref = peft_model(**batch).logits
    with flora_hooks.hooked(stack_states([state])):
        via_hooks = model(**batch).logits
    via_call = functional_call(model, flora_call.apply_lora_weights(state), args=(), kwargs=batch, strict=False).logits
    plain = model(**batch).logits
    keep = probes["attention_mask"].bool()
    diff = lambda a: float((a - ref)[keep].abs().max())  # noqa: E731
    return {"hooks vs peft": diff(via_hooks), "functional_call vs peft": diff(via_call), "base (no LoRA) vs peft": diff(plain)}


@contextlib.contextmanager
def delta_forwards(flora_hooks: FunctionalLoRA, states: list[dict[str, torch.Tensor]], probes: dict[str, torch.Tensor],
                   base_activation, flora_call: FunctionalLoRA | None = None):
    """The delta forward on the probes as zero-argument calls, by name: merged weights (a copy of the
    model with `states[0]` merged beforehand: the reference), the hooks with `states[0]`, all of
    `states` in one hooked forward and, with `flora_call`, functional_call. One definition for notebook
    03's costs and the bench's hot paths; the merged copy is freed on exit."""
    merged = copy.deepcopy(flora_hooks.model)
    with torch.no_grad():
        for name, w in flora_hooks.apply_lora_weights(states[0]).items():
            merged.get_parameter(name).copy_(w)
    body, _ = backbone_and_head(merged)
    batch = dict(input_ids=probes["input_ids"], attention_mask=probes["attention_mask"])
    one, many = stack_states(states[:1]), stack_states(states)
    calls = {"merged weights, forward": lambda: body(**batch),
             "hooks, forward": lambda: compute_delta_differentiable(flora_hooks, one, probes, base_activation)}
    if flora_call is not None:
        calls["functional_call, forward"] = lambda: compute_delta_differentiable(flora_call, one, probes, base_activation)
    calls[f"hooks, {len(states)} adapters in one forward"] = lambda: compute_delta_differentiable(flora_hooks, many, probes,
                                                                                                 base_activation)
    yield calls        # the merged copy goes when the context ends (with this frame)


def functional_costs(flora_hooks: FunctionalLoRA, flora_call: FunctionalLoRA, states: list[dict[str, torch.Tensor]],
                     probes: dict[str, torch.Tensor], base_activation, repeats: int = 7) -> dict[str, float]:
    """Median seconds of each of `delta_forwards` (no grad), of hooks forward + backward, and of
    `len(states)` merged forwards (that many times the one). `states[0]` is the single adapter timed."""
    with delta_forwards(flora_hooks, states, probes, base_activation, flora_call) as calls:
        with torch.no_grad():
            t = {name: median_time(fn, repeats) for name, fn in calls.items()}
    leaf = {k: v.clone().requires_grad_(True) for k, v in stack_states(states[:1]).items()}
    t["hooks, forward + backward"] = median_time(
        lambda: compute_delta_differentiable(flora_hooks, leaf, probes, base_activation).square().sum().backward(), repeats)
    t[f"{len(states)} merged forwards"] = len(states) * t["merged weights, forward"]
    return t

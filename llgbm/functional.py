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

import torch
import torch.nn as nn
from torch.func import functional_call

from .evaluation import backbone_and_head

_PEFT_PREFIX = "base_model.model."


def module_name(peft_key: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> 'model.layers.0.self_attn.q_proj'."""
    for suffix in (".lora_A.weight", ".lora_B.weight"):
        if peft_key.startswith(_PEFT_PREFIX) and peft_key.endswith(suffix):
            return peft_key[len(_PEFT_PREFIX):-len(suffix)]
    raise KeyError(f"{peft_key!r} is not a peft LoRA key ('{_PEFT_PREFIX}<module>.lora_A|lora_B.weight')")


def pair_weights(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft state dict -> {module name: (A, B)}; A is (..., r, in), B is (..., out, r)."""
    names = sorted({module_name(k) for k in state})
    pairs = {}
    for name in names:
        a, b = (state.get(f"{_PEFT_PREFIX}{name}.lora_{x}.weight") for x in "AB")
        if a is None or b is None:
            raise KeyError(f"module {name} has only one of lora_A / lora_B in the state dict")
        pairs[name] = (a, b)
    return pairs


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


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A list of per-adapter state dicts -> one dict with a leading adapter dimension."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}

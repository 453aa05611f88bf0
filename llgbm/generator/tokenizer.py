"""DnD's 2-D LoRA tokenizer: each LoRA A (r × in) and Bᵀ (r × out) is cut along its second
dimension into chunks of `chunk` columns; each chunk is z-normalised and becomes one token of shape
(r + 2, chunk): r rows of normalised values, then a row holding the chunk's mean and a row holding its
std (first column), NaN everywhere else. NaN marks padding and becomes the loss mask.

With chunk 130 and rank 8 this gives DnD's 10 × 130 tokens and 179 tokens per Qwen2.5-0.5B layer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llgbm.core.lora import LORA_TARGETS, load_adapter_weights, peft_key
from llgbm.core.utils import check_known

# Shapes only (no weights): the seed's two Qwen configurations, from their published config.json values.
SEED_CONFIGS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2),
}


def module_shapes(config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in a Llama/Qwen2 decoder layer."""
    h, f = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


@dataclass(frozen=True)
class Entry:
    key: str           # peft state-dict key
    rows: int          # the rank r
    cols: int          # in_features for A, out_features for Bᵀ
    transposed: bool   # True for B (stored out × r, tokenised as Bᵀ)


@dataclass(frozen=True)
class LoraLayout:
    entries: tuple[Entry, ...]
    rank: int
    chunk: int

    @classmethod
    def from_config(cls, config, rank: int = 8, targets=LORA_TARGETS, chunk: int = 130) -> "LoraLayout":
        shapes = module_shapes(config)
        check_known(targets, shapes, "LoRA targets")
        entries = []
        for layer in range(config.num_hidden_layers):
            for t in sorted(targets):  # peft's saved order is alphabetical within a layer
                fan_in, fan_out = shapes[t]
                entries.append(Entry(peft_key(layer, t, "A"), rank, fan_in, False))
                entries.append(Entry(peft_key(layer, t, "B"), rank, fan_out, True))
        return cls(tuple(entries), rank, chunk)

    @classmethod
    def for_seed_model(cls, name: str, rank: int, **kw) -> "LoraLayout":
        from transformers import Qwen2Config
        if name not in SEED_CONFIGS:
            raise KeyError(f"unknown seed model {name!r}; known: {', '.join(SEED_CONFIGS)}")
        return cls.from_config(Qwen2Config(**SEED_CONFIGS[name]), rank=rank, **kw)

    def tokens_per_entry(self, e: Entry) -> int:
        return -(-e.cols // self.chunk)

    @property
    def n_tokens(self) -> int:
        return sum(self.tokens_per_entry(e) for e in self.entries)

    @property
    def token_shape(self) -> tuple[int, int]:
        return (self.rank + 2, self.chunk)


class LoRATokenizer2D:
    """state dict ⇄ (n_tokens, r + 2, chunk) float tensor with NaN padding."""

    def __init__(self, layout: LoraLayout, eps: float = 1e-8):
        self.layout, self.eps = layout, eps

    def tokenize(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        lay = self.layout
        missing = [e.key for e in lay.entries if e.key not in state]
        if missing:
            raise KeyError(f"state dict lacks {len(missing)} LoRA tensor(s) of this layout, e.g. {missing[0]}; "
                           f"was it trained with the same model, rank and targets?")
        out = torch.full((lay.n_tokens, *lay.token_shape), float("nan"))
        i = 0
        for e in lay.entries:
            m = state[e.key].detach().float().cpu()
            m = m.T if e.transposed else m
            if m.shape != (e.rows, e.cols):
                raise ValueError(f"{e.key}: expected {(e.rows, e.cols)} after transposition, got {tuple(m.shape)}")
            for j in range(0, e.cols, lay.chunk):
                x = m[:, j:j + lay.chunk]
                mean, std = x.mean(), x.std(unbiased=False).clamp_min(self.eps)
                out[i, :e.rows, :x.shape[1]] = (x - mean) / std
                out[i, e.rows, 0], out[i, e.rows + 1, 0] = mean, std
                i += 1
        return out

    def detokenize(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens (real or generated) back to a peft state dict; NaN padding is ignored."""
        lay = self.layout
        if tuple(tokens.shape) != (lay.n_tokens, *lay.token_shape):
            raise ValueError(f"expected tokens of shape {(lay.n_tokens, *lay.token_shape)}, got {tuple(tokens.shape)}")
        return {k: v[0] for k, v in self.detokenize_batch(tokens[None]).items()}

    def detokenize_batch(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, n_tokens, r + 2, chunk) -> a state dict whose tensors have a leading dimension N.

        One scale-and-shift over all tokens and one gather, so it is cheap to differentiate through
        (a per-chunk loop would put thousands of small ops in the generator's backward pass)."""
        lay, r = self.layout, self.layout.rank
        if tokens.dim() != 4 or tuple(tokens.shape[1:]) != (lay.n_tokens, *lay.token_shape):
            raise ValueError(f"expected tokens of shape (N, {lay.n_tokens}, {lay.token_shape[0]}, {lay.token_shape[1]}), "
                             f"got {tuple(tokens.shape)}")
        # a generated std may come out negative; its magnitude is the scale
        values = tokens[:, :, :r] * tokens[:, :, r + 1, :1, None].abs() + tokens[:, :, r, :1, None]
        index, shapes = self._gather_index(tokens.device)
        flat = values.flatten(1)[:, index]
        parts = torch.split(flat, [a * b for a, b in shapes.values()], dim=1)
        return {k: p.reshape(len(tokens), *shape) for (k, shape), p in zip(shapes.items(), parts)}

    def _gather_index(self, device) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """Flat positions in the (n_tokens, r, chunk) value grid of every LoRA element, in state-dict order."""
        if getattr(self, "_index", None) is None or self._index.device != device:
            lay, r, c = self.layout, self.layout.rank, self.layout.chunk
            pieces, shapes, start = [], {}, 0
            for e in lay.entries:
                col = torch.arange(e.cols)
                idx = ((start + col // c)[None, :] * r + torch.arange(e.rows)[:, None]) * c + (col % c)[None, :]
                idx = idx.T if e.transposed else idx
                pieces.append(idx.reshape(-1))
                shapes[e.key] = tuple(idx.shape)
                start += lay.tokens_per_entry(e)
            self._index, self._shapes = torch.cat(pieces).to(device), shapes
        return self._index, self._shapes

    def mask(self) -> torch.Tensor:
        """True where a token holds data (the complement of the NaN padding): the loss mask."""
        zeros = {e.key: torch.zeros((e.cols, e.rows) if e.transposed else (e.rows, e.cols)) for e in self.layout.entries}
        return ~torch.isnan(self.tokenize(zeros))


def roundtrip_error(layout: LoraLayout, state=None, seed: int = 0) -> float:
    """Max |detokenize(tokenize(state)) − state| over every LoRA element. `state`: a peft state dict, a
    peft adapter folder, or None for a random adapter of the layout (scale 0.02: for layouts whose
    shapes are what matters, e.g. the seed's Qwen models)."""
    if isinstance(state, (str, Path)):
        state = load_adapter_weights(state)
    if state is None:
        g = torch.Generator().manual_seed(seed)
        state = {e.key: 0.02 * torch.randn((e.cols, e.rows) if e.transposed else (e.rows, e.cols), generator=g)
                 for e in layout.entries}
    tok = LoRATokenizer2D(layout)
    back = tok.detokenize(tok.tokenize(state))
    return max(float((back[k] - v).abs().max()) for k, v in state.items())

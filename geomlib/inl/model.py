"""The INL language model as the seed's code builds it: pre-LN blocks of attention, then the
relaxation sub-layer (x₀ = LayerNorm(residual), the attention output as context, x_T added back as
a residual), then the FFN; sinusoidal positions, low-rank token embeddings by default, an untied
head. `relax=False` gives the standard transformer of the same code, our baseline. Generation
keeps a KV cache; the relaxation is per token, so it needs no cache of its own."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from llgbm.core.utils import check_fields

from .layer import EARLY_STOP, IntegratorConfig, IntegratorNeuronLayer


@dataclass(frozen=True)
class INLConfig:
    vocab_size: int
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    num_iterations: int = 5        # K: every iteration in training; the cap in eval
    ff_dim: int = 2048
    max_seq_len: int = 2048
    dropout: float = 0.1
    lowrank_embeddings: bool = True
    lowrank_ratio: float = 0.125   # rank = max(64, d·ratio), the seed's rule
    relax: bool = True             # False: the standard pre-LN transformer (no relaxation sub-layer)
    early_stop: str | None = "batch"   # eval only: None, "batch" (the seed's) or "token" (ours)
    tol: float = 1e-3
    min_iterations: int = 3
    group_size: int = 64
    gradient_checkpointing: bool = False   # the seed passes this flag but its block never uses it
    embedding_init: str = "seed"   # "seed": N(0, 0.02) factors, so token embeddings (low-rank: std ≈ 0.003) are
                                   # drowned by the unit-amplitude sinusoidal positions; "scaled": unit-variance
                                   # token embeddings (up-projection std 1/√rank, embeddings ×√d as in Vaswani et al.)

    def __post_init__(self):
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size!r}: expected an integer ≥ 2 (the tokenizer's vocabulary size)")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.embedding_init not in ("seed", "scaled"):
            raise ValueError(f"embedding_init={self.embedding_init!r}: expected 'seed' or 'scaled'")
        if self.early_stop not in EARLY_STOP:
            raise ValueError(f"early_stop={self.early_stop!r}: expected one of {EARLY_STOP}")

    @property
    def embedding_rank(self) -> int:
        return max(64, int(self.d_model * self.lowrank_ratio))


# (d_model, num_layers, num_heads, iterations, ff_dim) as in the seed's create_model; the README's
# "Real Params" column where it gives one (counted at vocab 50,000 in `parameter_table`).
SIZES = {
    "small": (512, 6, 8, 5, 2048), "medium": (768, 12, 12, 7, 3072), "large": (1024, 24, 16, 10, 4096),
    "xlarge": (1536, 32, 24, 12, 6144), "3B": (2048, 40, 32, 15, 8192), "7B": (4096, 32, 32, 10, 16384),
    "13B": (5120, 40, 40, 12, 20480), "30B": (6656, 60, 52, 12, 26624), "70B": (8192, 80, 64, 12, 32768),
    # CPU sizes for this lab (2 cores): smoke tests and notebook 13's quick profile.
    "cpu-tiny": (64, 2, 4, 5, 256), "cpu-small": (256, 4, 4, 5, 1024),
}
README_PARAMS = {"small": 30e6, "medium": 80e6, "large": 220e6}
README_ONLY = ("2B", "2.2B", "5B", "10B")


class KVCache(list):
    """One (k, v) pair per layer, each (batch, heads, positions, head_dim); grows in place."""

    @property
    def length(self) -> int:
        return self[0][0].shape[2] if self else 0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: INLConfig):
        super().__init__()
        self.h, self.p = cfg.num_heads, cfg.dropout
        self.qkv, self.out = nn.Linear(cfg.d_model, 3 * cfg.d_model), nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = (t.view(B, S, self.h, D // self.h).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
        past = 0
        if cache is not None:
            if len(cache) > layer:
                past = cache[layer][0].shape[2]
                k, v = torch.cat([cache[layer][0], k], 2), torch.cat([cache[layer][1], v], 2)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
        p = self.p if self.training else 0.0
        if past and S > 1:
            mask = torch.arange(S, device=x.device)[:, None] + past >= torch.arange(past + S, device=x.device)[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=S > 1 and not past, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, S, D))


class INLBlock(nn.Module):
    def __init__(self, cfg: INLConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_attn, self.attention = nn.LayerNorm(d), CausalSelfAttention(cfg)
        if cfg.relax:
            self.norm1 = nn.LayerNorm(d)
            self.inl = IntegratorNeuronLayer(IntegratorConfig(dim=d, group_size=cfg.group_size, mu_init=0.0))
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ff_dim, d), nn.Dropout(cfg.dropout))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cache, layer, iterations, early_stop, tol, min_iterations, trajectory):
        a = self.attention(self.norm_attn(x), cache, layer)
        x = x + self.dropout(a)
        info = {}
        if hasattr(self, "inl"):
            x_t, _, info = self.inl.relax(a, self.norm1(x), iterations, early_stop=early_stop, tol=tol,
                                          min_iterations=min_iterations, return_trajectory=trajectory)
            x = x + self.dropout(x_t)
        return x + self.ff(self.norm2(x)), info


class LowRankEmbedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, rank: int, scaled: bool = False):
        super().__init__()
        self.embed_low, self.project_up = nn.Embedding(vocab_size, rank), nn.Linear(rank, d_model, bias=False)
        nn.init.normal_(self.embed_low.weight, std=0.02)
        nn.init.normal_(self.project_up.weight, std=rank ** -0.5 if scaled else 0.02)

    def forward(self, ids):
        return self.project_up(self.embed_low(ids))


class IntegratorLanguageModel(nn.Module):
    def __init__(self, cfg: INLConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.lowrank_embeddings:
            self.token_embedding = LowRankEmbedding(cfg.vocab_size, cfg.d_model, cfg.embedding_rank,
                                                    scaled=cfg.embedding_init == "scaled")
        else:
            self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
        pos = torch.arange(cfg.max_seq_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, cfg.d_model, 2) * (-math.log(10000.0) / cfg.d_model))
        pe = torch.zeros(cfg.max_seq_len, cfg.d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.embedding_init == "scaled" else 1.0
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(INLBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        self.iterations: list[torch.Tensor] = []   # per layer, (batch, seq) iteration counts of the last forward

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, return_aux: bool = False, cache: KVCache | None = None,
                num_iterations: int | None = None, early_stop: str | None | bool = True, tol: float | None = None):
        """(logits, aux). aux (when return_aux) holds per layer the trajectories 'x', 'v' as
        (batch·seq, T+1, d) and 'iterations' (batch, seq). early_stop=True uses the config's mode in
        eval mode and none in training, as the seed does; None/"batch"/"token" force one. `tol`
        overrides the config's ‖Δx‖ threshold."""
        cfg = self.cfg
        B, S = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + S > cfg.max_seq_len:
            raise ValueError(f"sequence of {past + S} positions exceeds max_seq_len={cfg.max_seq_len}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}); got [{int(input_ids.min())}, {int(input_ids.max())}]")
        mode = (cfg.early_stop if not self.training else None) if early_stop is True else early_stop
        k = cfg.num_iterations if num_iterations is None else num_iterations
        x = self.dropout(self.token_embedding(input_ids) * self.embed_scale + self.pe[past:past + S])
        aux, self.iterations = [], []
        for i, block in enumerate(self.layers):
            args = (cache, i, k, mode, cfg.tol if tol is None else tol, cfg.min_iterations, return_aux)
            if cfg.gradient_checkpointing and self.training and cache is None:
                x, info = checkpoint(block, x, *args, use_reentrant=False)
            else:
                x, info = block(x, *args)
            if "iterations" in info:
                self.iterations.append(info["iterations"])
            aux.append(info)
        logits = self.lm_head(self.final_norm(x))
        return logits, (aux if return_aux else None)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, do_sample: bool = True,
                 use_cache: bool = True, generator: torch.Generator | None = None, progress: bool = False,
                 **forward_kw) -> torch.Tensor:
        """Autoregressive sampling (nucleus/top-k/temperature, or greedy with do_sample=False); with a
        KV cache each new token costs one position's forward. `progress`: a bar over the new tokens."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False for greedy)")
        was_training = self.training
        self.eval()
        cache = KVCache() if use_cache else None
        ids, step_ids = input_ids, input_ids
        for _ in tqdm(range(max_new_tokens), desc="INL generate", unit="token", disable=not progress, leave=False):
            logits, _ = self(step_ids if use_cache else ids, cache=cache, **forward_kw)
            nxt = sample(logits[:, -1].float(), temperature, top_k, top_p, do_sample, generator)
            ids = torch.cat([ids, nxt], dim=1)
            step_ids = nxt
        self.train(was_training)
        return ids


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           do_sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (batch, 1) from last-position logits (batch, vocab)."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
    if top_p is not None:
        srt, idx = logits.sort(dim=-1, descending=True)
        cut = srt.softmax(-1).cumsum(-1) > top_p
        cut[..., 1:] = cut[..., :-1].clone()
        cut[..., 0] = False
        logits = logits.masked_fill(cut.scatter(1, idx, cut), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def size_config(size: str, vocab_size: int = 50000, **overrides) -> INLConfig:
    if size in README_ONLY:
        raise ValueError(f"size {size!r} appears only in the seed's README; its code defines {', '.join(SIZES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    check_fields(INLConfig, overrides)
    d, n, h, it, ff = SIZES[size]
    return INLConfig(vocab_size=vocab_size, d_model=d, num_layers=n, num_heads=h, num_iterations=it, ff_dim=ff, **overrides)


def create_model(size: str = "small", vocab_size: int = 50000, **overrides) -> IntegratorLanguageModel:
    """The seed's entry point: `create_model(size='small', vocab_size=50000)`."""
    return IntegratorLanguageModel(size_config(size, vocab_size, **overrides))


PARTS = {"embeddings": ("token_embedding",), "attention": ("norm_attn", "attention"), "relaxation": ("norm1", "inl"),
         "ffn": ("norm2", "ff"), "final norm": ("final_norm",), "lm_head": ("lm_head",)}


def parameter_breakdown(model: IntegratorLanguageModel) -> dict[str, int]:
    """Parameters by part; the parts sum to model.get_num_params()."""
    out = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        part = name.split(".")[2] if name.startswith("layers.") else name.split(".")[0]
        out[next(k for k, v in PARTS.items() if part in v)] += p.numel()
    return out


def parameter_table(sizes=None, vocab_size: int = 50000, **overrides):
    """The real parameter count of each size, built on the meta device (no memory), by part."""
    import pandas as pd
    rows = {}
    for size in sizes or [s for s in SIZES if not s.startswith("cpu")]:
        with torch.device("meta"):
            m = create_model(size, vocab_size, **overrides)
        row = parameter_breakdown(m)
        row["total"] = sum(row.values())
        row["README says"] = README_PARAMS.get(size, float("nan"))
        rows[size] = row
    return pd.DataFrame(rows).T


def transformer_like(cfg: INLConfig, target_params: int | None = None) -> INLConfig:
    """The standard transformer (relax=False) of `cfg`, its FFN widened (multiples of 8) so the total
    parameter count matches `target_params` (default: cfg's own model) as closely as possible."""
    if target_params is None:
        with torch.device("meta"):
            target_params = IntegratorLanguageModel(cfg).get_num_params()
    base = replace(cfg, relax=False)
    with torch.device("meta"):
        n0 = IntegratorLanguageModel(base).get_num_params()
    per_ff = cfg.num_layers * (2 * cfg.d_model + 1)      # one more FFN unit: a row, a column and a bias
    ff = max(8, cfg.ff_dim + round((target_params - n0) / per_ff / 8) * 8)
    return replace(base, ff_dim=ff)

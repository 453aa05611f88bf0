"""Coordinate modulation on any Hugging Face causal LM: `modulate(model, …)` wraps the target
projections in CoordinateModulatedLinear and returns a `CoordinateHost` that chooses θ for each
forward — a learned θ per task (the task id given), an explicit θ, or the predictor's θ from the
token embeddings — so HF's own forward, generate and KV cache run unchanged underneath.
`GeometricLlama` is the seed's from-scratch model: a Llama decoder (RMSNorm, RoPE, GQA, SwiGLU)
with its Q, K, V and FFN-gate projections modulated."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llgbm.core.utils import check_known

from .modulation import POOLING, CoordinateModulatedLinear, CoordinatePredictor, PrefixMean

# The seed's code modulates Q, K, V with 16 wavelets each and the FFN gate with 32 (its config's
# num_wavelet_pairs: 64 is not read by the model).
SEED_WAVELETS = {"q_proj": 16, "k_proj": 16, "v_proj": 16, "gate_proj": 32}
INITS = ("zero", "seed")


@dataclass(frozen=True)
class CoordinateConfig:
    num_coordinates: int = 1024
    modulation_rank: int = 12
    wavelets: tuple[tuple[str, int], ...] = tuple(SEED_WAVELETS.items())   # (projection name, wavelet pairs)
    gated: bool = True
    init: str = "zero"              # "zero" for pretrained models, "seed" for from-scratch
    pooling: str = "causal"         # "sequence": the seed's whole-sequence pooling (leaks future tokens)
    predictor_hidden: int = 512
    predictor_layers: int = 2
    num_tasks: int = 0              # > 0: one learned θ per task, for the task-id-given mode

    def __post_init__(self):
        if self.pooling not in POOLING:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {POOLING}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: expected one of {INITS} ('zero' for pretrained models, 'seed' from scratch)")
        if not isinstance(self.gated, bool):
            raise ValueError(f"gated={self.gated!r}: expected true or false")
        for name in ("num_coordinates", "modulation_rank", "predictor_hidden", "predictor_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an integer ≥ 1")
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int) or self.num_tasks < 0:
            raise ValueError(f"num_tasks={self.num_tasks!r}: expected an integer ≥ 0 (0: no task-id mode)")
        bad = [w for w in self.wavelets if not (isinstance(w, (tuple, list)) and len(w) == 2 and isinstance(w[0], str)
                                                 and isinstance(w[1], int) and w[1] >= 1)]
        if bad or not self.wavelets:
            raise ValueError(f"wavelets={self.wavelets!r}: expected (projection name, wavelet pairs ≥ 1) pairs, "
                             f"as {tuple(SEED_WAVELETS.items())}")

    @classmethod
    def from_dict(cls, d: dict) -> "CoordinateConfig":
        check_known(d, [f.name for f in fields(cls)], "coordinate option(s)")
        d = dict(d)
        if "wavelets" in d and isinstance(d["wavelets"], dict):
            d["wavelets"] = tuple(d["wavelets"].items())
        return cls(**d)


def _decoder(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix)


class CoordinateHost(nn.Module):
    def __init__(self, model, cfg: CoordinateConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        targets = dict(cfg.wavelets)
        self.layers = nn.ModuleDict()
        for name, module in list(model.named_modules()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in targets and isinstance(module, nn.Linear):
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                mod = CoordinateModulatedLinear(module, cfg.num_coordinates, targets[leaf], cfg.modulation_rank,
                                                gated=cfg.gated, init=cfg.init, pooling=cfg.pooling)
                setattr(parent, leaf, mod)
                self.layers[name.replace(".", "__")] = mod
        if not self.layers:
            raise ValueError(f"no nn.Linear named {sorted(targets)} in {type(model).__name__}: nothing to modulate")
        d = model.get_input_embeddings().embedding_dim
        self.predictor = CoordinatePredictor(d, cfg.num_coordinates, cfg.predictor_hidden, cfg.predictor_layers, cfg.pooling)
        self.task_theta = nn.Parameter(torch.randn(cfg.num_tasks, cfg.num_coordinates)) if cfg.num_tasks else None
        self.theta_mode, self.fixed_theta, self.last_theta = "predict", None, None
        self._hook = _decoder(model).register_forward_pre_hook(self._set_theta, with_kwargs=True)
        self.prefixes = [m for m in self.modules() if isinstance(m, PrefixMean)]

    # θ for the next forwards -------------------------------------------------------------
    def task_coordinates(self, task_ids: torch.Tensor | int) -> torch.Tensor:
        """The learned θ of each task id, on the seed's sphere of radius √num_coordinates."""
        if self.task_theta is None:
            raise ValueError("this host has no per-task θ: build it with CoordinateConfig(num_tasks=…)")
        ids = torch.as_tensor(task_ids).reshape(-1)
        if ids.min() < 0 or ids.max() >= len(self.task_theta):
            raise ValueError(f"task id out of range: {ids.tolist()}; this host has {len(self.task_theta)} tasks")
        return F.normalize(self.task_theta[ids], dim=-1) * math.sqrt(self.cfg.num_coordinates)

    @contextlib.contextmanager
    def coordinates(self, theta: torch.Tensor | None = None, task: int | None = None):
        """Within the block every forward uses θ (an explicit (C,)/(B, C) vector, or task `task`'s θ);
        outside it the predictor chooses θ from the input."""
        if theta is not None and theta.shape[-1] != self.cfg.num_coordinates:
            raise ValueError(f"θ has {theta.shape[-1]} coordinates; this model uses {self.cfg.num_coordinates}")
        prev = self.theta_mode, self.fixed_theta
        self.theta_mode, self.fixed_theta = ("task", task) if task is not None else ("fixed", theta)
        try:
            yield self
        finally:
            self.theta_mode, self.fixed_theta = prev

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.model.get_input_embeddings()(input_ids)
        if attention_mask is not None:
            emb = emb * attention_mask[..., None].to(emb.dtype)
        return self.predictor(emb)

    def _set_theta(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values")
        if past is None or (hasattr(past, "get_seq_length") and past.get_seq_length() == 0):
            for p in self.prefixes:
                p.reset(streaming=True)        # a fresh sequence; later calls with a cache continue it
        if self.theta_mode == "task":
            theta = self.task_coordinates(self.fixed_theta)
        elif self.theta_mode == "fixed":
            theta = self.fixed_theta.reshape(-1, self.cfg.num_coordinates)
        else:
            if ids is None:
                raise ValueError("the predictor needs input_ids (inputs_embeds alone are not supported)")
            theta = self.predict(ids)
        self.last_theta = theta
        for layer in self.layers.values():
            layer.theta = theta

    # bookkeeping ---------------------------------------------------------------------------
    def modulation_parameters(self) -> list[nn.Parameter]:
        """The modulated layers' own parameters (wavelet factors, directions, gates), not their base weights."""
        return [p for m in self.layers.values() for n, p in m.named_parameters() if not n.startswith("base.")]

    def coordinate_parameters(self) -> list[nn.Parameter]:
        """Everything this module added: the modulation, the predictor and the per-task θ."""
        return (self.modulation_parameters() + list(self.predictor.parameters())
                + ([self.task_theta] if self.task_theta is not None else []))

    def parameter_breakdown(self) -> dict[str, int]:
        """The seed's table: embeddings, blocks (base weights), modulation, predictor, output."""
        emb = self.model.get_input_embeddings().weight.numel()
        out_layer = self.model.get_output_embeddings()
        tied = out_layer is not None and out_layer.weight is self.model.get_input_embeddings().weight
        out = 0 if tied or out_layer is None else out_layer.weight.numel()
        modulation = sum(m.modulation_params() for m in self.layers.values())
        predictor = sum(p.numel() for p in self.predictor.parameters())
        task = self.task_theta.numel() if self.task_theta is not None else 0
        total = sum(p.numel() for p in self.parameters())
        return dict(embeddings=emb, blocks=total - emb - out - modulation - predictor - task, modulation=modulation,
                    predictor=predictor, task_coordinates=task, output=out, total=total)

    def detach(self):
        """Put the original projections back and remove the hook; returns the bare model."""
        self._hook.remove()
        for name, mod in self.layers.items():
            path = name.replace("__", ".")
            parent, leaf = path.rsplit(".", 1)
            setattr(self.model.get_submodule(parent), leaf, mod.base)
        return self.model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)


def modulate(model, cfg: CoordinateConfig | None = None, **overrides) -> CoordinateHost:
    """Attach coordinate modulation to a pretrained causal LM (SmolLM2, the tiny model, any local HF
    folder loaded with transformers); `init="zero"` by default, so its outputs are unchanged."""
    cfg = cfg or CoordinateConfig(**overrides)
    return CoordinateHost(model, cfg)


SEED_CONFIG = dict(base_architecture=dict(num_layers=10, hidden_dim=448, num_attention_heads=16, num_kv_heads=4, head_dim=112,
                                          vocab_size=32000, max_seq_len=4096, intermediate_dim=1792, rope_theta=500000.0,
                                          norm_eps=1e-5),
                   coordinate_system=dict(num_coordinates=1024, spectral_dim=128, num_wavelet_pairs=64, modulation_rank=12,
                                          target_matrices=["Q", "K", "V", "FFN_gate"]),
                   coordinate_predictor=dict(hidden_dim=512, num_layers=2, use_residual=True))
TARGETS = {"Q": "q_proj", "K": "k_proj", "V": "v_proj", "FFN_gate": "gate_proj"}


def GeometricLlama(config: dict, pooling: str = "causal", modulated: bool = True, **coord_overrides) -> CoordinateHost | nn.Module:
    """The seed's model from its config dict (the YAML's `model:` section): a LlamaForCausalLM with
    the seed's shapes, its Q/K/V/FFN-gate projections modulated with the code's wavelet counts and
    init. `modulated=False` gives the plain Llama of the same base size. As in the seed's code, the
    attention uses the config's head_dim (112), so Q is 448 → 16·112 = 1792 wide, not 448."""
    from transformers import LlamaConfig, LlamaForCausalLM
    check_known(config, SEED_CONFIG, "section(s)")
    for section, values in config.items():
        if not isinstance(values, dict):
            raise ValueError(f"section {section}: expected a mapping of keys, got {values!r}")
        check_known(values, SEED_CONFIG[section], f"key(s) in {section}:")
        for k, v in values.items():
            want = type(SEED_CONFIG[section][k])
            if want in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and v != int(v))
                                         or v <= 0):
                raise ValueError(f"{section}.{k}={v!r}: expected a positive {'integer' if want is int else 'number'}")
    b = {**SEED_CONFIG["base_architecture"], **config.get("base_architecture", {})}
    c = {**SEED_CONFIG["coordinate_system"], **config.get("coordinate_system", {})}
    p = {**SEED_CONFIG["coordinate_predictor"], **config.get("coordinate_predictor", {})}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=b["vocab_size"], hidden_size=b["hidden_dim"], intermediate_size=b["intermediate_dim"],
                                      num_hidden_layers=b["num_layers"], num_attention_heads=b["num_attention_heads"],
                                      num_key_value_heads=b["num_kv_heads"], head_dim=b["head_dim"], max_position_embeddings=b["max_seq_len"],
                                      rope_theta=b["rope_theta"], rms_norm_eps=b["norm_eps"], tie_word_embeddings=False,
                                      initializer_range=0.02))
    if not modulated:
        return lm
    check_known(c["target_matrices"], TARGETS, "target matrices (the seed modulates these)")
    wavelets = tuple((TARGETS[t], SEED_WAVELETS[TARGETS[t]]) for t in c["target_matrices"])
    coord_overrides.setdefault("init", "seed")
    cfg = CoordinateConfig(num_coordinates=c["num_coordinates"], modulation_rank=c["modulation_rank"], wavelets=wavelets,
                           pooling=pooling, predictor_hidden=p["hidden_dim"], predictor_layers=p["num_layers"],
                           **coord_overrides)
    return CoordinateHost(lm, cfg)

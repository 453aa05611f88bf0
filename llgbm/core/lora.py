"""Everything LoRA, in one place at the bottom of the package (as peft keeps tuners/lora): the
targets, peft's state-dict key format, loading, checking, flattening and averaging adapters,
canonical adapter hashes, writing an adapter folder, and applying one to a model for a while.

It imports only torch, peft, safetensors, utils and checkpoint, so every other module can import it."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from llgbm.core.checkpoint import check_finite
from llgbm.core.utils import atomic_dir, canonical_json

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_PATH = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
               "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
PEFT_PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
# adapter_config.json fields that say where or by what the adapter was written, not what it computes
_VOLATILE_CONFIG = ("base_model_name_or_path", "revision", "peft_version", "auto_mapping")


# ------------------------------------------------------------------ peft key format

def peft_key(layer: int, target: str, factor: str) -> str:
    """'base_model.model.model.layers.{layer}.{self_attn|mlp}.{target}.lora_{A|B}.weight'."""
    if target not in MODULE_PATH:
        raise ValueError(f"unknown LoRA target {target!r}; known: {', '.join(MODULE_PATH)}")
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    return f"{PEFT_PREFIX}model.layers.{layer}.{MODULE_PATH[target]}.{target}.lora_{factor}.weight"


def module_name(key: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> 'model.layers.0.self_attn.q_proj'."""
    for suffix in (".lora_A.weight", ".lora_B.weight"):
        if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
            return key[len(PEFT_PREFIX):-len(suffix)]
    raise KeyError(f"{key!r} is not a peft LoRA key ('{PEFT_PREFIX}<module>.lora_A|lora_B.weight')")


def pair_weights(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft state dict -> {module name: (A, B)}; A is (..., r, in), B is (..., out, r)."""
    pairs = {}
    for name in sorted({module_name(k) for k in state}):
        a, b = (state.get(f"{PEFT_PREFIX}{name}.lora_{x}.weight") for x in "AB")
        if a is None or b is None:
            raise KeyError(f"module {name} has only one of lora_A / lora_B in the state dict")
        pairs[name] = (a, b)
    return pairs


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A list of per-adapter state dicts -> one dict with a leading adapter dimension."""
    if not states:
        raise ValueError("no adapters to stack")
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


# ------------------------------------------------------------------ adapters on disk

def load_adapter_weights(folder: Path | str) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a peft adapter folder, refused if any is NaN/Inf."""
    path = Path(folder) / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a peft adapter folder: it has no {ADAPTER_FILE}")
    tensors = load_file(str(path))
    check_finite(tensors, f"adapter {folder}")
    return tensors


def save_adapter(state: dict[str, torch.Tensor], lora_config: LoraConfig, out_dir: Path | str) -> Path:
    """Write a standard peft adapter folder (PeftModel.from_pretrained loads it), atomically."""
    check_finite(state, f"adapter for {out_dir}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / ADAPTER_FILE))
    return out_dir


def adapter_hash(folder: Path | str) -> str:
    """Canonical content hash of an adapter folder: its tensors (name, dtype, shape, bytes, in name
    order) and its config (sorted keys, set-like lists sorted, location fields dropped). Identical
    adapters get identical hashes in any process and under any LLGBM_HOME."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name, t in sorted(load_file(str(folder / ADAPTER_FILE)).items()):
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    config = json.loads((folder / "adapter_config.json").read_text())
    h.update(canonical_json({k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}))
    return h.hexdigest()


def flat_weights(root: Path, manifest: list[dict]) -> np.ndarray:
    """Each checkpoint's LoRA tensors flattened into one row (the weight-space baseline)."""
    return np.stack([torch.cat([v.flatten() for _, v in sorted(load_adapter_weights(root / r["path"]).items())]).numpy()
                     for r in manifest])


def average_adapters(folders) -> dict[str, torch.Tensor]:
    """DnD's "training LoRAs" baseline: the element-wise mean of the adapters' A and B tensors."""
    states = [load_adapter_weights(f) for f in folders]
    if not states:
        raise ValueError("no adapters to average")
    keys = set(states[0])
    for f, s in zip(folders, states):
        if set(s) != keys:
            raise ValueError(f"adapter {f} has other LoRA tensors than the first one; average adapters of one layout")
    return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}


# ------------------------------------------------------------------ applying an adapter

@contextlib.contextmanager
def lora_applied(model, adapter: Path | str | dict, lora_config: LoraConfig | None = None):
    """The base model with LoRA weights applied (a peft adapter folder, or a peft state dict plus its
    LoraConfig); the base model is left clean afterwards."""
    if isinstance(adapter, dict):
        if lora_config is None:
            raise ValueError("a LoRA state dict needs its LoraConfig (rank, alpha, targets)")
        weights = adapter
    else:
        lora_config = LoraConfig.from_pretrained(str(adapter))
        weights = load_adapter_weights(adapter)   # refuses NaN/Inf
    peft_model = get_peft_model(model, lora_config)
    try:
        set_peft_model_state_dict(peft_model, weights)
        peft_model.eval()
        yield peft_model
    finally:
        peft_model.unload()
        del peft_model, weights
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

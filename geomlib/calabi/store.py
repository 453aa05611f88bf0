"""A compressed model as a folder that loads back without the dense model: `config.json` (the base
architecture, as Hugging Face writes it), `calabi.json` (every factorised layer: its shape, rank,
method, whether it has a bias; and what made it), `model.safetensors` (all weights, tied ones once, their aliases in calabi.json) and
the tokenizer when given.

    save_compressed(model, "out/smollm2-svdllm-20", tokenizer, meta=dict(method="svdllm+alloc", ratio=0.2))
    model = load_compressed("out/smollm2-svdllm-20")       # same logits as the model saved (a test checks)

Loading never holds the dense weights: the architecture is built with its parameters on the meta device
(accelerate's `init_empty_weights`, buffers such as the rotary frequencies kept real), the factorised layers
are put in as empty `OptimizedCalabiYauLinear` of the saved shapes, and the saved tensors are assigned in,
so the loaded model's peak memory is the compressed model's own."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .svd import METHODS, OptimizedCalabiYauLinear

FORMAT = "geomlib.calabi/1"
WEIGHTS = "model.safetensors"


def save_compressed(model: nn.Module, folder, tokenizer=None, meta: dict | None = None) -> Path:
    """Write `model` (a Hugging Face model whose linears `geomlib.calabi` may have factorised) to `folder`."""
    from safetensors.torch import save_file  # lazy: only saving needs it
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = {name: dict(in_features=m.in_features, out_features=m.out_features, rank=m.rank, method=m.method,
                         bias=m.bias is not None, compression_ratio=m.compression_ratio)
              for name, m in model.named_modules() if isinstance(m, OptimizedCalabiYauLinear)}
    state, tied, first = {}, {}, {}
    for name, t in model.state_dict().items():               # tied tensors (embeddings and lm_head) once
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in first:
            tied[name] = first[key]
        else:
            first[key], state[name] = name, t.contiguous()
    model.config.save_pretrained(folder)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / "calabi.json").write_text(json.dumps(dict(format=FORMAT, layers=layers, tied=tied, meta=meta or {}), indent=1))
    return folder


def read_manifest(folder) -> dict:
    """calabi.json of a saved folder, checked: a clear error names what is missing or wrong."""
    folder = Path(folder)
    path = folder / "calabi.json"
    if not path.is_file() or not (folder / WEIGHTS).is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a compressed-model folder: it needs calabi.json, config.json and {WEIGHTS} "
                                f"(written by geomlib.calabi.store.save_compressed or `python -m geomlib.calabi compress --out`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}; this version reads {FORMAT!r}")
    return manifest


def empty_layer(in_features: int, out_features: int, rank: int, bias: bool = True, method: str = "svdllm",
                compression_ratio: float = 0.0) -> OptimizedCalabiYauLinear:
    """An `OptimizedCalabiYauLinear` of this shape with uninitialised factors, to load a saved state dict
    into: no SVD is run and no dense weight is ever allocated."""
    if method not in METHODS or not 1 <= rank <= min(in_features, out_features):
        raise ValueError(f"a saved Calabi layer needs a method of {METHODS} and 1 ≤ rank ≤ min(in, out) = "
                         f"{min(in_features, out_features)}; got method {method!r}, rank {rank}")
    layer = OptimizedCalabiYauLinear.__new__(OptimizedCalabiYauLinear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features, layer.method, layer.rank = in_features, out_features, method, rank
    layer.compression_ratio, layer.singular_values = compression_ratio, torch.empty(0)
    layer.U = nn.Parameter(torch.empty(out_features, rank))
    layer.S = nn.Parameter(torch.empty(rank))
    layer.V = nn.Parameter(torch.empty(in_features, rank))
    layer.bias = nn.Parameter(torch.empty(out_features)) if bias else None
    return layer


def load_compressed(folder) -> nn.Module:
    """The model saved in `folder`, in eval mode, float32 on the CPU."""
    from accelerate import init_empty_weights  # lazy: only loading needs them
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = Path(folder)
    manifest = read_manifest(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name, spec in manifest["layers"].items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not isinstance(getattr(parent, child, None), nn.Linear):
            raise ValueError(f"{folder}/calabi.json names layer {name!r}, which this architecture has not as a linear layer")
        setattr(parent, child, empty_layer(spec["in_features"], spec["out_features"], spec["rank"],
                                                              spec["bias"], spec["method"], spec["compression_ratio"]))
    state = load_file(str(folder / WEIGHTS))
    state.update({name: state[source] for name, source in manifest.get("tied", {}).items()})   # the same tensor: tied again
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{folder}/{WEIGHTS} holds tensors this model has no place for: {unexpected[:5]}")
    model.tie_weights()
    still_empty = [n for n, p in model.named_parameters() if p.is_meta]
    if still_empty:
        raise ValueError(f"{folder}/{WEIGHTS} lacks tensors the model needs: {still_empty[:5]} (missing: {missing[:5]})")
    return model.eval()

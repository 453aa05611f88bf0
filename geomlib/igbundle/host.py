"""Attaching IGBundle adapters to any Hugging Face causal LM, and their checkpoints.

Why not peft: peft's custom-module dispatch maps a targeted module to a LoraLayer subclass, which must
carry LoRA's contract (a low-rank delta of one weight, merge/unmerge). An IGBundle adapter is neither:
it runs on a whole decoder block's output. So a small injector hosts it: a forward hook after each
decoder block, the adapters held as `model.igbundle` (an nn.ModuleList, so `.to()` and
`.parameters()` see them), and the seed config's optional LoRA on q/k/v/o through peft itself.

A checkpoint is a folder: `igbundle.safetensors` (adapter and sheaf-loss tensors), `igbundle.json`
(the config, the base model's fingerprint and each tensor's shape) and, with LoRA, peft's own
`adapter_model.safetensors` + `adapter_config.json`. Loading refuses a checkpoint made for another base
model or with another config, and `verify` names any missing, truncated or non-finite tensor."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llgbm.core.lora import ADAPTER_FILE, check_finite
from llgbm.core.utils import atomic_dir

from .adapter import HoulsbyAdapter, IGBundleAdapter, IGBundleConfig, sheaf_loss

WEIGHTS, META = "igbundle.safetensors", "igbundle.json"
KINDS = ("igbundle", "houlsby")


def decoder_layers(model) -> nn.ModuleList:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, inner.base_model_prefix)
    if not hasattr(body, "layers"):
        raise ValueError(f"{type(inner).__name__} has no decoder layers at .{inner.base_model_prefix}.layers")
    return body.layers


class BundleHost(nn.Module):
    """What `attach` adds to a model: one adapter per decoder layer, the sheaf loss module, the last
    forward's mixture states (for the sheaf loss) and per-layer sigma (for logging)."""

    def __init__(self, cfg: IGBundleConfig, n_layers: int, kind: str = "igbundle"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown adapter kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.cfg, self.kind = cfg, kind
        self.adapters = nn.ModuleList(IGBundleAdapter(cfg) if kind == "igbundle" else HoulsbyAdapter(cfg.hidden_size, cfg.d_bot)
                                      for _ in range(n_layers))
        self.sheaf = sheaf_loss(cfg) if kind == "igbundle" else None
        self.states, self.sigma = {}, {}
        self.handles = []

    def hook(self, i: int):
        def after_block(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new, state = self.adapters[i](hidden)
            if state is not None:
                self.states[i] = state
                self.sigma[i] = float(state.sigma.detach())
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return after_block

    def sheaf_value(self) -> torch.Tensor:
        """The sheaf loss summed over the layers of the latest forward (0 when the loss is off)."""
        if self.sheaf is None or not self.states:
            return torch.zeros(())
        return sum(self.sheaf(s) for s in self.states.values())

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())


def attach(model, cfg: IGBundleConfig, kind: str = "igbundle") -> BundleHost:
    """Add adapters after every decoder block of `model` (and the config's LoRA on q/k/v/o if
    `cfg.lora_r`); the base weights are frozen. Returns the host, also reachable as `model.igbundle`."""
    if hasattr(model, "igbundle"):
        raise ValueError("this model already carries IGBundle adapters: detach() them first")
    cfg.hidden_size = cfg.hidden_size or model.config.hidden_size
    if cfg.hidden_size != model.config.hidden_size:
        raise ValueError(f"config hidden_size {cfg.hidden_size} does not match the model's {model.config.hidden_size}")
    model.requires_grad_(False)
    layers = decoder_layers(model)
    param = next(model.parameters())
    host = BundleHost(cfg, len(layers), kind).to(device=param.device, dtype=torch.float32)
    host.handles = [layer.register_forward_hook(host.hook(i)) for i, layer in enumerate(layers)]
    model.igbundle = host            # a submodule: model.train() / model.eval() reach the adapters' dropout
    host.train(model.training)
    if cfg.lora_r:
        from peft import LoraConfig, inject_adapter_in_model
        inject_adapter_in_model(LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                                           lora_dropout=0.0), model)
    return host


def detach(model) -> None:
    """Remove the adapters (and any LoRA layers) and their hooks: the base model is left clean."""
    host = getattr(model, "igbundle", None)
    if host is None:
        return
    for h in host.handles:
        h.remove()
    del model.igbundle
    remove_lora(model)


def remove_lora(model) -> None:
    """Take out LoRA layers injected into `model` (peft's inject_adapter_in_model), restoring the base
    linears; a model without any is left as it is."""
    from peft.tuners.lora import LoraLayer
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                setattr(module, child_name, child.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def _lora_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict
    return get_peft_model_state_dict(model)


def save(model, out_dir: Path | str, base_fingerprint: str, extra: dict | None = None) -> Path:
    """Write the model's adapters as a checkpoint folder (atomically)."""
    host = model.igbundle
    tensors = {k: v.detach().contiguous().cpu() for k, v in host.state_dict().items()}
    check_finite(tensors, f"IGBundle checkpoint for {out_dir}")
    meta = dict(kind=host.kind, config=host.cfg.to_dict(), base_fingerprint=base_fingerprint,
                shapes={k: list(v.shape) for k, v in tensors.items()}, **(extra or {}))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        if host.cfg.lora_r:
            lora = {k: v.detach().contiguous().cpu() for k, v in _lora_state(model).items()}
            save_file(lora, str(tmp / ADAPTER_FILE))
            meta["lora_shapes"] = {k: list(v.shape) for k, v in lora.items()}
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out_dir


def verify(ckpt: Path | str) -> dict:
    """Check a checkpoint without a model: files present, JSON readable, every tensor listed, of the
    listed shape and finite. Raises ValueError naming the first problem; returns the metadata."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise ValueError(f"{ckpt} does not exist")
    if not (ckpt / META).exists() or not (ckpt / WEIGHTS).exists():
        raise ValueError(f"{ckpt} is not an IGBundle checkpoint: it needs {META} and {WEIGHTS}")
    try:
        meta = json.loads((ckpt / META).read_text())
    except ValueError as e:
        raise ValueError(f"{ckpt / META} is not valid JSON ({e}); the checkpoint is corrupted") from None
    IGBundleConfig.from_dict(meta["config"])
    files = [(WEIGHTS, meta["shapes"])] + ([(ADAPTER_FILE, meta["lora_shapes"])] if "lora_shapes" in meta else [])
    for name, shapes in files:
        try:
            tensors = load_file(str(ckpt / name))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{ckpt / name} cannot be read ({e}); the file is truncated or corrupted") from None
        missing = sorted(set(shapes) - set(tensors))
        if missing:
            raise ValueError(f"{ckpt / name} lacks {len(missing)} tensor(s) its config lists, e.g. {missing[0]}")
        wrong = [k for k, s in shapes.items() if list(tensors[k].shape) != s]
        if wrong:
            raise ValueError(f"{ckpt / name}: tensor {wrong[0]} has shape {list(tensors[wrong[0]].shape)}, "
                             f"the config says {shapes[wrong[0]]}")
        check_finite(tensors, f"checkpoint {ckpt / name}")
    return meta


def load(model, ckpt: Path | str, base_fingerprint: str, cfg: IGBundleConfig | None = None) -> BundleHost:
    """Attach the checkpoint's adapters to `model`. Refuses, naming the mismatch, a checkpoint made for
    another base model (fingerprint) or, when `cfg` is given, with another config."""
    meta = verify(ckpt)
    if meta["base_fingerprint"] != base_fingerprint:
        raise ValueError(f"{ckpt} was trained on another base model (fingerprint {meta['base_fingerprint'][:12]}…, "
                         f"this model is {base_fingerprint[:12]}…); load it onto the model it was made for")
    saved = IGBundleConfig.from_dict(meta["config"])
    if cfg is not None:
        cfg.hidden_size = cfg.hidden_size or saved.hidden_size
        if cfg != saved:
            diff = {k: (getattr(saved, k), getattr(cfg, k)) for k in saved.__dataclass_fields__ if getattr(saved, k) != getattr(cfg, k)}
            raise ValueError(f"{ckpt} was saved with another IGBundle config; differences (saved, asked): {diff}")
    host = attach(model, saved, meta["kind"])
    host.load_state_dict(load_file(str(Path(ckpt) / WEIGHTS)))
    if saved.lora_r:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(str(Path(ckpt) / ADAPTER_FILE)))
    return host

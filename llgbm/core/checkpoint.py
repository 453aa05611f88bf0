"""The one resumable checkpoint: a model's (or a dict's) weights and the optimizer's Adam state in one
safetensors file, the run's JSON state in its metadata, written atomically; `load` restores all three
exactly, so a resumed run equals an uninterrupted one. Teachers, generators, IGBundle, INL and the
coordinate models all save through it.

Files written before this helper keep loading: a state stored as one metadata entry per key (teachers,
generators), or beside the file as JSON (IGBundle's trainer_state.json, INL's and the coordinate
models' state.json folders, see `load_legacy_folder`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file

from llgbm.core.utils import atomic_file

ALIASES = "__aliases__"      # state key: tensors that share storage with another (tied weights), saved once


def check_finite(tensors: dict[str, torch.Tensor], what: str,
                 fix: str = "lower the learning rate or retrain it") -> None:
    """The one NaN/Inf check of loaded weights: a ValueError naming `what`, the first bad tensor and `fix`.
    One check per device and dtype over all the tensors at once (an adapter has hundreds of small ones);
    the tensor-by-tensor look only when that finds something, to name it."""
    groups: dict[tuple, list] = {}
    for v in tensors.values():
        if v.is_floating_point():
            groups.setdefault((v.device, v.dtype), []).append(v.reshape(-1))
    if all(bool(torch.isfinite(torch.cat(g)).all()) for g in groups.values()):
        return
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what} has NaN/Inf weights in {len(bad)} tensor(s), e.g. {bad[0]}; refusing it ({fix})")


def adam_state_tensors(opt, params) -> dict[str, torch.Tensor]:
    """An Adam/AdamW optimizer's per-parameter state as plain tensors ('adam/<i>/exp_avg', ...), `params`
    in a fixed order: safetensors can hold it, and no pickle is needed to resume."""
    out = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            out.update({f"adam/{i}/exp_avg": st["exp_avg"], f"adam/{i}/exp_avg_sq": st["exp_avg_sq"],
                        f"adam/{i}/step": st["step"].reshape(1).float()})
    return out


def load_adam_state(opt, params, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `adam_state_tensors`, for the same parameters in the same order."""
    for i, p in enumerate(params):
        if f"adam/{i}/exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"adam/{i}/exp_avg"], "exp_avg_sq": tensors[f"adam/{i}/exp_avg_sq"],
                            "step": tensors[f"adam/{i}/step"][0]}


def _dedupe(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied tensors (one storage under two names, as tied embeddings) kept once: safetensors refuses
    shared storage. Returns the weights to write and {dropped name: kept name}."""
    seen, out, aliases = {}, {}, {}
    for k, v in weights.items():
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            out[k] = v
    return out, aliases


def save(path: Path | str, state: dict, *, model: nn.Module | None = None, weights: dict | None = None,
         opt: torch.optim.Optimizer | None = None, params=None) -> Path:
    """Write `model`'s state_dict (or `weights`), `opt`'s Adam state for `params` (in that order; default:
    the optimizer's own order) and `state` (JSON) to `path` in one atomic step."""
    tensors, aliases = _dedupe(model.state_dict() if model is not None else dict(weights or {}))
    if opt is not None:
        tensors |= adam_state_tensors(opt, params if params is not None else _opt_params(opt))
    meta = {"state": json.dumps({**state, ALIASES: aliases} if aliases else state)}
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return Path(path)


def _opt_params(opt) -> list:
    return [p for g in opt.param_groups for p in g["params"]]


def _legacy_value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def load(path: Path | str, *, model: nn.Module | None = None, opt: torch.optim.Optimizer | None = None,
         params=None) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of the checkpoint at `path`; with `model` the weights are loaded into it (tied
    ones restored), with `opt` its Adam state. A missing, unreadable (truncated) or non-finite file is
    an error naming it, raised before anything is loaded into `model` or `opt`."""
    path = Path(path)
    state = _read_meta_state(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({e}); delete it and the run starts over") from None
    aliases = state.pop(ALIASES, {})
    weights = {k: v for k, v in tensors.items() if not k.startswith("adam/")}
    weights |= {k: weights[v] for k, v in aliases.items()}
    check_finite(weights, f"checkpoint {path}", "delete it and the run starts over")
    if model is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:          # missing, unexpected or misshapen tensors: another model's file
            detail = " ".join(str(e).split())
            raise ValueError(f"{path} does not fit this model, it was saved from another config: "
                             f"{detail[:300]}{'…' if len(detail) > 300 else ''}") from None
    if opt is not None:
        load_adam_state(opt, params if params is not None else _opt_params(opt), tensors)
    return weights, state


def _read_meta_state(path: Path) -> dict:
    """The JSON state in a checkpoint's metadata (aliases included), or the named error for a missing or
    unreadable file; files written before `save` hold one metadata entry per key."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({e}); delete it and the run starts over") from None
    return json.loads(meta["state"]) if "state" in meta else {k: _legacy_value(v) for k, v in meta.items()}


def read_state(path: Path | str) -> dict:
    """The JSON state of a checkpoint without reading its tensors."""
    state = _read_meta_state(Path(path))
    state.pop(ALIASES, None)
    return state


def load_legacy_folder(folder: Path | str, *, model: nn.Module | None = None, opt=None, params=None) -> tuple[dict, dict]:
    """A checkpoint folder of the layout INL and the coordinate models wrote before `save` (model.safetensors,
    optimizer.safetensors, state.json), read as `load` reads a file."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no checkpoint at {folder}: it lacks {Path(e.filename).name}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{folder} is not a readable checkpoint ({e}); delete it and the run starts over") from None
    check_finite(weights, f"checkpoint {folder / 'model.safetensors'}", "delete the folder and the run starts over")
    if model is not None:
        load_model(model, str(folder / "model.safetensors"))      # safetensors re-ties what save_model dropped
    if opt is not None:
        load_adam_state(opt, params if params is not None else _opt_params(opt), load_file(str(folder / "optimizer.safetensors")))
    return weights, state

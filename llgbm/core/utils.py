"""Small shared helpers: cache paths, seeding, device choice, atomic writes, content hashes and the
warmup schedule.

Everything that lands on disk goes through `atomic_write_*` or `atomic_dir`, so an interrupted
run never leaves a half-written file or folder that a later run would trust."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROFILES = ("smoke", "quick", "full")
REPO_ROOT = Path(__file__).resolve().parents[2]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    return profile


def llgbm_home() -> Path:
    """Root of every machine-local artifact (model cache, zoo). Override with LLGBM_HOME."""
    return Path(os.environ.get("LLGBM_HOME", Path.home() / ".cache" / "llgbm")).expanduser()


# torch is imported where it is used: the commands read this module (profiles, paths) while parsing
# their arguments, before anything heavy loads.

def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    import torch
    # bf16 matmuls are ~500x slower than fp32 on this CPU; on CUDA bf16 is the fast path.
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_file(path: Path | str):
    """Yield a temporary file path beside `path` (same suffix, for writers that look at it, such as
    savefig); on success it is renamed to `path` in one step, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path | str, keep_existing: bool = False):
    """Yield a temporary folder beside `path`; on success it is renamed to `path` in one step.

    `keep_existing`: if another process published `path` meanwhile, keep theirs and drop ours
    (for content that any process builds identically, such as a converted model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            if keep_existing:
                return
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def hash_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    """JSON with sorted keys, and lists of strings sorted (they stand for sets: peft writes
    `target_modules`, a set, in an order that changes from process to process)."""
    def norm(o):
        if isinstance(o, dict):
            return {str(k): norm(v) for k, v in o.items()}
        if isinstance(o, (list, tuple, set, frozenset)):
            items = [norm(v) for v in o]
            return sorted(items) if items and all(isinstance(v, str) for v in items) else items
        return o
    return json.dumps(norm(obj), sort_keys=True, separators=(",", ":")).encode()


def config_hash(obj, n: int = 16) -> str:
    """Short content key of a config-like object (dicts, dataclass fields, tuples)."""
    return hash_bytes(json.dumps(obj, sort_keys=True, default=list).encode())[:n]


def warmup_lr(peak: float, step: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then constant (so a continued run equals a longer one)."""
    return peak * min(1.0, (step + 1) / max(1, warmup))


def check_known(given, known, what: str, error: type[Exception] = ValueError) -> None:
    """The one unknown-key check: an error naming what is unknown and listing what is known (a
    misspelt key is caught, not silently dropped)."""
    known = list(known) if isinstance(known, (list, tuple, dict)) else sorted(known, key=str)   # ordered: as given
    unknown = [g for g in dict.fromkeys(given) if g not in known]
    if unknown:
        raise error(f"unknown {what} {unknown}; known: {', '.join(map(str, known))}")


def check_fields(cls, names) -> None:
    """Unknown field names of the dataclass `cls`, named with the fields it has."""
    check_known(names, [f.name for f in dataclasses.fields(cls)], f"{cls.__name__} field(s)")


def check_values(cls, given: dict, where: str, fields: dict[str, str] | None = None) -> None:
    """Values of a config file's section against the types the dataclass `cls` declares: an int field
    takes an integer, a float field a number, a bool field true/false, a str field a string, and an
    `X | None` field also null (other types are left to the class). The error names the key as `given`
    spells it; `fields` maps such a key to the field it sets where the names differ."""
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}
    declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, v in given.items():
        parts = [p.strip() for p in declared.get((fields or {}).get(key, key), "").split("|")]
        if not parts or any(p not in kinds for p in parts):
            continue
        ok = any(isinstance(v, kinds[p]) and (p in ("bool", "None") or not isinstance(v, bool)) for p in parts)
        if not ok:
            want = " or ".join({"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                                "None": "null"}[p] for p in parts)
            hint = ""
            if "float" in parts and isinstance(v, str):
                try:
                    hint = f" (YAML reads {v} as text: write it with a dot, as {float(v):.1e})"
                except ValueError:
                    pass
            raise ValueError(f"{where} {key}: {v!r} is not {want}{hint}")


def preset_config(cls, base: dict, overrides: dict):
    """The one preset rule of every config: `cls(**base)` (the profile's values) with `overrides`
    field by field; an unknown field raises naming the known ones, and None means "the profile's
    value" (a notebook parameter left at None keeps it)."""
    check_fields(cls, overrides)
    return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def machine() -> str:
    """The CPU a run timed on ("AMD EPYC, 2 CPUs"): runs on other machines are not comparable, and
    their float results can differ in the last bits (other matmul kernels)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs"

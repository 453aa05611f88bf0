"""The one cache for computed results: what a JSON file holds, or `compute()` run once and written
atomically (sorted keys), so an interrupted run never leaves a half file and a rerun measures nothing
twice. numpy arrays round-trip: written as lists (NaN as null), read back with `arrays`."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from llgbm.core.utils import atomic_write_json


def encode(obj):
    """`obj` as plain JSON: numpy arrays to lists (NaN as null, which `arrays` reads back as NaN) and
    numpy scalars to numbers."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [None if isinstance(x, float) and math.isnan(x) else x for x in obj.ravel().tolist()] if obj.ndim == 1 \
            else [encode(row) for row in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def arrays(tree: dict, dtype=None) -> dict:
    """{name: values} or {name: {key: values}} (per-item scores by task, deltas by task) with every
    list as a numpy array of `dtype` (None: numpy's choice); null reads back as NaN."""
    def conv(v):
        if isinstance(v, list) and any(x is None for x in v):
            v = [math.nan if x is None else x for x in v]
        return np.asarray(v, dtype=dtype)
    return {t: ({k: conv(v) for k, v in d.items()} if isinstance(d, dict) else conv(d)) for t, d in tree.items()}


def read(path: Path | str | None):
    """The JSON in `path`, or None when there is none."""
    if path is None or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def write(path: Path | str, obj) -> None:
    atomic_write_json(path, encode(obj))


def cached(path: Path | str, compute: Callable[[], object], refresh: bool = False):
    """What `path` holds, computed by `compute()` and written first when it is missing (or `refresh`).
    The value always comes back as read from disk, so a first run and a rerun see the same numbers."""
    if refresh or not Path(path).exists():
        write(path, compute())
    return read(path)

"""llgbm.core.cache: the one read-or-compute-once cache (and no second writer of one anywhere)."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from llgbm.core import cache

ROOT = Path(__file__).resolve().parents[1]


def test_computes_once_and_returns_what_it_reads(tmp_path):
    calls = []
    path = tmp_path / "sub" / "x.json"

    def compute():
        calls.append(1)
        return {"scores": {"t": {"loglik": np.array([-1.5, np.nan], dtype=np.float32), "correct": np.array([1.0, 0.0])}},
                "seconds": np.float64(2.5), "steps": 3}
    first = cache.cached(path, compute)
    again = cache.cached(path, compute)
    assert calls == [1] and first == again
    assert json.loads(path.read_text())["scores"]["t"]["loglik"] == [-1.5, None]     # strict JSON on disk
    scores = cache.arrays(first["scores"], float)
    assert scores["t"]["loglik"].dtype == np.float64 and math.isnan(scores["t"]["loglik"][1])
    np.testing.assert_array_equal(scores["t"]["correct"], [1.0, 0.0])
    assert first["seconds"] == 2.5 and isinstance(first["steps"], int)
    cache.cached(path, compute, refresh=True)
    assert calls == [1, 1]
    assert not list(tmp_path.rglob("*.tmp"))


def test_reads_files_written_before_it(tmp_path):
    """Caches written by the code before this module (NaN tokens, plain lists) read back unchanged."""
    old = tmp_path / "old.json"
    old.write_text('{"a": {"loglik": [-0.25, NaN], "correct": [1.0, 0.0]}, "b": [0.5, 0.125]}')
    got = cache.arrays(cache.read(old), np.float32)
    assert got["a"]["loglik"].dtype == np.float32 and math.isnan(got["a"]["loglik"][1])
    np.testing.assert_array_equal(got["b"], np.array([0.5, 0.125], dtype=np.float32))
    assert cache.read(tmp_path / "missing.json") is None and cache.read(None) is None
    assert cache.arrays({"t": [1.0, None]})["t"].dtype == np.float64        # null is NaN with numpy's own dtype too


def test_a_failed_compute_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        cache.cached(tmp_path / "x.json", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert list(tmp_path.iterdir()) == []


def test_no_second_cache_reader_or_writer():
    """Nowhere else rebuilds {task: {key: np.asarray(...)}} from JSON or writes `.tolist()` into a JSON file."""
    pattern = re.compile(r"np\.asarray\(v(, dtype=[\w.]+)?\) for k, v in d\.items\(\)|\.tolist\(\) for k, v in")
    offenders = [str(p.relative_to(ROOT)) for pkg in ("llgbm", "geomlib") for p in (ROOT / pkg).rglob("*.py")
                 if p.name != "cache.py" and pattern.search(p.read_text())]
    assert offenders == []

"""Delta activations (seed 002, after Delta Activations, arXiv 2509.04442):
v(M) = mean over probe texts of the last-layer, last-token hidden state; Δ = v(adapted) − v(base).

`DeltaCache` persists one `.npy` per adapter plus manifest.json in deltas/, keyed by content
(base-model fingerprint, probe-set hash, adapter hash). Writes are atomic; every read is checked
against the manifest's checksum; a lock serialises manifest updates across processes."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig
from tqdm.auto import tqdm

from llgbm.core.lora import lora_applied
from llgbm.core.models import backbone_and_head
from llgbm.core.utils import REPO_ROOT, atomic_write_bytes, hash_bytes


def probe_hash(probes: list[str]) -> str:
    return hash_bytes(json.dumps(list(probes)).encode())


@torch.no_grad()
def last_token_states(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Last-layer hidden state at each text's last real token: (len(texts), hidden), fp32.

    Right padding, and the index is each row's own length − 1, so a probe gives the same state
    alone or in a padded batch. The decoder stack runs without the lm_head."""
    body, _ = backbone_and_head(model)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i:i + batch_size], add_special_tokens=False).input_ids
        length = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (length - len(x)) for x in ids], device=device)
        attn = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids], device=device)
        hidden = body(input_ids=input_ids, attention_mask=attn).last_hidden_state
        last = attn.sum(1) - 1
        out.append(hidden[torch.arange(len(ids), device=device), last].float().cpu())
    return torch.cat(out)


def compute_base_activation(model, tokenizer, probes: list[str], batch_size: int = 16) -> np.ndarray:
    """v(base): the mean last-token state over the probes. Compute once per (model, probes)."""
    return last_token_states(model, tokenizer, probes, batch_size).mean(0).numpy()


def compute_adapter_delta(model, tokenizer, adapter: Path | str | dict, probes: list[str],
                          base_activation: np.ndarray | None = None, batch_size: int = 16,
                          lora_config: LoraConfig | None = None) -> np.ndarray:
    """Δ = v(base + adapter) − v(base), a (hidden,) float32 vector; `adapter` as in `lora_applied`."""
    if base_activation is None:
        base_activation = compute_base_activation(model, tokenizer, probes, batch_size)
    with lora_applied(model, adapter, lora_config) as adapted:
        v = compute_base_activation(adapted, tokenizer, probes, batch_size)
    return (v - base_activation).astype(np.float32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class DeltaCache:
    """Content-keyed store of deltas for one (base model, probe set).

    `get_or_compute(adapter_hash, fn)` serves a verified entry or computes, stores and returns it.
    A truncated, corrupted or unlisted file is never served: it is recomputed."""

    def __init__(self, model_fingerprint: str, probes: list[str], root: Path | str | None = None):
        self.root = Path(root or os.environ.get("LLGBM_DELTAS") or REPO_ROOT / "deltas")
        self.root.mkdir(parents=True, exist_ok=True)
        self.model_fingerprint, self.probe_hash = model_fingerprint, probe_hash(probes)
        self.namespace = hash_bytes(model_fingerprint.encode(), self.probe_hash.encode())[:16]
        self.hits = self.misses = 0

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # an unreadable manifest serves nothing; entries are recomputed and re-listed

    def key(self, adapter_hash: str) -> str:
        return f"{self.namespace}-{adapter_hash[:32]}"

    def get(self, adapter_hash: str) -> np.ndarray | None:
        key = self.key(adapter_hash)
        entry = self._manifest().get(key)
        path = self.root / f"{key}.npy"
        if entry is None or not path.exists():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
        return np.load(io.BytesIO(data), allow_pickle=False)

    def put(self, adapter_hash: str, delta: np.ndarray, **meta) -> None:
        key = self.key(adapter_hash)
        data = _npy_bytes(np.asarray(delta, dtype=np.float32))
        atomic_write_bytes(self.root / f"{key}.npy", data)     # the file first, then its listing
        with self._locked():
            manifest = self._manifest()
            manifest[key] = dict(sha256=hashlib.sha256(data).hexdigest(), adapter_hash=adapter_hash,
                                 model_fingerprint=self.model_fingerprint, probe_hash=self.probe_hash,
                                 shape=list(np.shape(delta)), **meta)
            atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())

    def get_or_compute(self, adapter_hash: str, compute, **meta) -> np.ndarray:
        cached = self.get(adapter_hash)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        delta = np.asarray(compute(), dtype=np.float32)
        self.put(adapter_hash, delta, **meta)
        return delta

    def __len__(self) -> int:
        return sum(k.startswith(self.namespace) for k in self._manifest())


def zoo_deltas(model, tokenizer, zoo_root: Path, manifest: list[dict], probes: list[str], model_fingerprint: str,
               cache_root: Path | str | None = None, progress: bool = True) -> tuple[np.ndarray, DeltaCache]:
    """Deltas of every zoo checkpoint in manifest order, served from (and filling) the cache."""
    cache = DeltaCache(model_fingerprint, probes, cache_root)
    base = None
    rows = []
    for row in tqdm(manifest, desc="deltas", disable=not progress):
        def compute(row=row):
            nonlocal base
            if base is None:  # the base activation once per (model, probes), and only if needed
                base = compute_base_activation(model, tokenizer, probes)
            return compute_adapter_delta(model, tokenizer, zoo_root / row["path"], probes, base)
        rows.append(cache.get_or_compute(row["hash"], compute, task=row["task"], step=row["step"], seed=row["seed"]))
    return np.stack(rows), cache


def cache_timing(model, tokenizer, zoo_root: Path, rows: list[dict], probes: list[str], cache: DeltaCache) -> dict:
    """Seconds per adapter to recompute a delta outside the cache against serving it from the cache,
    and the largest difference between the two (the rows must already be cached)."""
    base = compute_base_activation(model, tokenizer, probes)
    t0 = time.perf_counter()
    recomputed = [compute_adapter_delta(model, tokenizer, zoo_root / r["path"], probes, base) for r in rows]
    compute_s = (time.perf_counter() - t0) / len(rows)
    t0 = time.perf_counter()
    served = [cache.get(r["hash"]) for r in rows]
    hit_s = (time.perf_counter() - t0) / len(rows)
    if any(s is None for s in served):
        raise ValueError("cache_timing needs every row cached: run zoo_deltas with this cache first")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(recomputed, served))
    return dict(compute_s=compute_s, hit_s=hit_s, speedup=compute_s / hit_s, max_abs_diff=diff)


def identical_deltas(deltas: np.ndarray, hashes: list[str]) -> dict:
    """Among pairs of adapters with different content, how many share a bit-identical delta (the
    public attempt's failure), and how close the closest pair comes (max |Δ_i − Δ_j|)."""
    pairs = [(i, j) for i, j in itertools.combinations(range(len(hashes)), 2) if hashes[i] != hashes[j]]
    identical = sum(np.array_equal(deltas[i], deltas[j]) for i, j in pairs)
    closest = min((float(np.abs(deltas[i] - deltas[j]).max()) for i, j in pairs), default=float("nan"))
    return dict(pairs=len(pairs), identical=int(identical), closest_max_abs_diff=closest)

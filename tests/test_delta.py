import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
import torch

from llgbm.delta import activations
from llgbm.delta.probes import create_generic_probes
from llgbm.teachers import zoo

PROBES = create_generic_probes()


@pytest.fixture
def tiny_adapter(tiny, lab_home):
    """One trained tiny-model adapter (a zoo checkpoint)."""
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=3, n_checkpoints=1, eval_items=2, lr=5e-2)
    rec = zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "zoo", progress=False)
    return lab_home / "zoo" / rec["checkpoints"][0]["path"], rec["checkpoints"][0]


def test_last_token_state_is_padding_independent(tiny):
    model, tok = tiny
    texts = ["Short.", "A much longer probe text that needs padding in the batch."]
    batched = activations.last_token_states(model, tok, texts, batch_size=2)
    alone = torch.cat([activations.last_token_states(model, tok, [t]) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    # and it really is the last real token, not a pad position: the full model's own hidden state
    ids = tok(texts[0], add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(alone[0], ref, atol=1e-5, rtol=1e-4)


def test_delta_is_nonzero_and_base_is_left_clean(tiny, tiny_adapter):
    model, tok = tiny
    folder, _ = tiny_adapter
    base = activations.compute_base_activation(model, tok, PROBES)
    d = activations.compute_adapter_delta(model, tok, folder, PROBES, base)
    assert d.shape == (model.config.hidden_size,) and np.abs(d).max() > 0
    np.testing.assert_allclose(activations.compute_base_activation(model, tok, PROBES), base, atol=1e-6)
    np.testing.assert_allclose(activations.compute_adapter_delta(model, tok, folder, PROBES), d, atol=1e-5)


def test_cache_serves_hits_and_invalidates_on_model_or_probe_change(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or np.arange(4, dtype=np.float32)  # noqa: E731
    c = activations.DeltaCache("model-A", PROBES, tmp_path)
    c.get_or_compute("h1", compute)
    np.testing.assert_array_equal(c.get_or_compute("h1", compute), np.arange(4))
    assert len(calls) == 1 and (c.hits, c.misses) == (1, 1)
    activations.DeltaCache("model-B", PROBES, tmp_path).get_or_compute("h1", compute)
    assert len(calls) == 2                                  # another model: recomputed
    activations.DeltaCache("model-A", PROBES[:3], tmp_path).get_or_compute("h1", compute)
    assert len(calls) == 3                                  # another probe set: recomputed
    assert activations.DeltaCache("model-A", PROBES, tmp_path).get("h1") is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest"])
def test_corrupted_entry_is_recomputed_not_served(tmp_path, damage):
    c = activations.DeltaCache("m", PROBES, tmp_path)
    c.put("h", np.ones(64, dtype=np.float32))
    path = tmp_path / f"{c.key('h')}.npy"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")     # last float becomes +inf
    else:
        (tmp_path / "manifest.json").write_text("{not json")
    assert c.get("h") is None
    fresh = c.get_or_compute("h", lambda: np.full(64, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(fresh, 2.0)
    np.testing.assert_array_equal(c.get("h"), 2.0)


def _killed_mid_write(root):
    c = activations.DeltaCache("m", PROBES, root)
    real_write = os.write

    def half_then_die(fd, data):                 # the process dies halfway through writing the .npy
        real_write(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    import llgbm.core.utils as u
    u.os.fdopen = lambda fd, mode: type("F", (), {"write": lambda self, d: half_then_die(fd, d),
                                                 "__enter__": lambda self: self, "__exit__": lambda *a: None,
                                                 "flush": lambda self: None, "fileno": lambda self: fd})()
    c.put("h", np.ones(1 << 16, dtype=np.float32))


def test_process_killed_mid_write_leaves_nothing_served(tmp_path):
    p = mp.get_context("fork").Process(target=_killed_mid_write, args=(tmp_path,))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    c = activations.DeltaCache("m", PROBES, tmp_path)
    assert c.get("h") is None and not (tmp_path / f"{c.key('h')}.npy").exists()
    np.testing.assert_array_equal(c.get_or_compute("h", lambda: np.zeros(3, dtype=np.float32)), 0)


def _writer(root, offset):
    c = activations.DeltaCache("m", PROBES, root)
    for i in range(25):
        c.put(f"h{offset + i}", np.full(32, offset + i, dtype=np.float32))


def test_two_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, off)) for off in (0, 20)]  # keys 20..24 overlap
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    c = activations.DeltaCache("m", PROBES, tmp_path)
    assert len(c) == 45
    for i in range(45):
        np.testing.assert_array_equal(c.get(f"h{i}"), i)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_cache_never_unpickles(tmp_path):
    c = activations.DeltaCache("m", PROBES, tmp_path)
    path = tmp_path / f"{c.key('h')}.npy"
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    import hashlib
    import json
    (tmp_path / "manifest.json").write_text(json.dumps({c.key("h"): {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}))
    with pytest.raises(ValueError, match="pickle"):
        c.get("h")


def test_zoo_deltas_compute_the_base_activation_once(tiny, lab_home, monkeypatch):
    """v(base) is computed once per (model, probes) however many adapters miss the cache; a warm cache
    computes nothing at all."""
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "add_3"), steps=2, n_checkpoints=2, eval_items=2, lr=5e-2)
    root = lab_home / "zoo"
    zoo.build_zoo(model, tok, cfg, root, progress=False)
    manifest = zoo.write_manifest(root)
    calls = []
    real = activations.compute_base_activation
    monkeypatch.setattr(activations, "compute_base_activation",
                        lambda m, *a, **k: calls.append("adapted" if hasattr(m, "peft_config") else "base") or real(m, *a, **k))
    D, cache = activations.zoo_deltas(model, tok, root, manifest, PROBES, "fp", cache_root=lab_home / "d", progress=False)
    assert calls.count("base") == 1 and calls.count("adapted") == len(manifest) == 4
    assert D.shape == (4, model.config.hidden_size) and cache.misses == 4
    calls.clear()
    D2, cache2 = activations.zoo_deltas(model, tok, root, manifest, PROBES, "fp", cache_root=lab_home / "d", progress=False)
    assert calls == [] and cache2.hits == 4 and np.array_equal(D, D2)

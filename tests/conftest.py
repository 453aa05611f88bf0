"""Shared fixtures: a private LLGBM_HOME per test (models linked from the real cache, so the
SmolLM2 conversion happens once per machine), the tiny model, and a private reports folder.

`make test` runs pytest-xdist with two workers, a test file to a worker (`--dist loadfile`): the smoke
notebooks share one home in phase order (test_notebooks.py), so one worker runs them all, in order.
(`--dist loadgroup` would be finer, but xdist 3.8's groups do not hold under pytest 9.2: tried.)"""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):     # `make test` runs two workers on two cores: one thread each (torch and
    os.environ["OMP_NUM_THREADS"] = "1"       # the notebook kernels it starts), or their OpenMP threads fight for the cores


@pytest.fixture(scope="session")
def real_home():
    from llgbm.core import models
    models.resolve_model_path("smollm2")   # build the caches once, in the real home
    models.resolve_model_path("tiny")
    return models.model_cache_dir()


@pytest.fixture
def lab_home(tmp_path, monkeypatch, real_home):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(real_home, target_is_directory=True)
    monkeypatch.setenv("LLGBM_HOME", str(home))
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("LLGBM_DELTAS", str(tmp_path / "deltas"))
    return home


@pytest.fixture(scope="session")
def tiny(real_home):
    from llgbm.core.models import load_model
    return load_model("tiny", device="cpu")


@pytest.fixture
def tiny_zoo(tiny, lab_home):
    """A three-task zoo of the tiny model (two training tasks, one held out) with its generic-probe deltas."""
    from llgbm.delta import activations
    from llgbm.delta.probes import create_generic_probes
    from llgbm.teachers import zoo
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "add_3", "country_en_to_de"), steps=3, n_checkpoints=2,
                               eval_items=2, lr=5e-2)
    root = lab_home / "zoo"
    zoo.build_zoo(model, tok, cfg, root, progress=False)
    manifest = zoo.write_manifest(root)
    deltas, cache = activations.zoo_deltas(model, tok, root, manifest, create_generic_probes(), "tiny-fp",
                                     cache_root=lab_home / "deltas", progress=False)
    return root, manifest, deltas, cache


@pytest.fixture(autouse=True)
def _no_counting_after_a_test():
    """A test that made a NotebookReport started the FLOP counter and the artefact record in this
    process: stop both after it, so later tests run without the hook and write nowhere."""
    yield
    from llgbm.core import artefacts, flops
    flops.stop()
    artefacts.stop()

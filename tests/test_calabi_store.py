"""geomlib.calabi.store: a compressed model saved to a folder loads back, without the dense model, to the
same logits; a folder that is not one is refused with a message that says what it needs."""
import json

import pytest
import torch

from geomlib.calabi import allocate, store, svd


def _compressed_tiny():
    from llgbm.core.models import load_model
    model, tok = load_model("tiny", device="cpu")
    ids = tok(["The quick brown fox jumps over the lazy dog.", "def f(x): return x + 1"], return_tensors="pt",
              padding=True).input_ids
    stats = svd.collect_calibration(model, [{"input_ids": ids}])
    allocate.compress_allocated(model, 0.3, stats, fast={(m, n): allocate.max_saving_rank(m, n) for m in (32, 64, 128, 256)
                                                         for n in (32, 64, 128, 256)}, min_features=32)
    return model, tok, ids


def test_a_saved_compressed_model_reloads_to_the_same_logits(real_home, tmp_path):
    model, tok, ids = _compressed_tiny()
    layers = [n for n, m in model.named_modules() if isinstance(m, svd.OptimizedCalabiYauLinear)]
    assert layers, "the allocation factorised nothing: the test would not test loading factors"
    folder = store.save_compressed(model, tmp_path / "c", tok, meta=dict(method="svdllm+alloc", ratio=0.3))
    back = store.load_compressed(folder)
    assert sorted(n for n, m in back.named_modules() if isinstance(m, svd.OptimizedCalabiYauLinear)) == sorted(layers)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in model.parameters())
    assert back.lm_head.weight is back.model.embed_tokens.weight          # tiny ties them, as SmolLM2 does
    assert json.loads((folder / "calabi.json").read_text())["meta"] == dict(method="svdllm+alloc", ratio=0.3)
    assert (folder / "tokenizer_config.json").is_file()


def test_a_folder_that_is_not_a_compressed_model_is_refused(real_home, tmp_path):
    with pytest.raises(FileNotFoundError, match="needs calabi.json, config.json and model.safetensors"):
        store.load_compressed(tmp_path)
    model, tok, ids = _compressed_tiny()
    folder = store.save_compressed(model, tmp_path / "c")
    manifest = json.loads((folder / "calabi.json").read_text())
    (folder / "calabi.json").write_text(json.dumps(dict(manifest, format="other/9")))
    with pytest.raises(ValueError, match="this version reads 'geomlib.calabi/1'"):
        store.load_compressed(folder)

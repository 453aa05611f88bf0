"""llgbm.lora: the one place LoRA lives. Key format, loading, averaging, canonical hashes, writing."""
import json

import pytest
import torch
from peft import LoraConfig

from llgbm.core import lora
from llgbm.generator.tokenizer import LoraLayout

CFG = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def _state(model, value=None, seed=0):
    lay = LoraLayout.from_config(model.config, rank=2, targets=["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(seed)
    return {e.key: (torch.full((e.cols, e.rows) if e.transposed else (e.rows, e.cols), float(value)) if value is not None
                    else torch.randn((e.cols, e.rows) if e.transposed else (e.rows, e.cols), generator=g)) for e in lay.entries}


def test_peft_key_round_trip():
    key = lora.peft_key(3, "down_proj", "B")
    assert key == "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"
    assert lora.module_name(key) == "model.layers.3.mlp.down_proj"
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora.peft_key(0, "w_proj", "A")
    with pytest.raises(KeyError, match="only one of lora_A"):
        lora.pair_weights({lora.peft_key(0, "q_proj", "A"): torch.zeros(2, 3)})


def test_average_adapters_is_the_elementwise_mean(tiny, tmp_path):
    model, _ = tiny
    a = lora.save_adapter(_state(model, 1.0), CFG, tmp_path / "a")
    b = lora.save_adapter(_state(model, 4.0), CFG, tmp_path / "b")
    mean = lora.average_adapters([a, b])
    assert set(mean) == set(_state(model, 0.0)) and all(torch.all(v == 2.5) for v in mean.values())
    with pytest.raises(ValueError, match="no adapters"):
        lora.average_adapters([])
    other = lora.save_adapter({k: v for k, v in _state(model, 1.0).items() if "v_proj" not in k},
                              LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"), tmp_path / "c")
    with pytest.raises(ValueError, match="other LoRA tensors"):
        lora.average_adapters([a, other])


def test_adapter_hash_is_canonical(tiny, tmp_path):
    model, _ = tiny
    state = _state(model)
    a = lora.save_adapter(state, CFG, tmp_path / "a")
    b = lora.save_adapter(state, LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj", "q_proj"], lora_dropout=0.0,
                                            task_type="CAUSAL_LM"), tmp_path / "b")
    cfg_b = json.loads((b / "adapter_config.json").read_text())
    cfg_b["base_model_name_or_path"] = "/some/other/home/models/tiny"       # where it was written: not content
    (b / "adapter_config.json").write_text(json.dumps(cfg_b, indent=5))
    assert lora.adapter_hash(a) == lora.adapter_hash(b)
    changed = dict(state)
    k = next(iter(changed))
    changed[k] = changed[k].clone()
    changed[k].view(-1)[0] += 1e-3
    assert lora.adapter_hash(lora.save_adapter(changed, CFG, tmp_path / "c")) != lora.adapter_hash(a)
    other_alpha = LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    assert lora.adapter_hash(lora.save_adapter(state, other_alpha, tmp_path / "d")) != lora.adapter_hash(a)


def test_saved_adapter_loads_in_peft_with_the_same_logits(tiny, tmp_path):
    from peft import PeftModel
    model, tok = tiny
    state = _state(model)
    folder = lora.save_adapter(state, CFG, tmp_path / "a")
    ids = tok(["Add 1 to the number.\nInput: 4\nOutput:"], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
        with lora.lora_applied(model, state, CFG) as m:
            in_memory = m(ids).logits
        peft_model = PeftModel.from_pretrained(model, folder)
        reloaded = peft_model(ids).logits
        peft_model.unload()
    torch.testing.assert_close(reloaded, in_memory, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, in_memory) and not any("lora" in n for n, _ in model.named_modules())


def test_bad_adapters_are_refused(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        lora.load_adapter_weights(tmp_path)
    bad = _state(model)
    next(iter(bad.values()))[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        lora.save_adapter(bad, CFG, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="needs its LoraConfig"):
        with lora.lora_applied(model, _state(model)):
            pass

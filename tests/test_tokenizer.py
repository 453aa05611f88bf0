import pytest
import torch

from llgbm.core.models import model_config
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D


def _random_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {e.key: torch.randn((e.cols, e.rows) if e.transposed else (e.rows, e.cols), generator=g) * 0.02
            for e in layout.entries}


LAYOUTS = {
    "smollm2-r8": lambda: LoraLayout.from_config(model_config("smollm2"), rank=8),
    "tiny-r8": lambda: LoraLayout.from_config(model_config("tiny"), rank=8),
    "qwen2.5-0.5b-r8": lambda: LoraLayout.for_seed_model("qwen2.5-0.5b", rank=8),
    "qwen2.5-1.5b-r16": lambda: LoraLayout.for_seed_model("qwen2.5-1.5b", rank=16),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_roundtrip_on_every_layout(name, real_home):
    layout = LAYOUTS[name]()
    tok = LoRATokenizer2D(layout)
    state = _random_state(layout)
    tokens = tok.tokenize(state)
    assert tokens.shape == (layout.n_tokens, layout.rank + 2, layout.chunk)
    back = tok.detokenize(tokens)
    err = max((back[k] - v).abs().max().item() for k, v in state.items())
    assert err < 1e-3, f"round-trip max abs error {err}"
    data = tokens[tok.mask()]
    assert not torch.isnan(data).any() and torch.isnan(tokens[~tok.mask()]).all()
    assert tok.mask().sum() == sum(e.rows * e.cols for e in layout.entries) + 2 * layout.n_tokens


def test_dnd_reference_layout():
    layout = LoraLayout.for_seed_model("qwen2.5-0.5b", rank=8)
    assert layout.token_shape == (10, 130)                     # DnD's token for rank 8
    assert layout.n_tokens == 4296 and layout.n_tokens / 24 == 179
    big = LoraLayout.for_seed_model("qwen2.5-1.5b", rank=16)
    assert len(big.entries) == 28 * 7 * 2


def test_layout_matches_a_real_peft_adapter(tiny, lab_home):
    from llgbm.core import lora
    from llgbm.teachers import zoo
    model, tok = tiny
    rec = zoo.train_teacher(model, tok, "add_1", 0, zoo.ZooConfig.preset("smoke", steps=2, n_checkpoints=1,
                            eval_items=2), lab_home / "zoo", progress=False)
    weights = lora.load_adapter_weights(lab_home / "zoo" / rec["checkpoints"][0]["path"])
    layout = LoraLayout.from_config(model.config, rank=8)
    assert {e.key for e in layout.entries} == set(weights)
    t = LoRATokenizer2D(layout)
    back = t.detokenize(t.tokenize(weights))
    assert max((back[k] - v).abs().max().item() for k, v in weights.items()) < 1e-6


def test_bad_inputs_are_named():
    layout = LoraLayout.for_seed_model("qwen2.5-0.5b", rank=8)
    tok = LoRATokenizer2D(layout)
    with pytest.raises(KeyError, match="lacks"):
        tok.tokenize({})
    with pytest.raises(ValueError, match="expected tokens of shape"):
        tok.detokenize(torch.zeros(3, 10, 130))
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        LoraLayout.for_seed_model("qwen2.5-0.5b", rank=8, targets=("qkv",))

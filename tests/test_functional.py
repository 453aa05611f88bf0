import pytest
import torch
from peft import LoraConfig

from llgbm.core import functional, lora
from llgbm.delta import activations
from llgbm.delta.probes import create_generic_probes
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
from llgbm.teachers import zoo

CFG = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                 task_type="CAUSAL_LM")


def _random_lora(model, scale=0.05, seed=0, cfg=CFG):
    """A peft state dict with non-zero A and B (peft initialises B to zero, which would test nothing)."""
    lay = LoraLayout.from_config(model.config, rank=cfg.r, targets=sorted(cfg.target_modules))
    g = torch.Generator().manual_seed(seed)
    return {e.key: scale * torch.randn((e.cols, e.rows) if e.transposed else (e.rows, e.cols), generator=g)
            for e in lay.entries}


ZOO_CFG = zoo.ZooConfig.preset("quick").lora_config()   # the zoo's real LoRA: r 8, α 16, all 7 projections


@pytest.mark.parametrize("cfg", [CFG, ZOO_CFG], ids=["r4-3targets", "zoo-r8-a16-7targets"])
def test_both_modes_equal_peft(tiny, cfg):
    assert cfg is CFG or (cfg.r, cfg.lora_alpha, len(cfg.target_modules)) == (8, 16, 7)
    model, tok = tiny
    state = _random_lora(model, cfg=cfg)
    probes = functional.tokenize_probes(tok, create_generic_probes())
    batch = dict(input_ids=probes["input_ids"], attention_mask=probes["attention_mask"])
    with torch.no_grad():
        plain = model(**batch).logits
        with lora.lora_applied(model, state, cfg) as peft_model:
            ref = peft_model(**batch).logits
        hooks = functional.FunctionalLoRA.from_lora_config(model, cfg)
        assert hooks.scaling == cfg.lora_alpha / cfg.r
        with hooks.hooked(lora.stack_states([state])):
            via_hooks = model(**batch).logits
        fcall = functional.FunctionalLoRA.from_lora_config(model, cfg, "functional")
        via_call = torch.func.functional_call(model, fcall.apply_lora_weights(state), args=(), kwargs=batch).logits
    assert (ref - plain).abs().max() > 1e-3            # the LoRA does change the output
    assert (via_hooks - ref).abs().max() < 1e-5
    assert (via_call - ref).abs().max() < 1e-5
    assert not any("lora" in n for n, _ in model.named_modules())
    assert torch.equal(model(**batch).logits, plain)   # hooks removed: the base model is untouched


def test_batched_delta_matches_peft_delta_per_adapter(tiny):
    model, tok = tiny
    texts = create_generic_probes()
    states = [_random_lora(model, seed=s) for s in range(3)]
    base = activations.compute_base_activation(model, tok, texts)
    probes = functional.tokenize_probes(tok, texts)
    for mode in functional.FunctionalLoRA.MODES:
        flora = functional.FunctionalLoRA.from_lora_config(model, CFG, mode)
        with torch.no_grad():
            got = functional.compute_delta_differentiable(flora, lora.stack_states(states), probes, base)
        for i, s in enumerate(states):
            ref = activations.compute_adapter_delta(model, tok, s, texts, base, lora_config=CFG)
            assert torch.allclose(got[i], torch.as_tensor(ref), atol=1e-5), mode


def test_gradcheck_float64(tiny, monkeypatch):
    """Gradients of Δ with respect to A and B, checked against finite differences in float64.

    Llama's RMSNorm computes in float32 whatever its input; in float64 that is a downcast that would
    drown the finite differences, so the norm runs in its input's precision here (same formula)."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    model, tok = tiny
    model64 = type(model)(model.config).double().eval()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    model64.requires_grad_(False)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"], task_type="CAUSAL_LM")
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_"
    g = torch.Generator().manual_seed(0)
    h, kv = model.config.hidden_size, model64.model.layers[0].self_attn.v_proj.out_features
    a = (0.1 * torch.randn(1, 2, h, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = (0.1 * torch.randn(1, kv, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    probes = functional.tokenize_probes(tok, create_generic_probes(2))
    flora = functional.FunctionalLoRA.from_lora_config(model64, cfg)

    def f(a, b):
        states = flora.last_token_states({key + "A.weight": a, key + "B.weight": b}, probes)
        return states.mean(1)[:, :8]
    assert torch.autograd.gradcheck(f, (a, b), eps=1e-6, atol=1e-6)


def test_bad_inputs_are_named(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="unknown mode"):
        functional.FunctionalLoRA(model, 2.0, mode="merge")
    with pytest.raises(KeyError, match="not a peft LoRA key"):
        lora.module_name("model.layers.0.q_proj.weight")
    flora = functional.FunctionalLoRA(model, 2.0)
    with pytest.raises(KeyError, match="not a Linear"):
        flora.apply_lora_weights({"base_model.model.nope.lora_A.weight": torch.zeros(2, 3),
                                  "base_model.model.nope.lora_B.weight": torch.zeros(3, 2)})


def test_detokenize_batch_matches_detokenize_and_is_differentiable(tiny):
    model, _ = tiny
    states = [_random_lora(model, seed=s) for s in range(2)]
    lay = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=CFG.r, targets=CFG.target_modules))
    tokens = torch.stack([lay.tokenize(s) for s in states]).nan_to_num().requires_grad_(True)
    batch = lay.detokenize_batch(tokens)
    for i, s in enumerate(states):
        for k, v in s.items():
            assert torch.allclose(batch[k][i], v, atol=1e-6)
            assert torch.allclose(lay.detokenize(tokens[i].detach())[k], v, atol=1e-6)
    sum(v.sum() for v in batch.values()).backward()
    assert tokens.grad.abs().sum() > 0
    # every data position of the tokens receives a gradient; the NaN padding positions none
    assert (tokens.grad != 0)[:, lay.mask()].float().mean() > 0.99 and (tokens.grad[:, ~lay.mask()] == 0).all()

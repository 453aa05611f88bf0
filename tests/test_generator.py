import numpy as np
import pytest
import torch

from llgbm.core.models import load_encoder
from llgbm.generator import network, sample, train
from llgbm.generator.dataset import DeltaAugmentedDataset, GeneratorData
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
from llgbm.teachers import zoo

GCFG = network.GeneratorConfig.preset("smoke")


def test_forward_backward_shapes_on_the_tiny_layout(tiny):
    layout = LoraLayout.from_config(tiny[0].config)
    gen = network.HyperConvGenerator(GCFG, layout.n_tokens, layout.token_shape).train()
    cond = torch.randn(2, GCFG.n_prompts, GCFG.prompt_tokens, GCFG.enc_dim)
    out = gen(cond)
    assert out.shape == (2, layout.n_tokens, *layout.token_shape)
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.parameters())


def test_quick_generator_is_in_the_intended_size_range(real_home):
    from llgbm.core.models import model_config
    layout = LoraLayout.from_config(model_config("smollm2"))
    gen = network.HyperConvGenerator(network.GeneratorConfig.preset("quick"), layout.n_tokens, layout.token_shape)
    assert 2e5 < sum(p.numel() for p in gen.parameters()) < 2e7


def test_nan_masking_keeps_the_loss_finite_and_ignores_padding():
    target = torch.randn(2, 5, 4, 6)
    target[:, :, 3, 1:] = float("nan")            # padding
    pred = torch.nan_to_num(target.clone())
    pred_padded = pred.clone()
    pred_padded[:, :, 3, 1:] = 1e3                # anything on padding
    assert network.weight_loss(pred, target).item() == 0.0
    assert network.weight_loss(pred_padded, target).item() == 0.0
    loss = network.weight_loss(torch.zeros_like(pred, requires_grad=True), target)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def _weight_loss_by_autograd(pred, target, weights, mask):
    """The weight loss written as plain autograd ops: the reference the fused loss must match."""
    err = (pred - target).square() * mask
    per_token = err.flatten(2).sum(2) / mask.expand_as(err).flatten(2).sum(2).clamp_min(1)
    return (per_token * weights).mean()


@pytest.mark.parametrize("shared_mask", [True, False])
def test_fused_weight_loss_matches_autograd_in_value_and_gradient(shared_mask):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 7, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 7, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    mask = torch.rand(1 if shared_mask else 3, 7, 4, 6, generator=g) > 0.3
    mask[:, 2] = False                                   # a token that is all padding
    fused = network.weight_loss(pred, target, weights, mask=mask)
    ref = _weight_loss_by_autograd(pred, target, weights, mask)
    assert torch.allclose(fused, ref, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, (pred, target)), torch.autograd.grad(ref, (pred, target))):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(lambda p, t: network.weight_loss(p, t, weights, mask=mask), (pred, target))


def test_fused_weight_loss_draws_the_same_target_noise():
    pred, target = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    mask = torch.ones(1, 3, 4, 5, dtype=torch.bool)
    torch.manual_seed(7)
    noisy = network.weight_loss(pred, target, target_noise=1e-2, mask=mask)
    torch.manual_seed(7)
    ref = _weight_loss_by_autograd(pred, target + 1e-2 * torch.randn_like(target), torch.ones(3), mask)
    assert noisy.item() == pytest.approx(ref.item(), rel=1e-6) and noisy.item() != pytest.approx(
        network.weight_loss(pred, target, mask=mask).item(), rel=1e-6)


def test_token_weights_follow_the_std_across_checkpoints():
    tokens = torch.zeros(4, 3, 2, 2)
    tokens[:, 1] = torch.arange(4.0)[:, None, None]    # token 1 varies across checkpoints, others do not
    w = network.token_weights(tokens)
    assert w[1] > 10 * w[0] and w.mean() == pytest.approx(1.0, abs=1e-3)


def test_training_lowers_the_loss_and_exported_adapter_matches_in_memory_logits(tiny, lab_home):
    from peft import PeftModel

    from llgbm.core.lora import lora_applied
    model, tok = tiny
    zcfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "country_en_to_de"), steps=3, n_checkpoints=2, eval_items=2, lr=5e-2)
    root = lab_home / "zoo"
    zoo.build_zoo(model, tok, zcfg, root, progress=False)
    rows = zoo.write_manifest(root)
    lt = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=zcfg.rank, targets=zcfg.targets))
    enc = load_encoder(device="cpu")
    data = GeneratorData(DeltaAugmentedDataset(root, rows, None, lt), enc, GCFG)
    gen, losses = train.train_generator(data, GCFG, train.TrainingConfig.preset("smoke", steps=30, lr=3e-3),
                                           seed=0, progress=False)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    prompts = ["Add 1 to the number.\nInput: 41\nOutput:"] * 3
    folder, secs = sample.generate_adapter(gen, enc, lt, zcfg.lora_config(), prompts, lab_home / "gen" / "a")
    assert secs > 0 and (folder / "adapter_config.json").exists()
    ids = tok(prompts[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        tokens = gen(network.encode_prompts(enc, prompts, GCFG.prompt_tokens)[torch.arange(GCFG.n_prompts) % 3][None])[0]
        with lora_applied(model, lt.detokenize(tokens), zcfg.lora_config()) as m:
            in_memory = m(ids).logits
        peft_model = PeftModel.from_pretrained(model, folder)
        reloaded = peft_model(ids).logits
        peft_model.unload()
    torch.testing.assert_close(reloaded, in_memory, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(in_memory, model(ids).logits)     # the adapter does something

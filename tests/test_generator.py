import numpy as np
import pytest
import torch

from llgbm import generator, training, zoo
from llgbm.dataset import DeltaAugmentedDataset, GeneratorData
from llgbm.models import load_encoder
from llgbm.tokenizer import LoraLayout, LoRATokenizer2D

GCFG = generator.GeneratorConfig.preset("smoke")


def test_forward_backward_shapes_on_the_tiny_layout(tiny):
    layout = LoraLayout.from_config(tiny[0].config)
    gen = generator.HyperConvGenerator(GCFG, layout.n_tokens, layout.token_shape).train()
    cond = torch.randn(2, GCFG.n_prompts, GCFG.prompt_tokens, GCFG.enc_dim)
    out = gen(cond)
    assert out.shape == (2, layout.n_tokens, *layout.token_shape)
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.parameters())


def test_quick_generator_is_in_the_intended_size_range(real_home):
    from llgbm.models import model_config
    layout = LoraLayout.from_config(model_config("smollm2"))
    gen = generator.HyperConvGenerator(generator.GeneratorConfig.preset("quick"), layout.n_tokens, layout.token_shape)
    assert 2e5 < sum(p.numel() for p in gen.parameters()) < 2e7


def test_nan_masking_keeps_the_loss_finite_and_ignores_padding():
    target = torch.randn(2, 5, 4, 6)
    target[:, :, 3, 1:] = float("nan")            # padding
    pred = torch.nan_to_num(target.clone())
    pred_padded = pred.clone()
    pred_padded[:, :, 3, 1:] = 1e3                # anything on padding
    assert generator.weight_loss(pred, target).item() == 0.0
    assert generator.weight_loss(pred_padded, target).item() == 0.0
    loss = generator.weight_loss(torch.zeros_like(pred, requires_grad=True), target)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def test_token_weights_follow_the_std_across_checkpoints():
    tokens = torch.zeros(4, 3, 2, 2)
    tokens[:, 1] = torch.arange(4.0)[:, None, None]    # token 1 varies across checkpoints, others do not
    w = generator.token_weights(tokens)
    assert w[1] > 10 * w[0] and w.mean() == pytest.approx(1.0, abs=1e-3)


def test_training_lowers_the_loss_and_exported_adapter_matches_in_memory_logits(tiny, lab_home):
    from peft import PeftModel
    from llgbm.lora import lora_applied
    model, tok = tiny
    zcfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "country_en_to_de"), steps=3, n_checkpoints=2, eval_items=2, lr=5e-2)
    root = lab_home / "zoo"
    zoo.build_zoo(model, tok, zcfg, root, progress=False)
    rows = zoo.write_manifest(root)
    lt = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=zcfg.rank, targets=zcfg.targets))
    enc = load_encoder(device="cpu")
    data = GeneratorData(DeltaAugmentedDataset(root, rows, None, lt), enc, GCFG)
    gen, losses = training.train_generator(data, GCFG, training.TrainingConfig.preset("smoke", steps=30, lr=3e-3),
                                           seed=0, progress=False)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    prompts = ["Add 1 to the number.\nInput: 41\nOutput:"] * 3
    folder, secs = training.generate_adapter(gen, enc, lt, zcfg.lora_config(), prompts, lab_home / "gen" / "a")
    assert secs > 0 and (folder / "adapter_config.json").exists()
    ids = tok(prompts[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        tokens = gen(generator.encode_prompts(enc, prompts, GCFG.prompt_tokens)[torch.arange(GCFG.n_prompts) % 3][None])[0]
        with lora_applied(model, lt.detokenize(tokens), zcfg.lora_config()) as m:
            in_memory = m(ids).logits
        peft_model = PeftModel.from_pretrained(model, folder)
        reloaded = peft_model(ids).logits
        peft_model.unload()
    torch.testing.assert_close(reloaded, in_memory, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(in_memory, model(ids).logits)     # the adapter does something

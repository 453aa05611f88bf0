"""geomlib.igbundle: the seed's bundle adapter as its code works, its sheaf loss (broken as written,
and a corrected version), attaching to a model, checkpoints and their verification."""
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from geomlib.igbundle import adapter as ig
from geomlib.igbundle import host as igm


def _state(B=2, T=3, P=4, D=128, K=16, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(*s, generator=g).requires_grad_(requires_grad) for s in ((B, T, P), (B, T, P, D), (B, T, P, D), (B, T, P, K))]
    return ig.MixtureState(t[0], t[1], 0.1 * t[2], t[3]), t


def test_kl_formulas_match_torch_distributions():
    from torch.distributions import Categorical, Normal, kl_divergence
    m1, m2, ls1, ls2 = torch.randn(4, 5), torch.randn(4, 5), 0.3 * torch.randn(4, 5), 0.3 * torch.randn(4, 5)
    ref = kl_divergence(Normal(m1, ls1.exp()), Normal(m2, ls2.exp())).sum(-1)
    torch.testing.assert_close(ig.kl_diag_gauss(m1, ls1, m2, ls2), ref, atol=1e-5, rtol=1e-5)
    u1, u2 = torch.randn(4, 7), torch.randn(4, 7)
    torch.testing.assert_close(ig.kl_categorical_logits(u1, u2), kl_divergence(Categorical(logits=u1), Categorical(logits=u2)))
    A = ig.affinity(_state()[0], 1.0, 1.0)
    torch.testing.assert_close(A.sum(-1), torch.ones(A.shape[:-1]))


def test_adapter_starts_as_the_identity_and_counts_its_parameters(tiny):
    model, tok = tiny
    ids = tok(["Add 1 to the number.\nInput: 4\nOutput:"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
    host = igm.attach(model, ig.IGBundleConfig(bottleneck_dim=16, latent_dim=8, num_categories=4, sheaf="normalised"))
    try:
        assert host.trainable_params() == len(host.adapters) * ig.adapter_params(host.cfg)
        assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("igbundle"))
        with torch.no_grad():
            after = model(ids).logits
        assert torch.equal(before, after)                       # zero-initialised output projection
        assert len(host.states) == model.config.num_hidden_layers and all(v > 0 for v in host.sigma.values())
        assert host.sheaf_value().item() > 0                     # the normalised loss is alive on real states
        with pytest.raises(ValueError, match="already carries"):
            igm.attach(model, ig.IGBundleConfig())
    finally:
        igm.detach(model)
    assert not hasattr(model, "igbundle")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_faithful_sheaf_loss_is_exactly_zero_with_zero_gradient_at_the_seed_defaults():
    cfg = ig.IGBundleConfig()
    assert (cfg.latent_dim, cfg.num_patches, cfg.tau) == (128, 8, 1.0)
    torch.manual_seed(0)
    loss = ig.SheafLoss(cfg.num_patches, cfg.latent_dim, cfg.tau)
    state, leaves = _state(requires_grad=True)
    off_diagonal = loss.omega()[~torch.eye(8, dtype=torch.bool)]
    assert torch.all(off_diagonal == 0.0)                      # exp(−~256) underflows in float32
    value = loss(state)
    value.backward()
    assert value.item() == 0.0
    assert all(t.grad is None or torch.all(t.grad == 0) for t in leaves)
    assert torch.all(loss.patch_centers.grad == 0)
    # at a small latent size the same code is alive: it is the scale, not the formula, that kills it
    small = ig.SheafLoss(8, 2, 1.0)
    assert small(_state(D=2)[0]).item() > 0


def test_normalised_sheaf_loss_is_positive_scale_invariant_and_not_minimised_by_collapse():
    torch.manual_seed(0)
    loss = ig.NormalisedSheafLoss(8, 128, 16)
    state = _state()[0]
    value = loss(state)
    assert value.item() > 0 and torch.isfinite(value)
    omega = loss.omega()[~torch.eye(8, dtype=torch.bool)]
    assert 1e-3 < omega.mean() < 0.9                           # τ scaled with D_lat: a useful range
    R = loss.restriction()
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(16).expand(8, -1, -1), atol=1e-5, rtol=0)   # F = 0 impossible
    # collapse: shrinking every fibre deviation towards uniform leaves the quotient unchanged
    x = torch.rand(2, 3, 8, 16)
    x = x / x.sum(-1, keepdim=True) - 1 / 16
    ratios = [(lambda n, d: (n / d).mean())(*loss.energy_terms(c * x)).item() for c in (1.0, 1e-2, 1e-4)]
    assert ratios[0] > 0 and max(ratios) - min(ratios) < 1e-4 * ratios[0]
    # the unnormalised energy (the numerator alone) falls as c²: collapse would minimise it
    nums = [loss.energy_terms(c * x)[0].mean().item() for c in (1.0, 1e-2)]
    assert nums[1] == pytest.approx(1e-4 * nums[0], rel=1e-3)
    # with identity maps (the ablation) equal fibres glue exactly; orthogonal maps need not
    ident = ig.NormalisedSheafLoss(8, 128, 16, identity_maps=True)
    same = x[:, :, :1].expand(-1, -1, 8, -1)
    assert ident.energy_terms(same)[0].abs().max().item() < 1e-12 and loss.energy_terms(same)[0].min().item() > 0


def test_scaled_preset_matches_a_parameter_budget():
    cfg = ig.IGBundleConfig(hidden_size=576)
    seed_size = 30 * ig.adapter_params(cfg)
    assert 20e6 < seed_size < 30e6                              # ANCHORS: ≈ 25.6M on SmolLM2 at the defaults
    lora_r8_all = 30 * 8 * (4 * 576 + 2 * (576 + 192) + 2 * (576 + 1536) + 2 * (1536 + 576) - 2 * 576 + 2 * 576)
    s = ig.scaled(cfg, lora_r8_all, 30)
    assert abs(30 * ig.adapter_params(s) - lora_r8_all) <= 0.1 * lora_r8_all


@pytest.fixture
def trained_host(tiny):
    """The tiny model with adapters whose weights are perturbed (so they are not the identity)."""
    model, tok = tiny
    cfg = ig.IGBundleConfig(bottleneck_dim=16, latent_dim=8, num_categories=4, sheaf="normalised", lora_r=2)
    host = igm.attach(model, cfg)
    with torch.no_grad():
        for p in host.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    yield model, tok, host
    igm.detach(model)


def test_save_then_load_gives_the_same_logits(trained_host, tmp_path):
    model, tok, host = trained_host
    ids = tok(["Add 1 to the number.\nInput: 4\nOutput:"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    igm.save(model, tmp_path / "ckpt", "fp-tiny")
    cfg = replace(host.cfg)
    igm.detach(model)
    with torch.no_grad():
        plain = model(ids).logits
    assert not torch.allclose(plain, ref)
    igm.load(model, tmp_path / "ckpt", "fp-tiny", cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-6, rtol=1e-6)


def test_verify_catches_a_planted_nan_and_a_truncated_file(trained_host, tmp_path):
    model, _, _ = trained_host
    good = igm.save(model, tmp_path / "good", "fp")
    assert igm.verify(good)["kind"] == "igbundle"
    nan = igm.save(model, tmp_path / "nan", "fp")
    w = load_file(str(nan / igm.WEIGHTS))
    k = sorted(w)[3]
    w[k].view(-1)[0] = float("nan")
    save_file(w, str(nan / igm.WEIGHTS))
    with pytest.raises(ValueError, match="NaN/Inf"):
        igm.verify(nan)
    cut = igm.save(model, tmp_path / "cut", "fp")
    data = (cut / igm.WEIGHTS).read_bytes()
    (cut / igm.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        igm.verify(cut)
    lora = igm.save(model, tmp_path / "lora", "fp")
    (lora / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="adapter_model.safetensors cannot be read"):
        igm.verify(lora)
    with pytest.raises(ValueError, match="not an IGBundle checkpoint"):
        igm.verify(tmp_path)


def test_a_checkpoint_for_another_base_or_config_is_refused(trained_host, tmp_path):
    model, _, host = trained_host
    ckpt = igm.save(model, tmp_path / "ckpt", "fingerprint-of-smollm2")
    cfg = replace(host.cfg)
    igm.detach(model)
    with pytest.raises(ValueError, match="another base model"):
        igm.load(model, ckpt, "fingerprint-of-tiny")
    with pytest.raises(ValueError, match="another IGBundle config.*num_components"):
        igm.load(model, ckpt, "fingerprint-of-smollm2", replace(cfg, num_components=3))
    meta = json.loads((ckpt / igm.META).read_text())
    meta["config"]["curvature"] = 1.0
    (ckpt / igm.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown IGBundle config key.*curvature"):
        igm.verify(ckpt)
    assert not hasattr(model, "igbundle")


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="unknown sheaf mode 'glue'"):
        ig.IGBundleConfig(sheaf="glue")
    with pytest.raises(ValueError, match="num_components must be ≥ 1"):
        ig.IGBundleConfig(num_components=0)
    with pytest.raises(ValueError, match="unknown adapter kind"):
        igm.BundleHost(ig.IGBundleConfig(hidden_size=8), 1, kind="prefix")

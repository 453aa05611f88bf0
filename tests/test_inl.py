"""geomlib.inl (seed 004): the integrator step against a hand computation, trajectories, the two
early-stopping rules, KV-cache generation, IntegratorLoss components, the cycle scheduler, the
README's own training loop, and exact resume / determinism of the training harness."""
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geomlib.inl import (IntegratorConfig, IntegratorLoss, IntegratorNeuronLayer, create_cycle_scheduler, create_model,
                         lab, parameter_breakdown, parameter_table, size_config, transformer_like)
from geomlib.inl.model import IntegratorLanguageModel
from llgbm.eval.lm import pydoc_corpus, unigram_entropy


def constant_controller(layer, alpha, beta, gate):
    """Make the controller ignore its input: α, β, g become the given constants (a linear system)."""
    d = layer.cfg.dim
    inv_sig, inv_sp = (lambda y: math.log(y / (1 - y))), (lambda y: math.log(math.expm1(y)))
    with torch.no_grad():
        layer.controller[2].weight.zero_()
        layer.controller[2].bias.copy_(torch.tensor([inv_sig(alpha)] * d + [inv_sp(beta)] * d + [inv_sig(gate)] * d))


def test_integrator_step_matches_a_hand_computed_update():
    torch.manual_seed(0)
    layer = IntegratorNeuronLayer(IntegratorConfig(dim=4, group_size=2, mu_init=0.5))
    with torch.no_grad():
        layer.mu_offsets.copy_(torch.tensor([0.1, -0.2]))
    h, x, v = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    a, b, g = layer.controller(torch.cat([h, x, v], -1)).split(4, -1)
    mu = torch.tensor([0.6, 0.6, 0.3, 0.3])
    v_ref = torch.sigmoid(a) * v - F.softplus(b) * (x - mu)
    x_ref = x + 0.1 * torch.sigmoid(g) * v_ref
    x1, v1 = layer.step(h, x, v)
    assert torch.allclose(layer.mu(), mu) and torch.allclose(v1, v_ref) and torch.allclose(x1, x_ref)


def test_fuller_neuron_options_change_the_update_as_documented():
    torch.manual_seed(0)
    h, x, v = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    plain = IntegratorNeuronLayer(4)
    for opts in (dict(candidate_velocity=True), dict(dynamic_gain="code"), dict(dynamic_gain="readme"),
                 dict(harmonic_amplitude=0.03)):
        other = IntegratorNeuronLayer(4, **opts)
        sd = {k: v for k, v in plain.state_dict().items() if other.state_dict()[k].shape == v.shape}
        other.load_state_dict(sd, strict=False)
        assert not torch.allclose(other.step(h, x, v)[1], plain.step(h, x, v)[1]), opts
    with pytest.raises(ValueError, match="dynamic_gain"):
        IntegratorConfig(dim=4, dynamic_gain="sometimes")


def test_relax_returns_one_state_per_iteration():
    layer = IntegratorNeuronLayer(8)
    x, v, info = layer.relax(torch.randn(2, 5, 8), torch.randn(2, 5, 8), 6, return_trajectory=True)
    assert x.shape == (2, 5, 8) and info["x"].shape == (10, 7, 8) and info["v"].shape == (10, 7, 8)
    assert torch.equal(info["x"][:, -1], x.view(10, 8)) and (info["v"][:, 0] == 0).all()
    assert (info["iterations"] == 6).all()
    model = create_model("cpu-tiny", vocab_size=50).train()
    _, aux = model(torch.randint(0, 50, (2, 7)), return_aux=True)
    assert len(aux) == 2 and all(a["x"].shape == (14, 6, 64) for a in aux)


def contracting(dim=4):
    layer = IntegratorNeuronLayer(dim)
    constant_controller(layer, alpha=0.5, beta=2.0, gate=0.9)
    return layer


def test_early_stop_fires_on_a_contracting_system_and_never_before_the_minimum():
    layer = contracting()
    h = torch.zeros(3, 4)
    x0 = torch.randn(3, 4)
    _, _, fixed = layer.relax(h, x0, 200, early_stop=None, return_trajectory=True)
    step_sizes = (fixed["x"][:, 1:] - fixed["x"][:, :-1]).norm(dim=-1)
    assert step_sizes[:, -1].max() < 1e-6                      # it does contract
    for mode in ("batch", "token"):
        _, _, info = layer.relax(h, x0, 200, early_stop=mode, tol=1e-3, min_iterations=3)
        assert 4 <= int(info["iterations"].max()) < 200
    # already at equilibrium: Δx = 0 from the start, yet no stop before index 3 (4 iterations)
    at_mu = layer.mu().expand(3, 4).clone()
    for mode in ("batch", "token"):
        _, _, info = layer.relax(h, at_mu, 50, early_stop=mode, min_iterations=3)
        assert (info["iterations"] == 4).all()
    with pytest.raises(ValueError, match="early_stop"):
        layer.relax(h, x0, 5, early_stop="sometimes")


def test_per_token_stop_agrees_with_the_batch_stop_when_rows_converge_together():
    layer = contracting()
    h, x0 = torch.zeros(5, 4), torch.randn(1, 4).expand(5, 4).clone()
    xb, _, ib = layer.relax(h, x0, 100, early_stop="batch")
    xt, _, it = layer.relax(h, x0, 100, early_stop="token")
    assert torch.equal(ib["iterations"], it["iterations"]) and torch.allclose(xb, xt)


def test_per_token_stop_freezes_converged_rows_and_compaction_changes_nothing():
    layer = contracting()
    h = torch.zeros(4, 4)
    x0 = torch.cat([layer.mu().detach().expand(2, 4), torch.randn(2, 4) * 5])     # two rows start converged
    xw, _, iw = layer.relax(h, x0, 100, early_stop="token", compact_below=0.0)      # masked path
    xc, _, ic = layer.relax(h, x0, 100, early_stop="token", compact_below=1.0)      # gathered path
    assert torch.equal(iw["iterations"], ic["iterations"]) and torch.allclose(xw, xc, atol=1e-6)
    assert (iw["iterations"][:2] == 4).all() and (iw["iterations"][2:] > 4).all()
    _, _, ib = layer.relax(h, x0, 100, early_stop="batch")
    assert (ib["iterations"][:2] == 4).all()                  # the count stops; the rows kept moving
    assert int(ib["iterations"].max()) == int(iw["iterations"].max())


@pytest.mark.parametrize("early_stop", [None, "token"])
def test_kv_cache_generation_equals_uncached(early_stop):
    torch.manual_seed(0)
    model = create_model("cpu-tiny", vocab_size=97, early_stop=early_stop).eval()
    prompt = torch.randint(0, 97, (3, 6))
    a = model.generate(prompt, 10, do_sample=False, use_cache=True)
    b = model.generate(prompt, 10, do_sample=False, use_cache=False)
    assert torch.equal(a, b)
    full, _ = model(a)
    from geomlib.inl.model import KVCache
    cache = KVCache()
    first, _ = model(a[:, :6], cache=cache)
    steps = [model(a[:, i:i + 1], cache=cache)[0] for i in range(6, a.shape[1])]
    assert torch.allclose(torch.cat([first, *steps], 1), full, atol=1e-5)


def test_integrator_loss_components_match_hand_computed_values():
    torch.manual_seed(0)
    xs, vs = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    pred, tgt = torch.randn(6, 5), torch.randint(0, 5, (6,))
    fn = IntegratorLoss(task_loss_type="ce", target_value=0.5, lambda_mean_init=0.2, lambda_speed=0.03, lambda_energy=0.004,
                        annealing_epochs=10, annealing_factor=0.1)
    out = fn(predictions=pred, targets=tgt, trajectory={"x": xs, "v": vs}, epoch=5)
    lam = 0.2 * 0.1 ** 0.5
    xf = xs[:, -1]
    w = 1 / (1 + xf.var(0))
    w = w * 3 / w.sum()
    L_mean = lam * (w * ((xf - 0.5) ** 2).mean(0)).mean()
    wt = torch.exp(-torch.arange(1, 4.0) / 1.0)
    wt = wt / wt.sum()
    L_speed = 0.03 * sum(wt[t - 1] * (xs[:, t] - 0.5).abs() for t in range(1, 4)).mean()
    L_energy = 0.004 * (vs ** 2).mean()
    assert torch.allclose(out["L_task"], F.cross_entropy(pred, tgt))
    for k, ref in dict(L_mean=L_mean, L_speed=L_speed, L_energy=L_energy).items():
        assert torch.allclose(out[k], ref), k
    assert torch.allclose(out["total"], out["L_task"] + L_mean + L_speed + L_energy)
    fn.set_exploration_phase(True)
    out = fn(predictions=pred, targets=tgt, trajectory={"x": xs, "v": vs}, epoch=5)
    assert math.isclose(out["lambda_mean"].item(), 0.05, rel_tol=1e-6) and torch.allclose(out["L_energy"], 0.001 * (vs ** 2).mean())
    assert IntegratorLoss.preset("code").target_value == 5.0 and IntegratorLoss.preset("readme").lambda_speed == 0.01
    with pytest.raises(ValueError, match="task_loss_type"):
        IntegratorLoss(task_loss_type="hinge")
    with pytest.raises(ValueError, match="known: code, readme"):
        IntegratorLoss.preset("mine")


def test_cycle_scheduler_presets_and_unknown_preset():
    s = create_cycle_scheduler("balanced")         # warmup 10, then 5 × (10 equilibrium, 20 exploration)
    phases = [s.step(e)["is_exploration"] for e in range(170)]
    assert not any(phases[:20]) and all(phases[20:40]) and not any(phases[40:50]) and all(phases[50:70])
    assert s.total_epochs() == 160 and phases[165]  # the code's rule: exploration after the last cycle
    c = create_cycle_scheduler("conservative")
    assert c.total_epochs() == 20 + 4 * 30 and c.step(35)["is_exploration"] and c.step(35)["lambda_mean"] == 0.1
    assert create_cycle_scheduler("aggressive").step(10)["excitation_amplitude"] == 0.08
    eq = create_cycle_scheduler("equilibrium")
    assert not any(eq.step(e)["is_exploration"] for e in range(100))
    with pytest.raises(ValueError, match="conservative, balanced, aggressive, equilibrium"):
        create_cycle_scheduler("wild")


def test_bad_size_or_vocab_raises_a_clear_error():
    with pytest.raises(ValueError, match="known sizes: small, medium"):
        create_model("huge", vocab_size=100)
    with pytest.raises(ValueError, match="only in the seed's README"):
        create_model("5B", vocab_size=100)
    for bad in (0, 1, -5, 3.5, "50000"):
        with pytest.raises(ValueError, match="vocab_size"):
            create_model("cpu-tiny", vocab_size=bad)
    model = create_model("cpu-tiny", vocab_size=10)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        model(torch.tensor([[3, 12]]))
    with pytest.raises(ValueError, match="unknown INLConfig field"):
        create_model("cpu-tiny", vocab_size=10, iterations=3)


def test_parameter_table_sums_to_the_real_count_and_the_transformer_matches():
    model = create_model("cpu-tiny", vocab_size=300)
    parts = parameter_breakdown(model)
    assert sum(parts.values()) == model.get_num_params() and parts["relaxation"] > 0
    table = parameter_table(["small"])
    with torch.device("meta"):
        assert table.loc["small", "total"] == create_model("small").get_num_params()
    tcfg = transformer_like(model.cfg)
    t = IntegratorLanguageModel(tcfg)
    assert not tcfg.relax and abs(t.get_num_params() / model.get_num_params() - 1) < 0.01
    assert parameter_breakdown(t)["relaxation"] == 0


def test_readme_training_loop_runs_as_written():
    """The README's example, with `from geomlib.inl import …` in place of inl_llm."""
    import torch.optim as optim

    from geomlib.inl import IntegratorLoss, create_cycle_scheduler, create_model
    torch.manual_seed(0)
    model = create_model(size='cpu-tiny', vocab_size=100)
    loss_fn = IntegratorLoss(task_loss_type='ce', target_value=0.0, lambda_mean_init=0.1, lambda_speed=0.01,
                             lambda_energy=0.001, variance_weighted=True)
    optimizer = optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = create_cycle_scheduler(preset='equilibrium')
    dataloader = [(torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8))) for _ in range(2)]
    logged = []
    for epoch in range(3):
        model.train()
        phase_info = scheduler.step(epoch)
        loss_fn.set_exploration_phase(phase_info['is_exploration'])
        for batch_idx, (input_ids, targets) in enumerate(dataloader):
            logits, trajectory = model(input_ids, return_aux=True)
            losses = loss_fn(predictions=logits.view(-1, logits.size(-1)), targets=targets.view(-1),
                             trajectory=trajectory[-1], epoch=epoch)
            logged.append({k: losses[k].item() for k in ('total', 'L_task', 'L_mean', 'L_speed', 'L_energy')})
            optimizer.zero_grad()
            losses['total'].backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            test_logits, test_traj = model(dataloader[0][0], return_aux=True)
    assert len(logged) == 6 and all(math.isfinite(v) for row in logged for v in row.values())
    assert logged[-1]['L_task'] < logged[0]['L_task']
    assert test_logits.shape == (2, 8, 100) and len(test_traj) == 2
    output = model.generate(dataloader[0][0], max_new_tokens=5, temperature=0.8, top_p=0.9)
    assert output.shape == (2, 13) and torch.equal(output[:, :8], dataloader[0][0])


@pytest.fixture(scope="module")
def tiny_corpus(real_home):
    return pydoc_corpus("tiny")


def test_training_resumes_exactly_and_is_deterministic(tiny_corpus, lab_home):
    cfg = lab.INLLabConfig.preset("smoke", steps=4, eval_every=2)
    mcfg = lab.models_for(cfg, len(tiny_corpus["vocab"]))["inl"]
    straight = lab.train_lm(mcfg, tiny_corpus, cfg, "straight", save=False, progress=False)["model"].state_dict()
    first = lab.train_lm(mcfg, tiny_corpus, cfg, "resumed", stop_after=2, progress=False)
    assert first["history"][-1]["step"] == 2
    resumed = lab.train_lm(mcfg, tiny_corpus, cfg, "resumed", progress=False)
    assert resumed["resumed_from"] == 2 and [h["step"] for h in resumed["history"]] == [2, 4]
    assert all(torch.equal(straight[k], resumed["model"].state_dict()[k]) for k in straight)
    assert lab.deterministic(mcfg, tiny_corpus, cfg)


def test_speed_and_memory_measurements_are_taken_once_and_cached(tiny_corpus, lab_home, monkeypatch):
    cfg = lab.INLLabConfig.preset("smoke", steps=2, eval_every=2)
    configs = lab.models_for(cfg, len(tiny_corpus["vocab"]))
    run = lab.train_lm(configs["inl"], tiny_corpus, cfg, "timed", progress=False)
    calls, real_modes = [], lab.mode_table
    monkeypatch.setattr(lab, "mode_table", lambda *a: calls.append("modes") or real_modes(*a))
    monkeypatch.setattr(lab, "memory_run", lambda c, cfg, steps: calls.append("memory") or dict(
        params=1, peak_above_start_mb=2.0, peak_rss_mb=3.0, seconds_per_step=0.5))
    table, iters, tol = lab.cached_mode_table(run, tiny_corpus, cfg)
    _, memory = lab.memory_runs(configs, cfg)
    assert calls == ["modes", "memory", "memory", "memory"]
    table2, iters2, tol2 = lab.cached_mode_table(run, tiny_corpus, cfg)
    _, memory2 = lab.memory_runs(configs, cfg)
    assert len(calls) == 4                                   # read back: nothing timed again
    pd.testing.assert_frame_equal(table2, table, check_dtype=False)
    assert tol2 == tol and all(torch.equal(iters2[m], iters[m]) for m in iters)
    pd.testing.assert_frame_equal(memory2, memory)
    lab.cached_mode_table(run, tiny_corpus, replace(cfg, bench_repeats=2))   # other settings: timed again
    lab.memory_runs(configs, cfg, refresh=True)
    assert calls.count("modes") == 2 and calls.count("memory") == 6


def test_corpus_split_flops_and_ceiling(tiny_corpus):
    c = tiny_corpus
    assert len(c["train"]) > 5 * len(c["val"]) > 0 and int(c["train"].max()) < len(c["vocab"])
    assert 0 < unigram_entropy(c["val"], len(c["vocab"])) < math.log(len(c["vocab"]))
    cfg = size_config("medium", 50000)
    f = lab.flops_per_token(cfg, 128)
    per_layer_iter = f["relaxation"] / (cfg.num_layers * cfg.num_iterations)
    layer = (f["attention"] + f["ffn"]) / cfg.num_layers
    assert 0.03 < per_layer_iter / layer < 0.05              # ANCHORS: one iteration ≈ 4% of a layer at d = 768
    ceil = lab.speedup_ceiling(cfg, 128, 3)
    assert 1.0 < ceil["ceiling"] < 1.15 and 0 < ceil["iteration_share"] < 0.3
    assert lab.speedup_ceiling(transformer_like(cfg), 128, 3)["ceiling"] == 1.0


def metrics(**changes):
    m = dict(max_iterations=5, mean_iterations_adaptive=5.0, speedup_adaptive_b1=0.9, speedup_adaptive_b8=0.8, speedup_ceiling=1.08,
             val_loss_adaptive_minus_fixed=0.0, val_loss_small_k_minus_fixed=0.02, speedup_small_k_b1=1.3,
             peak_mem_mb_train_inl=400.0, peak_mem_mb_train_transformer=300.0, peak_mem_mb_train_inl_checkpointing=350.0,
             embedding_params_ratio=0.25, embedding_params_ratio_seed_3b=0.13, val_loss_lowrank_embedding_minus_full=0.05,
             deterministic=1, val_loss_inl=5.2, val_loss_transformer=5.1, unigram_entropy=6.0, train_seconds_inl=200.0,
             train_seconds_transformer=80.0, train_seconds_transformer_full_embedding=70.0, notebook_seconds=400.0, tol_calibrated=0.05, mean_iterations_calibrated=4.2, speedup_calibrated_b1=1.1,
             speedup_calibrated_b8=1.05, val_loss_calibrated_minus_fixed=0.01, min_iterations_adaptive=4, measured_ceiling_b1=1.2,
             measured_ceiling_b8=1.1, modes_within_flop_ratio=4, n_modes=6, tol_seed=1e-3, budget_seconds=600.0, learned_margin=0.5,
             train_seconds_all=420.0, params_size_small=48.9e6, params_readme_small=30e6, sizes_vocab=50000, n_seeds=3,
             val_loss_inl_mean=5.2, val_loss_inl_ci_low=5.15, val_loss_inl_ci_high=5.25, val_loss_transformer_mean=5.1,
             val_loss_transformer_ci_low=5.05, val_loss_transformer_ci_high=5.15, val_loss_inl_minus_transformer=0.1,
             val_loss_inl_minus_transformer_ci_low=0.03, val_loss_inl_minus_transformer_ci_high=0.17, params_size_3b=2.16e9,
             sharing_claim_controller=0.04, sharing_claim_equilibrium=0.02)
    from geomlib.inl.tables import sharing_counts
    m.update({f"sharing_{k}": v for k, v in sharing_counts("3B", 50000).items()})
    m["sharing_equilibrium_saved"] = m["sharing_equilibrium_params_per_dim"] - m["sharing_equilibrium_params"]
    return {**m, **changes}


def test_ledger_verdicts_follow_the_numbers():
    from geomlib.inl import ledger
    rows = {c: v for c, v, _ in ledger.claims(metrics())}
    assert rows["3× faster inference with adaptive early stopping"] == "refuted"
    assert rows["Adaptive stopping at zero accuracy loss"].startswith("vacuous")      # no token stopped early
    assert rows["-65% training memory"] == "refuted" and rows["Deterministic training"] == "supported"
    rows = {c: v for c, v, _ in ledger.claims(metrics(mean_iterations_adaptive=3.5, val_loss_adaptive_minus_fixed=0.2,
                                                      speedup_adaptive_b1=3.2, speedup_adaptive_b8=3.1, deterministic=0,
                                                      peak_mem_mb_train_inl=100.0))}
    assert rows["3× faster inference with adaptive early stopping"] == "supported"
    assert rows["Adaptive stopping at zero accuracy loss"] == "refuted" and rows["Deterministic training"] == "refuted"
    assert rows["-65% training memory"] == "supported"
    assert rows["The README's \"Real Params\" per size (small 30M, medium 80M, large 220M)"] == "refuted"    # 48.9M is +63%
    assert rows["-96% controller parameters (shared controllers)"] == "refuted as built (no controller is shared)"   # 40 own controllers
    assert rows["-98% equilibrium parameters (hierarchical equilibrium)"] == "supported (parameters)"              # 1,320 vs 81,920
    assert ledger.verdict(metrics()).startswith("Both models learned")
    assert "Not every model learned" in ledger.verdict(metrics(val_loss_inl=5.8))
    text = ledger.verdict(metrics())
    assert "(95% CIs over 3 seeds; refuted that INL does more per parameter)" in text
    assert rows["Fewer parameters for the same capacity (README: 20-30%)"] == "refuted"
    better = dict(val_loss_inl_minus_transformer=-0.1, val_loss_inl_minus_transformer_ci_low=-0.15, val_loss_inl_minus_transformer_ci_high=-0.05)
    assert {c: v for c, v, _ in ledger.claims(metrics(**better))}["Fewer parameters for the same capacity (README: 20-30%)"] == "supported"
    assert "measured ceiling of 1.20× / 1.10×" in text and "beyond what this design reaches" in text and "never fires" in text
    assert "stops some tokens early" in ledger.verdict(metrics(mean_iterations_adaptive=4.5))


def test_command_line_train_bench_generate(lab_home, tmp_path, capsys):
    import json

    from geomlib.inl.__main__ import main
    from llgbm.core import cli
    assert main(["train", "--profile", "smoke", "--no-save", "--steps", "2", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["relax"] and report["peak_rss_mb"] > report["rss_before_model_mb"] > 0
    assert main(["bench", "--profile", "smoke"]) == 0
    assert "adaptive (batch, the seed's)" in capsys.readouterr().out
    assert main(["generate", "--profile", "smoke", "--prompt", "The", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The")
    assert cli.run(main, ["generate", "--profile", "smoke", "--prompt", "ꙮꙮ", "--max-new-tokens", "3"]) == 2
    assert "never uses" in capsys.readouterr().err

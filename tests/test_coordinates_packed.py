"""Notebook 12's LoRA runs trained together (geomlib.coordinates.packed) against their solo runs."""
import pytest
import torch
from peft import get_peft_model

from geomlib.coordinates import continual, packed
from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import stack_states


def test_clip_per_run_equals_clip_grad_norm_on_each_run():
    torch.manual_seed(0)
    leaves = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 2, 7, requires_grad=True)]
    for x in leaves:
        x.grad = torch.randn_like(x) * torch.tensor([0.01, 1.0, 5.0]).view(3, 1, 1)
    expected = []
    for k in range(3):
        solo = [torch.nn.Parameter(x[k].detach().clone()) for x in leaves]
        for p, x in zip(solo, leaves):
            p.grad = x.grad[k].clone()
        torch.nn.utils.clip_grad_norm_(solo, 1.0)
        expected.append([p.grad for p in solo])
    packed.clip_per_run(leaves, 1.0)
    for k in range(3):
        for x, e in zip(leaves, expected[k]):
            torch.testing.assert_close(x.grad[k], e)
    assert leaves[0].grad[0].norm() > 0                     # the small run is left as it was (not scaled up)


def _solo_stage(model, tok, cfg, method, seed, t, pools, buffer):
    torch.manual_seed(seed)
    lora = get_peft_model(model, cfg.lora_config())
    try:
        named = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
        continual._shared_first_stage(lora, tok, [p for _, p in named], pools, cfg, seed, continual.run_dir(cfg))
        src, w = packed.stage_sources(method, t, pools, buffer)
        continual._train(lora, tok, [p for _, p in named], src, w, cfg, seed, t)
        return {n.replace(".default", ""): p.detach().clone() for n, p in named}
    finally:
        lora.unload()


def test_a_packed_stage_trains_each_run_as_its_solo_run_does(tiny, lab_home):
    model, tok = tiny
    cfg = continual.CLConfig.preset("smoke", lr=2e-2, steps=4)
    pools = continual._pools(tok, cfg.tasks)
    buffer = [p for p in pools[0][:4]]
    runs = [("seq_lora", 0), ("replay", 0), ("joint_lora", 1)]
    start = {s: packed.first_stage(model, tok, cfg, s, pools)[0] for s in (0, 1)}
    states = stack_states([start[s] for _, s in runs])
    flora = FunctionalLoRA.from_lora_config(model, cfg.lora_config(), "hooks")
    losses = packed.train_stage(flora, states, [packed.stage_sources(m, 1, pools, buffer) for m, _ in runs],
                                [s for _, s in runs], 1, cfg, tok.pad_token_id)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    assert all(p.grad is None for p in model.parameters())          # the base model took no gradient
    for k, (m, s) in enumerate(runs):
        solo = _solo_stage(model, tok, cfg, m, s, 1, pools, buffer)
        moved = sum((solo[n] - start[s][n]).norm() ** 2 for n in solo) ** 0.5
        off = sum((states[n][k] - solo[n]).norm() ** 2 for n in solo) ** 0.5
        assert moved > 1e-3, f"{m}/{s}: the solo stage did not train"
        assert off < 1e-3 * moved, f"{m}/{s}: packed run is {off:.2e} from its solo run (solo moved {moved:.2e})"


def test_packed_evaluation_equals_one_adapter_at_a_time(tiny, lab_home):
    model, tok = tiny
    cfg = continual.CLConfig.preset("smoke")
    pools = continual._pools(tok, cfg.tasks)
    states = [packed.first_stage(model, tok, cfg, s, pools)[0] for s in (0, 1)]
    flora = FunctionalLoRA.from_lora_config(model, cfg.lora_config(), "hooks")
    together = packed.exact_matches(flora, tok, stack_states(states), cfg.tasks[0], cfg.eval_items)
    alone = [packed.exact_matches(flora, tok, stack_states([s]), cfg.tasks[0], cfg.eval_items)[0] for s in states]
    assert together == alone and len(together[0]) == cfg.eval_items


def test_run_all_caches_every_run_and_reads_them_back(tiny, lab_home, monkeypatch):
    model, tok = tiny
    cfg = continual.CLConfig.preset("smoke", seeds=(0,))
    with pytest.raises(ValueError, match=r"unknown LoRA method\(s\) \['ewc'\]"):
        packed.run_packed(model, tok, cfg, ("ewc",))
    runs = packed.run_all(model, tok, cfg, methods=packed.LORA_METHODS, progress=False)
    T = len(cfg.tasks)
    for m in packed.LORA_METHODS:
        (run,) = runs[m]
        assert run["packed"] == 3 and len(run["R"]) == T
        assert all((run["R"][t][i] is None) == (i > t) for t in range(T) for i in range(T))
        assert run["R"][0][0] == runs["seq_lora"][0]["R"][0][0]          # the shared first stage
    monkeypatch.setattr(packed, "train_stage", lambda *a, **k: pytest.fail("a cached run was trained again"))
    assert packed.run_all(model, tok, cfg, methods=packed.LORA_METHODS, progress=False) == runs


def test_speed_is_measured_once_and_cached(tiny, lab_home, monkeypatch):
    model, tok = tiny
    cfg = continual.CLConfig.preset("smoke")
    out = packed.speed(model, tok, cfg, runs=2, steps=1, items=2)
    assert {"train_speedup", "eval_speedup", "solo_step_s", "packed_step_s"} <= set(out)
    assert all(out[k] > 0 for k in ("solo_step_s", "packed_step_s", "solo_item_s", "packed_item_s"))
    assert out["train_speedup"] == pytest.approx(out["solo_step_s"] / out["packed_step_s"])
    monkeypatch.setattr(packed, "train_stage", lambda *a, **k: pytest.fail("measured twice"))
    assert packed.speed(model, tok, cfg, runs=2, steps=1, items=2) == out

"""geomlib.calabi.allocate: rank allocation at a fixed budget (never a slower factored layer), the fast-rank
bisection, and the closed-form update of a kept factor against float64 references."""
import itertools

import pytest
import torch

from geomlib.calabi import allocate as al
from geomlib.calabi.svd import CalibrationStats, decompose


def _layers():
    """Three layers: a sensitive one (slowly falling spectrum), an easy one, and one whose shape is never fast."""
    def spec(n, decay, scale):
        return al.tail_losses(scale * torch.exp(-decay * torch.arange(n, dtype=torch.float64)))
    return {"sensitive": dict(m=48, n=32, losses=spec(32, 0.05, 3.0)),
            "easy": dict(m=48, n=32, losses=spec(32, 0.6, 3.0)),
            "slow": dict(m=16, n=40, losses=spec(16, 0.1, 1.0))}


def _timer(m, n, r):
    """A machine model: dense costs mn, factored r(m + n) plus overhead; the 16×40 shape is never faster."""
    if r is None:
        return float(m * n)
    return r * (m + n) + (1e9 if (m, n) == (16, 40) else 64.0)


def test_tail_losses_are_what_truncation_leaves():
    s = torch.tensor([3.0, 2.0, 1.0])
    assert al.tail_losses(s).tolist() == [14.0, 5.0, 1.0, 0.0]


def test_fast_ranks_bisect_to_the_crossing_and_respect_the_parameter_break_even():
    fast = al.fast_ranks([(48, 32), (16, 40), (48, 32)], _timer)
    brute = max(r for r in range(al.max_saving_rank(48, 32) + 1) if r == 0 or _timer(48, 32, r) < _timer(48, 32, None))
    assert fast == {(48, 32): brute, (16, 40): 0} and 0 < brute <= al.max_saving_rank(48, 32)
    assert al.factored_params(48, 32, al.max_saving_rank(48, 32)) < 48 * 32 <= al.factored_params(48, 32, al.max_saving_rank(48, 32) + 1)
    seconds = al.gemm_seconds(64, 64, None, tokens=8, repeats=3)                # the real timer runs
    assert seconds > 0 and al.gemm_seconds(64, 64, 4, tokens=8, repeats=3) > 0


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_allocation_meets_the_budget_and_never_factorises_a_slower_layer(ratio):
    layers, fast = _layers(), al.fast_ranks([(d["m"], d["n"]) for d in _layers().values()], _timer)
    budget = al.budget_for(layers, ratio)
    ranks = al.allocate(layers, budget, fast)
    used = al.allocated_params(layers, ranks)
    assert used <= budget and budget - used < al.factored_params(48, 32, 1)      # exact up to one rank unit
    assert ranks["slow"] is None                                                  # never factored: never faster
    assert all(r is None or 1 <= r <= fast[layers[k]["m"], layers[k]["n"]] for k, r in ranks.items())
    assert ranks["sensitive"] is None or ranks["easy"] is not None and ranks["sensitive"] > ranks["easy"]
    with pytest.raises(ValueError, match="below the"):
        al.allocate(layers, 16 * 40, fast)


def test_greedy_allocation_is_within_one_step_of_the_exhaustive_optimum():
    layers = {k: dict(d, losses=d["losses"][:9]) for k, d in _layers().items() if k != "slow"}
    fast = {(48, 32): 8}
    budget = al.factored_params(48, 32, 7)
    ranks = al.allocate(layers, budget, fast)
    loss = lambda rs: sum(0.0 if r is None else float(layers[k]["losses"][r]) for k, r in rs.items())   # noqa: E731
    best = min(loss(dict(zip(layers, combo))) for combo in itertools.product(range(1, 9), repeat=2)
               if al.allocated_params(layers, dict(zip(layers, combo))) <= budget)
    largest_step = max(float(d["losses"][r] - d["losses"][r + 1]) for d in layers.values() for r in range(8))
    assert loss(ranks) <= best + largest_step and al.allocated_params(layers, ranks) <= budget


def _calibrated_layer(m=24, n=16, tokens=400):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, n, generator=g, dtype=torch.float64) * torch.logspace(0, 1.5, n, dtype=torch.float64)   # anisotropic inputs
    stats = CalibrationStats(n)
    stats.update(x)
    return w, x, stats


def test_whitened_singular_values_are_the_calibration_errors_at_every_rank():
    w, x, stats = _calibrated_layer()
    d = decompose(w.float(), "svdllm", stats)
    tails = al.tail_losses(d["s"])
    for r in (2, 5, 9):
        u = (d["u"][:, :r] * d["s"][:r]).double()
        vh = d["vh"][:r].double() @ d["inv"].double()                                   # Vᵀ·L⁻¹
        err = float(((x @ (w - u @ vh).T) ** 2).sum()) / len(x)
        assert err == pytest.approx(float(tails[r]), rel=1e-3)


def test_closed_form_update_lowers_the_calibration_error_of_plain_truncation():
    w, x, stats = _calibrated_layer()
    gram = al.gram_of(stats)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = 5
    u0, vh_r = u[:, :r] * s[:r], vh[:r]
    updated = al.closed_form_update(w, vh_r, gram)
    before, after = al.calibration_error(w, u0, vh_r, gram), al.calibration_error(w, updated, vh_r, gram)
    assert after < 0.9 * before
    reference = torch.linalg.lstsq((x @ vh_r.T), x @ w.T).solution.T                   # float64 least squares
    assert torch.allclose(al.closed_form_update(w, vh_r, gram, ridge=0.0), reference, atol=1e-8, rtol=1e-8)
    assert torch.allclose(updated, reference, atol=1e-3, rtol=1e-3)                      # the default jitter moves it little
    d = decompose(w.float(), "svdllm", stats)                                           # whitened truncation: already optimal
    vh_w = (d["vh"][:r].double() @ d["inv"].double())
    u_w = (d["u"][:, :r] * d["s"][:r]).double()
    again = al.closed_form_update(w, vh_w, gram)
    assert al.calibration_error(w, again, vh_w, gram) == pytest.approx(al.calibration_error(w, u_w, vh_w, gram), rel=1e-4)


def test_compress_allocated_meets_the_budget_and_its_update_is_a_no_op_after_whitening(tiny):
    import copy

    from geomlib.calabi.svd import OptimizedCYModelUtils, collect_calibration
    model, tok = tiny
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics)[:40])
    ids = tok(text, return_tensors="pt").input_ids[:, :1024].view(4, 256)           # more tokens than any layer's width
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    calib = collect_calibration(model, [dict(input_ids=ids)], names)
    with torch.no_grad():
        dense_logits = model(ids).logits
    shapes = {(m.out_features, m.in_features) for n, m in model.named_modules() if n in names}
    fast = {s: al.max_saving_rank(*s) for s in shapes}                        # every saving rank counts as fast here
    out = {}
    for update in (False, True):
        m = copy.deepcopy(model)
        before = OptimizedCYModelUtils.count_parameters(m)
        ranks = al.compress_allocated(m, 0.3, calib, fast, update=update, min_features=16)
        after = OptimizedCYModelUtils.count_parameters(m)
        with torch.no_grad():
            logits = m(ids).logits
        assert torch.isfinite(logits).all() and any(r is not None for r in ranks.values())
        out[update] = float((logits - dense_logits).pow(2).mean())
    layers = al.spectra(model, calib, 16)
    assert after <= before and al.allocated_params(layers, ranks) <= al.budget_for(layers, 0.3)
    assert out[True] == pytest.approx(out[False], rel=0.02)     # after whitened truncation the refit is (nearly) a no-op


def test_refit_to_dense_undoes_upstream_error(tiny):
    """On its calibration text the refit brings the compressed model closer to the dense one, whatever the
    truncation; on held-out text it helps plain truncation (whether it helps whitened truncation there is
    notebook 11's to measure on SmolLM2)."""
    import copy

    from pydoc_data.topics import topics

    from geomlib.calabi.svd import OptimizedCYModelUtils, collect_calibration
    model, tok = tiny
    keys = sorted(topics)
    calib_ids = tok("\n\n".join(topics[k] for k in keys[:60:2]), return_tensors="pt").input_ids[:, :2048].view(8, 256)
    eval_ids = tok("\n\n".join(topics[k] for k in keys[1:60:2]), return_tensors="pt").input_ids[:, :512].view(2, 256)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    calib = collect_calibration(model, [dict(input_ids=calib_ids)], names)
    for method in ("svdllm", "plain"):
        compressed = copy.deepcopy(model)
        OptimizedCYModelUtils.replace_linear_layers(compressed, 0.5, min_features=16, method=method, calib=calib)
        with torch.no_grad():
            gap = lambda ids: float((compressed(ids).logits - model(ids).logits).pow(2).mean())   # noqa: E731
            before = gap(calib_ids[:2]), gap(eval_ids)
            n = al.refit_to_dense(model, compressed, [dict(input_ids=calib_ids[i:i + 2]) for i in range(0, 8, 2)])
            after = gap(calib_ids[:2]), gap(eval_ids)
        assert n == 14 and after[0] < 0.8 * before[0], (method, before, after)
        if method == "plain":
            assert after[1] < 0.9 * before[1], (before, after)


def test_allocation_by_type_keeps_each_kind_at_the_ratio_and_moves_rank_across_depth_only():
    def spec(decay):
        return al.tail_losses(3.0 * torch.exp(-decay * torch.arange(32, dtype=torch.float64)))
    layers = {f"layers.{i}.{kind}": dict(m=48, n=32, losses=spec(decay * (i + 1)))
              for i in range(3) for kind, decay in (("q_proj", 0.05), ("down_proj", 0.5))}
    fast = {(48, 32): al.max_saving_rank(48, 32)}
    ranks = al.allocate_by_type(layers, 0.3, fast)
    for kind in ("q_proj", "down_proj"):
        group = {k: d for k, d in layers.items() if k.endswith(kind)}
        used = al.allocated_params(group, {k: ranks[k] for k in group})
        assert al.budget_for(group, 0.3) - al.factored_params(48, 32, 1) < used <= al.budget_for(group, 0.3)
    # within a kind, the layer whose spectrum falls slowest (layers.0) keeps the most rank (dense: all of it)
    kept = {k: float("inf") if r is None else r for k, r in ranks.items()}
    assert kept["layers.0.q_proj"] >= kept["layers.1.q_proj"] >= kept["layers.2.q_proj"]
    assert kept["layers.0.down_proj"] >= kept["layers.1.down_proj"] >= kept["layers.2.down_proj"]
    # across all layers at once, the greedy hands q_proj's budget to down_proj's easier spectra, or the reverse
    together = al.allocate(layers, al.budget_for(layers, 0.3), fast)
    assert together != ranks


def test_relative_losses_are_scale_free():
    layers = _layers()
    scaled = {k: dict(d, losses=d["losses"] * (1000.0 if k == "easy" else 1.0)) for k, d in layers.items()}
    fast = al.fast_ranks([(d["m"], d["n"]) for d in layers.values()], _timer)
    budget = al.budget_for(layers, 0.3)
    assert al.allocate(al.relative(scaled), budget, fast) == al.allocate(al.relative(layers), budget, fast)
    assert al.allocate(scaled, budget, fast) != al.allocate(layers, budget, fast)       # raw losses follow the scale
    assert all(float(d["losses"][0]) == 1.0 for d in al.relative(scaled).values())

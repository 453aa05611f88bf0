"""The ledgers of notebooks 01–05: metrics, claims and verdict sentences follow the numbers given."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from llgbm.lab.ledgers import dataset, delta_caching, delta_only, differentiable_delta, multitask


def _silhouettes(fam_delta: float, fam_weights: float) -> pd.DataFrame:
    return pd.DataFrame({"by family": [fam_delta, 0.2, fam_weights], "by task": [0.5, 0.4, 0.1]},
                        index=["delta, generic probes", "delta, domain probes", "flattened LoRA weights"])


@pytest.mark.parametrize("fam_delta, fam_weights, verdict", [(0.6, -0.04, "reproduced"), (0.2, -0.04, "not reproduced"),
                                                             (0.5, 0.55, "not reproduced")])
def test_delta_caching_claim_follows_the_silhouettes_and_the_shuffled_null(fam_delta, fam_weights, verdict):
    D = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    timing = dict(speedup=250.0, compute_s=0.5, hit_s=0.002, max_abs_diff=0.0)
    dup = dict(identical=0, pairs=3, closest_max_abs_diff=0.7)
    e = delta_caching.entry(_silhouettes(fam_delta, fam_weights), timing, dup, D, n_final=3, n_families=2, null=0.3)
    assert e.claims[0][2] == verdict and e.metrics["silhouette_null95_family"] == 0.3
    assert ("not above the 0.300" in e.verdict) == (fam_delta <= 0.3)
    assert e.metrics["silhouette_family"] == fam_delta and e.metrics["silhouette_weights_family"] == fam_weights
    assert e.metrics["n_adapters"] == 3 and e.metrics["delta_norm_mean"] == pytest.approx((5 + 1 + 10) / 3)
    assert e.metrics["cache_hit_ms"] == pytest.approx(2.0) and "250× faster" in e.verdict and "from 1 to 10" in e.verdict


def test_dataset_verdict_names_a_zero_target_and_a_leak():
    train = SimpleNamespace(rows=[1] * 6, tasks=["a", "b", "c"])
    held = SimpleNamespace(rows=[1] * 2, tasks=["d"])
    layout = SimpleNamespace(n_tokens=40, token_shape=(10, 130))
    kw = dict(roundtrip=0.0, delta_diff=1e-6, delta_cos=0.999999, cos_other=0.2, zero_fraction=0.1, delta_dim=576,
              prompts_per_item=16, load_s=0.3)
    ok = dataset.entry(train, held, layout, set(), zero_pred_mse=0.9, **kw)
    assert "non-zero" in ok.verdict and "0 of them" in ok.verdict and ok.metrics["heldout_leak"] == 0
    assert ok.metrics["token_rows"] == 10 and ok.metrics["tokens_per_checkpoint"] == 40 and ok.claims == []
    bad = dataset.entry(train, held, layout, {"d"}, zero_pred_mse=0.0, **kw)
    assert "ZERO" in bad.verdict and "1 of them" in bad.verdict and bad.metrics["heldout_leak"] == 1


def _timings(hooks: float) -> pd.Series:
    return pd.Series({"merged weights, forward": 1.0, "hooks, forward": hooks, "functional_call, forward": 1.5,
                      "hooks, forward + backward": 3.0 * hooks, "hooks, 4 adapters in one forward": 2.0, "4 merged forwards": 4.0})


@pytest.mark.parametrize("hooks, target", [(1.2, "met"), (1.4, "not met")])
def test_differentiable_delta_claims(hooks, target):
    equality = pd.Series({"hooks vs peft": 1e-6, "functional_call vs peft": 2e-6, "base (no LoRA) vs peft": 0.5})
    grads = pd.Series({"block 0": 0.1, "block 1": 0.01})
    flow = dict(base_params_with_grad=0, loss_before=1.0, loss_after=0.9)
    e = differentiable_delta.entry(equality, grads, flow, _timings(hooks), 4)
    assert [c[2] for c in e.claims] == ["verified", target]
    assert e.metrics["functional_overhead_ratio"] == pytest.approx(hooks) and e.metrics["batched_over_merged_4"] == 0.5
    assert e.metrics["backward_over_forward"] == pytest.approx(3.0) and "no base parameter" in e.verdict
    broken = differentiable_delta.entry(equality, grads, dict(flow, loss_after=1.1), _timings(hooks), 4)
    assert broken.claims[0][2] == "not verified"


def test_multitask_terms_and_verdict():
    n = 20
    history = dict(loss=list(np.linspace(2, 1, n)), weight=list(np.linspace(1, 0.5, n)), delta=[0.9] * n, seconds=[0.5] * n)
    terms = multitask.loss_terms(history)
    assert terms.loc["weight", "first steps"] == pytest.approx(np.mean(np.linspace(1, 0.5, n)[:2]))
    assert terms.loc["delta", "change"] == pytest.approx(0.0)
    ev = {"t": dict(correct=np.array([1.0, 0.0]), delta_cos=0.3)}
    cos = pd.Series({"training tasks (fit)": 0.8, "held-out tasks": 0.3})
    e = multitask.entry(history, terms, cos, ev, ["t"])
    assert "they do not both fall" in e.verdict and e.metrics["steps"] == n and e.metrics["heldout_acc"] == 0.5
    history["delta"] = list(np.linspace(0.9, 0.5, n))
    assert "both fall" in multitask.entry(history, multitask.loss_terms(history), cos, ev, ["t"]).verdict


def test_delta_only_claim_follows_the_paired_ci_and_names_diverged_runs():
    from llgbm.eval import compare
    rng, held = np.random.default_rng(0), ["t1", "t2", "t3"]

    def scores(ll):
        return {t: {"correct": (rng.random(30) < 0.5).astype(float), "loglik": ll + 0.05 * rng.standard_normal(30),
                    "delta_cos": [0.2]} for t in held}
    ref = {"base": scores(-3.0), "teacher": scores(-1.0)}
    levels = {delta_only.BASELINE: -2.8, delta_only.SHORT: -2.5, delta_only.LONG: -2.2}
    evals = {(m, s): scores(ll) for m, ll in levels.items() for s in (0, 1, 2)}
    hist = {k: {"loss": [1.0] * 10 + [0.5] * 10} for k in evals} | {(delta_only.LONG, 2): {"loss": [1.0] * 10 + [3.0] * 10}}
    table, frame = compare.objective_table(evals, ref, held, hist), compare.seed_frame(evals, ref, held, hist)
    tests = compare.paired_tests(evals, held, list(delta_only.PAIRS))
    steps = {delta_only.BASELINE: 1000, delta_only.SHORT: 80, delta_only.LONG: 160}
    e = delta_only.entry(table, tests, frame, steps=steps, seeds=[0, 1, 2], train_seconds=9.0, plateau=0.001)
    assert e.claims[0][2] == "supported" and e.metrics["gap_recovery_long"] == pytest.approx(0.4, abs=0.02)
    assert e.metrics["n_seeds"] == 3 and e.metrics["diverged_long"] == 1
    assert "better than its own 80-step run" in e.verdict and "plateaued" in e.verdict
    assert "delta-only, long seed 2: training loss ends above its start" in e.verdict
    assert "**not plateaued**" in delta_only.entry(table, tests, frame, steps=steps, seeds=[0, 1, 2], train_seconds=9.0,
                                                   plateau=0.05).verdict


def test_tables_carry_stable_keys_and_show_labels(tmp_path, monkeypatch):
    from llgbm.eval import compare
    from llgbm.notebook.report import NotebookReport
    x = np.random.default_rng(0).normal(size=20)
    scores = {m: {"t": dict(correct=(x > off - 1.5).astype(float), loglik=x - off)} for m, off in (("base", 2.0), ("gen", 1.0), ("teacher", 0.0))}
    table = compare.method_table(scores, "base", "teacher", ["t"])
    assert list(table.columns)[:3] == ["n_seeds", "exact_match", "exact_match_std"]
    assert {"gap_acc", "gap_acc_lo", "gap_acc_hi", "gap_loglik", "gap_loglik_lo", "gap_loglik_hi", "gap_loglik_item_lo"} <= set(table.columns)
    assert table.loc["teacher", "gap_loglik"] == pytest.approx(1.0) and table.loc["base", "gap_loglik"] == pytest.approx(0.0)
    shown = compare.labelled(table)
    assert "gap rec. gold log-lik 95% CI high (seeds·tasks)" in shown.columns and "gap rec. gold log-lik 95% CI low (items only)" in shown.columns
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))
    rep = NotebookReport("00_baseline", "smoke")
    rep.table(table, "x")
    text = (rep.dir / "x.md").read_text()
    assert "gap rec. gold log-lik" in text and "gap_loglik" not in text and "| n/a" in text     # one run: no spread
    evals = {("gen", 0): scores["gen"], ("gen", 1): scores["gen"], ("base", 0): scores["base"]}
    tests = compare.paired_tests(evals, ["t"], [("gen", "base")])
    assert {"diff_loglik", "diff_loglik_lo", "diff_loglik_hi", "diff_acc", "diff_loglik_item_lo"} <= set(tests.columns)
    assert tests.iloc[0]["diff_loglik"] == pytest.approx(1.0)

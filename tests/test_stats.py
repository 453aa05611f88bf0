"""The statistics every comparison uses, against small cases computed by hand."""
import numpy as np
import pytest
import torch

from llgbm.core import stats
from llgbm.eval import compare
from llgbm.generator.losses import MultiTaskLoss, delta_loss


def test_pooled_and_task_cos_follow_the_task_order():
    scores = {"a": {"loglik": [1.0, 2.0], "delta_cos": [0.2, 0.4]}, "b": {"loglik": [3.0], "delta_cos": [0.9]}}
    assert stats.pooled(scores, "loglik", ["b", "a"]).tolist() == [3.0, 1.0, 2.0]
    assert np.allclose(stats.task_delta_cos(scores, ["a", "b"]), [0.3, 0.9])
    with pytest.raises(KeyError, match="no scores for task"):
        stats.pooled(scores, "loglik", ["c"])


def test_sign_flip_test_is_exact_on_few_pairs():
    a = np.arange(1, 9, dtype=float)
    # All 8 differences positive: only the all-plus and all-minus sign patterns are as extreme.
    assert stats.paired_permutation_test(a, a - 1) == pytest.approx(2 / 2 ** 8)
    assert stats.paired_permutation_test(a, a) == 1.0
    # Differences that cancel are not significant.
    assert stats.paired_permutation_test([1, -1, 1, -1], [0, 0, 0, 0]) == 1.0
    # d = (3, 1, -1), |mean| 1: by hand, 6 of the 8 sign patterns reach it (all but +-+ and -+-)
    assert stats.paired_permutation_test([3, 1, -1], [0, 0, 0]) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="no pairs"):
        stats.paired_permutation_test([], [])


def test_comparison_verdict_names_disagreeing_metrics():
    v = stats.comparison_verdict
    assert v({"cos": (0.1, 0.3), "acc": (-0.01, 0.02)}) == "supported"
    assert v({"cos": (-0.3, -0.1), "acc": (-0.01, 0.02)}) == "refuted"
    assert v({"cos": (-0.1, 0.1)}).startswith("inconclusive")
    mixed = v({"cos": (0.1, 0.3), "log-lik": (-2.0, -1.5), "acc": (0.02, 0.07)})
    assert mixed == "mixed: better on cos, acc; worse on log-lik"
    with pytest.raises(ValueError, match="no metrics"):
        v({})


def test_bootstrap_ci_brackets_the_mean():
    values = np.random.default_rng(0).normal(1.0, 1.0, 400)
    lo, hi = stats.bootstrap_ci(values)
    # the normal-theory 95% interval is mean ± 1.96·σ/√n = ± 0.098
    assert lo < values.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.15)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_gap_recovery_by_hand():
    base, teacher = np.array([0.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])
    # gap = mean(teacher) − mean(base) = 1 − 0.5 = 0.5; generated mean 0.75 → (0.75 − 0.5) / 0.5 = 0.5
    point, lo, hi = stats.gap_recovery(base, np.array([1.0, 0.0, 1.0, 1.0]), teacher)
    assert point == pytest.approx(0.5) and lo <= point <= hi
    assert stats.gap_recovery(base, base, teacher)[0] == 0.0 and stats.gap_recovery(base, teacher, teacher)[0] == 1.0
    # log-likelihoods (negative): base −4, teacher −1, generated −3 → (−3 + 4) / (−1 + 4) = 1/3
    assert stats.gap_recovery([-4.0] * 5, [-3.0] * 5, [-1.0] * 5)[0] == pytest.approx(1 / 3)
    # no gap: the ratio is undefined, and said so
    assert np.isnan(stats.gap_recovery([1.0, 1.0], [0.0, 1.0], [1.0, 1.0])[0])
    with pytest.raises(ValueError, match="align"):
        stats.gap_recovery([1.0], [1.0, 2.0], [1.0])


def test_paired_diff_ci_by_hand():
    mean, lo, hi = stats.paired_diff_ci([3.0, 5.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0])   # differences 2, 3, 4, 5
    assert mean == pytest.approx(3.5) and 2.0 <= lo < 3.5 < hi <= 5.0
    assert stats.paired_diff_ci([1.0, 1.0], [1.0, 1.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="align"):
        stats.paired_diff_ci([1.0, 2.0], [1.0])


def test_cosine_silhouette_separates_clean_clusters():
    X = np.array([[1, 0.01], [1, 0.02], [0.01, 1], [0.02, 1]])
    assert stats.cosine_silhouette(X, [0, 0, 1, 1]) > 0.9
    assert stats.cosine_silhouette(X, [0, 1, 0, 1]) < 0


def test_delta_loss_and_multitask_loss_by_hand():
    pred, target = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    # ‖(−1, 1)‖² / ‖(2, 0)‖² = 2 / 4
    assert delta_loss(pred, target).item() == pytest.approx(0.5)
    tokens_pred, tokens_target = torch.zeros(1, 2, 1, 2), torch.ones(1, 2, 1, 2)   # weight loss: MSE 1 per token
    loss = MultiTaskLoss(lambda_w=2.0, lambda_d=3.0)
    total, terms = loss(tokens_pred, tokens_target, pred, target)
    assert terms["weight"].item() == pytest.approx(1.0) and terms["delta"].item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(2.0 * 1.0 + 3.0 * 0.5)
    weighted = MultiTaskLoss(1.0, 0.0, token_weights=torch.tensor([2.0, 0.0]))     # token 1 ignored, token 0 doubled
    assert weighted(tokens_pred, tokens_target)[0].item() == pytest.approx((2.0 + 0.0) / 2)
    with pytest.raises(ValueError, match="needs the generated and teacher deltas"):
        loss(tokens_pred, tokens_target)


def test_a_zero_weight_term_is_logged_but_not_differentiated():
    tokens_pred = torch.zeros(1, 2, 1, 2, requires_grad=True)
    pred = torch.tensor([[1.0, 1.0]], requires_grad=True)
    total, terms = MultiTaskLoss(lambda_w=0.0, lambda_d=1.0)(tokens_pred, torch.ones(1, 2, 1, 2), pred, torch.tensor([[2.0, 0.0]]))
    assert terms["weight"].item() == pytest.approx(1.0) and terms["weight"].grad_fn is None
    total.backward()
    assert tokens_pred.grad is None and pred.grad.tolist() == [[-0.5, 0.5]]    # d/dp ‖p − t‖²/‖t‖² = 2(p − t)/4


def test_compare_tables_by_hand():
    ref = {"base": {"t": {"correct": [0.0, 0.0], "loglik": [-4.0, -4.0]}},
           "teacher": {"t": {"correct": [1.0, 1.0], "loglik": [-2.0, -2.0]}}}
    evals = {("a", 0): {"t": {"correct": [1.0, 0.0], "loglik": [-3.0, -3.0]}},
             ("a", 1): {"t": {"correct": [1.0, 1.0], "loglik": [-2.0, -3.0]}},
             ("b", 0): {"t": {"correct": [0.0, 0.0], "loglik": [-4.0, -4.0]}}}
    mean = compare.seed_mean(evals, "a", ["t"])
    assert mean["t"]["correct"].tolist() == [1.0, 0.5] and mean["t"]["loglik"].tolist() == [-2.5, -3.0]
    frame = compare.seed_frame(evals, ref, ["t"]).set_index(["method", "seed"])
    assert frame.loc[("a", 0), "seed_gap_loglik"] == pytest.approx(0.5)      # (−3 + 4) / (−2 + 4)
    assert frame.loc[("a", 1), "exact_match"] == 1.0
    table = compare.objective_table(evals, ref, ["t"])
    assert table.loc["a", "gap_loglik"] == pytest.approx((-2.75 + 4) / 2)   # on seed-averaged items
    assert table.loc["a", "exact_match_mean"] == pytest.approx(0.75) and table.loc["b", "gap_acc"] == 0.0
    assert table.loc["a", "per_seed_gap_loglik"] == "0.500 / 0.750" and np.isnan(table.loc["b", "exact_match_std"])
    assert (table.loc["a", "gap_loglik_lo"], table.loc["a", "gap_loglik_hi"]) == (0.5, 0.75)      # the two seeds' values
    tests = compare.paired_tests(evals, ["t"], [("a", "b"), ("a", "missing")])
    assert list(tests.index) == ["a − b"] and tests.loc["a − b", "diff_loglik"] == pytest.approx(1.25)
    assert compare.verdict_of(tests.loc["a − b"]) == "supported"
    # a run whose loss ends above its start is flagged, counted, and left out by without_diverged
    hist = {("a", 1): {"loss": [1.0] * 10 + [2.0] * 10}, ("a", 0): {"loss": [2.0, 1.0]}}
    frame = compare.seed_frame(evals, ref, ["t"], hist)
    assert frame.diverged.tolist() == [False, True, False] and "above its start" in frame.diverged_reason[1]
    assert compare.objective_table(evals, ref, ["t"], hist).loc["a", "n_diverged"] == 1
    assert set(compare.without_diverged(evals, frame)) == {("a", 0), ("b", 0)}
    with pytest.raises(KeyError, match="no runs of method"):
        compare.seed_mean(evals, "c", ["t"])


def _width(iv):
    return iv.hi - iv.lo


@pytest.mark.parametrize("noise", ["seeds", "tasks"])
def test_hierarchical_interval_has_the_width_of_the_noise_it_resamples(noise):
    """Pure seed noise (each seed offset, items identical) or pure task noise (each task offset): the
    hierarchical 95% interval has the normal width 2·1.96·sd/√n of the noisy level, and the
    item-only interval, which leaves that level out, has none."""
    rng = np.random.default_rng(0)
    n = 60
    if noise == "seeds":
        offsets = rng.normal(0, 1, n)
        runs, sizes = offsets[:, None] + np.zeros((n, 8 * 16)), [16] * 8
    else:
        offsets = rng.normal(0, 1, n)
        runs, sizes = np.repeat(offsets, 16)[None], [16] * n
    want = 2 * 1.96 * offsets.std(ddof=1) / np.sqrt(n)
    iv = stats.hierarchical_bootstrap({"a": runs}, sizes, lambda m: m["a"], n_boot=4000)
    assert iv.level == "seeds·tasks" and iv.mean == pytest.approx(offsets.mean())
    assert _width(iv) == pytest.approx(want, rel=0.15)
    items = stats.hierarchical_bootstrap({"a": runs}, sizes, lambda m: m["a"], levels=("items",))
    assert items.level == "items" and _width(items) < 1e-9


def test_hierarchical_interval_with_pure_item_noise_matches_the_item_bootstrap():
    """Under pure item noise the headline interval (tasks resampled, their items as blocks) and the
    item-only one both have the right width; resampling items again inside resampled tasks counts
    the item noise twice: √2 too wide, which is why it is not the headline."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 8 * 64)
    want = 2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    iv = stats.hierarchical_bootstrap({"a": x}, [64] * 8, lambda m: m["a"], n_boot=4000)
    items = stats.hierarchical_bootstrap({"a": x}, [64] * 8, lambda m: m["a"], levels=("items",), n_boot=4000)
    both = stats.hierarchical_bootstrap({"a": x}, [64] * 8, lambda m: m["a"], levels=stats.LEVELS, n_boot=4000)
    assert _width(iv) == pytest.approx(want, rel=0.2) and _width(items) == pytest.approx(want, rel=0.15)
    assert _width(both) == pytest.approx(np.sqrt(2) * want, rel=0.15) and both.level == "seeds·tasks·items"


def test_paired_difference_cancels_shared_task_noise():
    """Two methods that share task offsets: their difference has no task noise, so its interval
    is far narrower than either method's own."""
    rng = np.random.default_rng(2)
    tasks = np.repeat(rng.normal(0, 1, 20), 16)
    a, b = tasks + 0.5 + rng.normal(0, 0.05, tasks.size), tasks + rng.normal(0, 0.05, tasks.size)
    d = stats.hier_difference(a, b, [16] * 20)
    own = stats.hierarchical_bootstrap({"a": a}, [16] * 20, lambda m: m["a"])
    assert d.mean == pytest.approx(0.5, abs=0.02) and d.lo > 0.45 and _width(d) < _width(own) / 10


def test_hierarchical_gap_recovery_by_hand_and_bad_input():
    base, teacher = np.zeros(8), np.full(8, 2.0)
    gen = np.array([[1.0] * 8, [0.5] * 8])          # two seeds: 0.5 and 0.25 of the gap
    iv = stats.hier_gap_recovery(gen, base, teacher, [4, 4])
    assert iv.mean == pytest.approx(0.375) and iv.lo == pytest.approx(0.25) and iv.hi == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs 7 items"):
        stats.hier_gap_recovery(gen, base, teacher, [4, 3])
    with pytest.raises(ValueError, match="levels must include 'tasks' or 'items'"):
        stats.hier_difference(base, teacher, [8], levels=("seeds",))
    with pytest.raises(ValueError, match="at least one item"):
        stats.item_weights((4, 0), 10, 0)


def test_divergence_flags_each_rule_and_names_it():
    assert stats.divergence(1.0, 0.5, 0.2, floor=-1.0) == (False, "")
    assert "above its start" in stats.divergence(1.0, 1.2, 0.2, floor=-1.0).reason
    assert "non-finite" not in stats.divergence(1.0, float("nan"), None, floor=-1.0).reason
    assert stats.divergence(1.0, float("nan"), None, floor=-1.0).flagged
    assert "floor -1" in stats.divergence(None, None, -4.8, floor=-1.0).reason
    assert not stats.divergence(None, None, None, floor=-1.0).flagged


def test_plateau_drop_by_hand():
    assert stats.plateau_drop([4.0] * 10 + [2.0] * 10 + [1.0] * 10 + [0.9] * 5 + [0.8] * 5, window=0.125) == pytest.approx(0.1 / 0.9)
    assert stats.plateau_drop([1.0] * 100) == 0.0 and np.isnan(stats.plateau_drop([1.0]))

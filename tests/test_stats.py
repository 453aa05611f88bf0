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
    tests = compare.paired_tests(evals, ["t"], [("a", "b"), ("a", "missing")])
    assert list(tests.index) == ["a − b"] and tests.loc["a − b", "diff_loglik"] == pytest.approx(1.25)
    with pytest.raises(KeyError, match="no runs of method"):
        compare.seed_mean(evals, "c", ["t"])

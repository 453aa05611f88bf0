"""The statistics behind notebooks 04b and 05: pooling, the paired sign-flip test, verdicts."""
import numpy as np
import pytest

from llgbm import experiment


def test_pooled_and_task_cos_follow_the_task_order():
    scores = {"a": {"loglik": [1.0, 2.0], "delta_cos": [0.2, 0.4]}, "b": {"loglik": [3.0], "delta_cos": [0.9]}}
    assert experiment.pooled(scores, "loglik", ["b", "a"]).tolist() == [3.0, 1.0, 2.0]
    assert np.allclose(experiment.task_delta_cos(scores, ["a", "b"]), [0.3, 0.9])


def test_sign_flip_test_is_exact_on_few_pairs():
    a = np.arange(1, 9, dtype=float)
    # All 8 differences positive: only the all-plus and all-minus sign patterns are as extreme.
    assert experiment.paired_permutation_test(a, a - 1) == pytest.approx(2 / 2 ** 8)
    assert experiment.paired_permutation_test(a, a) == 1.0
    # Differences that cancel are not significant.
    assert experiment.paired_permutation_test([1, -1, 1, -1], [0, 0, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="no pairs"):
        experiment.paired_permutation_test([], [])


def test_comparison_verdict_names_disagreeing_metrics():
    v = experiment.comparison_verdict
    assert v({"cos": (0.1, 0.3), "acc": (-0.01, 0.02)}) == "supported"
    assert v({"cos": (-0.3, -0.1), "acc": (-0.01, 0.02)}) == "refuted"
    assert v({"cos": (-0.1, 0.1)}).startswith("inconclusive")
    mixed = v({"cos": (0.1, 0.3), "log-lik": (-2.0, -1.5), "acc": (0.02, 0.07)})
    assert mixed == "mixed: better on cos, acc; worse on log-lik"
    with pytest.raises(ValueError, match="no metrics"):
        v({})

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from clipcache.evaluation import (
    expected_calibration_error,
    mean_ci,
    mean_per_class_recall,
    top_k_accuracy,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    proba = scipy.special.softmax(rng.normal(size=(300, 8)) * 2, axis=1)
    y = rng.integers(0, 8, 300)
    return proba, y


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_matches_sklearn(scored, k):
    proba, y = scored
    assert top_k_accuracy(proba, y, k) == pytest.approx(top_k_accuracy_score(y, proba, k=k, labels=range(8)))


def test_top_k_with_fewer_classes_than_k_is_one():
    assert top_k_accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1, 0]), k=5) == 1.0


def test_mean_per_class_recall_is_balanced_accuracy(scored):
    proba, y = scored
    pred = proba.argmax(axis=1)
    assert mean_per_class_recall(pred, y) == pytest.approx(balanced_accuracy_score(y, pred))


def test_ece_matches_straightforward_loop(scored):
    proba, y = scored
    conf, pred = proba.max(axis=1), proba.argmax(axis=1)
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    assert expected_calibration_error(proba, y) == pytest.approx(ref, abs=1e-12)


def test_ece_of_perfectly_calibrated_onehot_is_zero():
    assert expected_calibration_error(np.eye(4), np.arange(4)) == 0.0


def test_mean_ci_matches_scipy_t_interval():
    values = [0.61, 0.64, 0.58, 0.66]
    mean, half = mean_ci(values)
    lo, hi = scipy.stats.t.interval(0.95, 3, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((hi - lo) / 2)


def test_mean_ci_of_one_seed_has_zero_width():
    assert mean_ci([0.5]) == (0.5, 0.0)


def test_top_k_breaks_ties_at_random_in_expectation():
    proba = np.array([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.4], [1.0, 0.0, 0.0, 0.0]])
    y = np.array([0, 1, 2])
    # row 0: tied with one other for first -> 1/2 in top-1, 1 in top-2
    # row 1: one class higher, tied with two others -> 0 in top-1, 1/3 in top-2, 2/3 in top-3
    # row 2: true class scores 0 tied with two others, one higher -> 0, 1/3 in top-2
    assert top_k_accuracy(proba, y, 1) == pytest.approx((0.5 + 0 + 0) / 3)
    assert top_k_accuracy(proba, y, 2) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert top_k_accuracy(proba, y, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert top_k_accuracy(proba, y, 4) == 1.0

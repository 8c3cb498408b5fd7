import numpy as np

from clipcache.classifiers._search import alpha_intervals, correct_over_alpha


def _brute(base, delta, y, alphas):
    return np.array([np.sum((base + a * delta).argmax(axis=1) == y) for a in alphas])


def test_interval_counts_equal_brute_force_argmax():
    rng = np.random.default_rng(0)
    base, delta = rng.normal(size=(500, 7)), rng.normal(size=(500, 7))
    y = rng.integers(0, 7, 500)
    alphas = np.linspace(0, 5, 101)
    np.testing.assert_array_equal(correct_over_alpha(base, delta, y, alphas), _brute(base, delta, y, alphas))


def test_interval_of_a_sample_with_no_alpha_correct_is_empty():
    base = np.array([[0.0, 1.0]])
    delta = np.array([[0.0, 0.0]])
    lo, hi = alpha_intervals(base, delta, np.array([0]))
    assert (lo[0], hi[0]) == (np.inf, -np.inf)


def test_interval_bounds_are_the_crossing_points():
    base = np.array([[1.0, 0.0, 0.5]])  # true class 1 needs alpha >= 1 (vs 0) and alpha >= 0.5 (vs 2)
    delta = np.array([[0.0, 1.0, 0.0]])
    lo, hi = alpha_intervals(base, delta, np.array([1]))
    assert (lo[0], hi[0]) == (1.0, np.inf)

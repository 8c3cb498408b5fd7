"""TransductiveGDA: the EM steps against straight formulas, the validation guard, convergence, the text prior."""

import numpy as np
import pytest
import scipy.special

from clipcache.classifiers import GDAClassifier, TransductiveGDA
from clipcache.classifiers.transductive import _EM, UNLABELLED, GramCache, likelihood_guard


def _clusters(seed=0, d=8, shots=2, n_unlabelled=60, shift=0.0):
    """Three Gaussian classes; a few labelled rows, many unlabelled, and validation rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 2.0

    def draw(n, offset=0.0):
        y = np.repeat(np.arange(3), n)
        return (centres[y] + offset + rng.normal(size=(len(y), d))).astype(np.float32), y

    (Xl, yl), (Xu, yu), (Xv, yv) = draw(shots), draw(n_unlabelled, shift), draw(10)
    X = np.vstack([Xl, Xu])
    y = np.concatenate([yl, np.full(len(Xu), UNLABELLED)])
    return X, y, yu, Xv, yv


def test_transduction_keeps_the_given_labels_and_labels_every_row():
    X, y, _, Xv, yv = _clusters()
    clf = TransductiveGDA().fit(X, y, Xv, yv)
    labelled = y != UNLABELLED
    np.testing.assert_array_equal(clf.transduction_[labelled], y[labelled])
    assert clf.transduction_.shape == y.shape and set(clf.transduction_) <= {0, 1, 2}
    np.testing.assert_allclose(clf.label_distributions_.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X[~labelled]), clf.transduction_[~labelled])


def test_strength_zero_is_the_inductive_gda_of_the_labelled_rows():
    X, y, _, _, _ = _clusters(shots=4)
    labelled = y != UNLABELLED
    clf = TransductiveGDA(strength=0.0).fit(X, y)
    ref = GDAClassifier().fit(X[labelled], y[labelled])
    np.testing.assert_allclose(clf.coef_, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-4, atol=1e-4 * np.abs(ref.intercept_).max())


def _straight_step(Xl, yl, Xu, means, P, tau, w):
    """One E-step with (means, P) and the following M-step, written out (uniform priors, one-hot labelled rows)."""
    coef = means @ P
    b = np.log(1 / len(means)) - 0.5 * np.einsum("kd,kd->k", means, coef)
    z = scipy.special.softmax((Xu @ coef.T + b) / tau, axis=1)
    onehot = np.eye(len(means))[yl]
    counts = onehot.sum(0) + w * z.sum(0)
    return (onehot.T @ Xl + w * z.T @ Xu) / counts[:, None]


def test_one_em_iteration_equals_the_straight_formulas():
    X, y, _, _, _ = _clusters(shots=3, d=6)
    labelled = y != UNLABELLED
    Xl, yl, Xu = X[labelled].astype(np.float64), y[labelled], X[~labelled].astype(np.float64)
    em = _EM(X[labelled], yl, X[~labelled], 3, None, max_iter=1, tol=1e-12)
    em.tau = 2.5
    means, _, _, _, _ = em.run(strength=1.0)
    mu0 = np.stack([Xl[yl == k].mean(0) for k in range(3)])
    R = Xl - mu0[yl]
    S = R.T @ R
    P = 6 * np.linalg.inv(S + np.trace(S) / (len(Xl) - 1) * np.eye(6))
    expected = _straight_step(Xl, yl, Xu, mu0, P, 2.5, w=len(Xl) / len(Xu))
    np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)


def test_the_em_covariance_solve_equals_the_dense_solve():
    rng = np.random.default_rng(1)
    d = 64
    Xl = rng.normal(size=(6, d)).astype(np.float32)
    Xu = rng.normal(size=(100, d)).astype(np.float32)
    em = _EM(Xl, np.repeat(np.arange(3), 2), Xu, 3, None, 5, 1e-3, covariance="em")
    assert em.low_rank
    means, counts = rng.normal(size=(3, d)), rng.uniform(2, 5, 3)
    S = em.G_l + 0.4 * em.G_u - (means.T * counts) @ means
    np.testing.assert_allclose(em.solve(means, counts, 0.4, 3.0), np.linalg.solve(S + 3.0 * np.eye(d), means.T),
                               rtol=1e-6, atol=1e-9)


def test_em_converges_deterministically_and_helps_on_clustered_data():
    X, y, yu, Xv, yv = _clusters(seed=2, shots=1, n_unlabelled=80)
    a = TransductiveGDA(strength=1.0).fit(X, y)
    b = TransductiveGDA(strength=1.0).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.converged_ and 1 < a.n_iter_ <= a.max_iter + 1
    start = TransductiveGDA(strength=0.0).fit(X, y)
    labelled = y != UNLABELLED
    assert np.mean(a.transduction_[~labelled] == yu) > np.mean(start.transduction_[~labelled] == yu)


def test_em_never_lowers_validation_accuracy_below_its_start():
    # the unlabelled rows come from shifted classes, so EM pulls the means away from the validation data
    for seed in range(6):
        X, y, _, Xv, yv = _clusters(seed=seed, shots=3, shift=2.5)
        clf = TransductiveGDA(tolerance=0.0).fit(X, y, Xv, yv)
        chosen = list(clf.strength_grid_).index(clf.strength_)
        assert clf.search_accuracy_[chosen] >= clf.search_accuracy_[0]
        assert clf.search_nll_[chosen] <= clf.search_nll_[0]
        inductive = GDAClassifier().fit(X[y != UNLABELLED], y[y != UNLABELLED])
        assert clf.search_accuracy_[0] == inductive.score(Xv, yv)


def test_the_guard_keeps_the_start_unless_the_gain_exceeds_the_noise():
    X, y, _, Xv, yv = _clusters(seed=4, shots=3, shift=2.5)
    strict = TransductiveGDA(tolerance=1e6).fit(X, y, Xv, yv)
    assert strict.strength_ == 0.0 and strict.n_iter_ == 1


def _posterior(p_true, right):
    """Two-class posteriors of four rows: p_true on the true class (0), the rest on class 1 unless ``right``."""
    p = np.asarray(p_true, dtype=np.float64)
    return np.stack([p, 1 - p], axis=1) if right else np.stack([1 - p, p], axis=1)


def test_likelihood_guard_needs_an_nll_gain_beyond_its_paired_standard_error():
    y = np.zeros(4, dtype=np.int64)
    start = _posterior([0.6, 0.6, 0.6, 0.6], right=True)
    steady = _posterior([0.7, 0.7, 0.7, 0.7], right=True)  # the same gain on every row: se 0
    lucky = _posterior([0.99, 0.6, 0.6, 0.6], right=True)  # one row gains: mean 0.126, se 0.126
    chosen, nll, accuracy = likelihood_guard([start, lucky, steady], y, 1.0)
    assert chosen == 2
    np.testing.assert_allclose(nll, [-np.log(0.6), -(np.log(0.99) + 3 * np.log(0.6)) / 4, -np.log(0.7)])
    np.testing.assert_array_equal(accuracy, [1.0, 1.0, 1.0])
    gain = np.log(0.99) - np.log(0.6)
    assert likelihood_guard([start, lucky], y, 0.99)[0] == 1  # gain/4 > 0.99 * se = 0.99 * gain/4
    assert likelihood_guard([start, lucky], y, 1.01)[0] == 0  # gain/4 < 1.01 * se
    assert gain / 4 == pytest.approx(np.std([gain, 0, 0, 0], ddof=1) / 2)


def test_likelihood_guard_never_trades_accuracy_for_likelihood():
    y = np.zeros(4, dtype=np.int64)
    start = _posterior([0.51, 0.51, 0.51, 0.51], right=True)
    worse = np.vstack([_posterior([0.9, 0.9, 0.9], right=True), [[0.49, 0.51]]])  # NLL falls, one row now wrong
    assert likelihood_guard([start, worse], y, 0.0)[0] == 0
    assert likelihood_guard([start], y, 0.0)[0] == 0


def test_a_cache_shares_the_unlabelled_gram_and_changes_nothing():
    X, y, _, Xv, yv = _clusters(seed=5, shots=4)
    cache = GramCache()
    a = TransductiveGDA(covariance="em", cache=cache).fit(X, y, Xv, yv)
    key = cache._key
    b = TransductiveGDA(covariance="em", cache=cache).fit(X, y, Xv, yv)
    c = TransductiveGDA(covariance="em").fit(X, y, Xv, yv)
    assert cache._key == key
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_allclose(a.coef_, c.coef_, rtol=1e-6, atol=1e-6)


def test_text_prior_adds_lambda_tau_log_zero_shot():
    X, y, _, Xv, yv = _clusters(seed=6, shots=2)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, X.shape[1]))
    clf = TransductiveGDA(text_embeddings=text, prior_weight=0.7).fit(X, y, Xv, yv)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    weights = text / np.linalg.norm(text, axis=1, keepdims=True)
    log_prior = scipy.special.log_softmax(100.0 * unit @ weights.T, axis=1)
    gda = X @ clf.coef_.T + clf.intercept_
    expected = gda + 0.7 * clf.posterior_temperature_ * log_prior
    np.testing.assert_allclose(clf.logits(X), expected, rtol=1e-4, atol=1e-3)


def test_all_unlabelled_rows_raise():
    X, _, _, _, _ = _clusters()
    with pytest.raises(ValueError, match="every row is unlabelled"):
        TransductiveGDA().fit(X, np.full(len(X), UNLABELLED))

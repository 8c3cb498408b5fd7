import numpy as np
import pytest
import scipy.stats

from clipcache.classifiers import ClassMeanClassifier, LogitBiasFusion, ZeroShotClassifier
from clipcache.classifiers.fusion import uncertainty, zscore


def test_entropy_uncertainty_is_normalised_entropy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 6)).astype(np.float32) * 3
    p = scipy.special.softmax(z.astype(np.float64), axis=1)
    ref = scipy.stats.entropy(p, axis=1) / np.log(6)
    np.testing.assert_allclose(uncertainty(z, "entropy"), ref, rtol=1e-5)


def test_kurtosis_uncertainty_is_inverse_pearson_kurtosis():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20, 6)).astype(np.float32) * 3
    p = scipy.special.softmax(z.astype(np.float64), axis=1)
    ref = 1 / scipy.stats.kurtosis(p, axis=1, fisher=False)
    np.testing.assert_allclose(uncertainty(z, "kurtosis"), ref, rtol=1e-5)


def test_uniform_prediction_is_maximally_uncertain():
    np.testing.assert_allclose(uncertainty(np.zeros((2, 4), np.float32), "kurtosis"), [1.0, 1.0])


def test_zscore_matches_scipy():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(10, 5)).astype(np.float32)
    np.testing.assert_allclose(zscore(z), scipy.stats.zscore(z, axis=1), rtol=1e-5, atol=1e-6)


@pytest.fixture
def fused(blobs, text_weights):
    rng = np.random.default_rng(3)
    proj = rng.normal(size=(16, 6)).astype(np.float32)
    aux = lambda X: np.tanh(X @ proj)  # noqa: E731
    return {k: np.hstack([blobs[k], aux(blobs[k])]) for k in ("X", "Xv", "Xt")}


def test_fusion_logits_equal_reference_formula(blobs, text_weights, fused):
    est = LogitBiasFusion(aux_dim=6, base=ZeroShotClassifier(**text_weights), uncertainty="entropy", alpha=1.5,
                          power=0.5).fit(fused["X"], blobs["y"])
    base = ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"]).logits(blobs["Xt"]).astype(np.float64)
    bias = ClassMeanClassifier().fit(fused["X"][:, 16:], blobs["y"]).logits(fused["Xt"][:, 16:]).astype(np.float64)
    p = scipy.special.softmax(base, axis=1)
    psi = (scipy.stats.entropy(p, axis=1) / np.log(5)) ** 0.5
    ref = base + 1.5 * psi[:, None] * scipy.stats.zscore(bias, axis=1)
    np.testing.assert_allclose(est.logits(fused["Xt"]), ref, rtol=1e-5, atol=1e-4)


def test_fusion_search_equals_brute_force(blobs, text_weights, fused):
    alphas, powers = np.linspace(0, 6, 13), np.array([0.0, 0.5, 1.0, 2.0])
    est = LogitBiasFusion(aux_dim=6, base=ZeroShotClassifier(**text_weights), alpha_grid=alphas, power_grid=powers)
    est.fit(fused["X"], blobs["y"], fused["Xv"], blobs["yv"])
    grid = np.zeros((len(powers), len(alphas)))
    for i, power in enumerate(powers):
        for j, alpha in enumerate(alphas):
            probe = LogitBiasFusion(aux_dim=6, base=ZeroShotClassifier(**text_weights), alpha=alpha, power=power)
            grid[i, j] = probe.fit(fused["X"], blobs["y"]).score(fused["Xv"], blobs["yv"])
    np.testing.assert_allclose(est.search_accuracy_, grid, atol=1e-12)
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    assert (est.power_, est.alpha_) == (powers[i], alphas[j])

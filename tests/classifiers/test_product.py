"""ProductOfExperts: the sum of the experts' logits over their validation temperatures, written out."""

import numpy as np
import pytest

from clipcache.calibration import fit_temperature
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    ProductOfExperts,
    load_model,
    save_model,
)


def test_logits_are_the_experts_logits_over_their_validation_temperatures(blobs):
    X, y, Xv, yv, Xt = blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"], blobs["Xt"]
    poe = ProductOfExperts(experts=[GDAClassifier(), ClassMeanClassifier(), KNNClassifier(n_neighbors=3)])
    poe.fit(X, y, Xv, yv)
    experts = [GDAClassifier().fit(X, y), ClassMeanClassifier().fit(X, y), KNNClassifier(n_neighbors=3).fit(X, y)]
    temperatures = [fit_temperature(e.logits(Xv), yv) for e in experts]
    np.testing.assert_allclose(poe.expert_temperatures_, temperatures, rtol=1e-6)
    expected = sum(e.logits(Xt).astype(np.float64) / t for e, t in zip(experts, temperatures, strict=True))
    np.testing.assert_allclose(poe.logits(Xt), expected, rtol=1e-5, atol=1e-4)
    pooled = sum(e.logits(Xv).astype(np.float64) / t for e, t in zip(experts, temperatures, strict=True))
    assert poe.temperature_ == pytest.approx(fit_temperature(pooled, yv), rel=1e-5)


def test_without_validation_the_logits_are_summed(blobs):
    poe = ProductOfExperts().fit(blobs["X"], blobs["y"])
    expected = GDAClassifier().fit(blobs["X"], blobs["y"]).logits(blobs["Xt"]) + ClassMeanClassifier().fit(
        blobs["X"], blobs["y"]).logits(blobs["Xt"])
    np.testing.assert_allclose(poe.logits(blobs["Xt"]), expected, rtol=1e-6, atol=1e-5)
    assert poe.temperature_ == 1.0 and list(poe.expert_temperatures_) == [1.0, 1.0]


def test_centring_happens_once_before_the_experts(blobs):
    mean = blobs["X"].mean(axis=0)
    poe = ProductOfExperts(center=mean).fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])

    def cl2n(a):
        a = a - mean
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    plain = ProductOfExperts().fit(cl2n(blobs["X"]), blobs["y"], cl2n(blobs["Xv"]), blobs["yv"])
    assert all(e.center_ is None for e in poe.experts_)
    np.testing.assert_array_equal(poe.center_, mean.astype(np.float32))
    np.testing.assert_allclose(poe.logits(blobs["Xt"]), plain.logits(cl2n(blobs["Xt"])), rtol=1e-5, atol=1e-4)


class _TwoClasses:
    """A foreign estimator that always learns the classes 0 and 1."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def logits(self, X):
        return np.zeros((len(X), 2), dtype=np.float32)

    def get_params(self, deep=False):
        return {}


def test_an_expert_with_other_classes_is_refused(blobs):
    with pytest.raises(ValueError, match=r"_TwoClasses has classes \[0, 1\] but the support set has \[0, 1, 2, 3, 4\]"):
        ProductOfExperts(experts=[GDAClassifier(), _TwoClasses()]).fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    with pytest.raises(ValueError, match="non-empty list of estimators"):
        ProductOfExperts(experts=[]).fit(blobs["X"], blobs["y"])


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_a_saved_product_predicts_identically(tmp_path, blobs, suffix):
    poe = ProductOfExperts(center=blobs["X"].mean(axis=0)).fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    loaded, _ = load_model(save_model(poe, tmp_path / f"p{suffix}"))
    np.testing.assert_array_equal(loaded.expert_temperatures_, poe.expert_temperatures_)
    np.testing.assert_array_equal(loaded.predict_proba(blobs["Xt"]), poe.predict_proba(blobs["Xt"]))

import numpy as np
import pytest

from clipcache.classifiers import InvalidParameterError, KNNClassifier


def _reference_proba(X, y, Q, k, weights, n_classes=5):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Qn @ Xn.T
    out = np.zeros((len(Q), n_classes))
    for i in range(len(Q)):
        nn = np.argsort(-sims[i], kind="stable")[:k]
        for j in nn:
            out[i, y[j]] += 1.0 if weights == "uniform" else 1.0 / max(1 - sims[i, j], 1e-6)
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_votes_equal_brute_force(blobs, weights):
    clf = KNNClassifier(n_neighbors=5, weights=weights).fit(blobs["X"], blobs["y"])
    ref = _reference_proba(blobs["X"], blobs["y"], blobs["Xt"], 5, weights)
    np.testing.assert_allclose(clf.predict_proba(blobs["Xt"]), ref, atol=1e-5)


def test_inner_product_metric_uses_raw_features(blobs):
    X = blobs["X"] * np.linspace(0.5, 2, len(blobs["X"]), dtype=np.float32)[:, None]
    clf = KNNClassifier(n_neighbors=1, metric="ip").fit(X, blobs["y"])
    np.testing.assert_array_equal(clf.predict(blobs["Xt"]), blobs["y"][(blobs["Xt"] @ X.T).argmax(axis=1)])


def test_k_larger_than_support_is_capped(blobs):
    assert KNNClassifier(n_neighbors=1000).fit(blobs["X"], blobs["y"]).n_neighbors_ == len(blobs["X"])


def test_distance_weights_need_cosine(blobs):
    with pytest.raises(InvalidParameterError, match="weights='distance' needs metric='cosine'") as info:
        KNNClassifier(metric="ip", weights="distance").fit(blobs["X"], blobs["y"])
    assert info.value.param == "weights"


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_small_searches_in_numpy_equal_the_faiss_search(monkeypatch, weights):
    from clipcache.classifiers import knn

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(60, 16)).astype(np.float32), np.arange(60) % 4
    Q = rng.normal(size=(30, 16)).astype(np.float32)
    clf = KNNClassifier(n_neighbors=5, weights=weights).fit(X, y)
    small = clf.logits(Q)
    monkeypatch.setattr(knn, "SMALL_SEARCH", 0)  # every search through FAISS
    np.testing.assert_allclose(clf.logits(Q), small, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(Q), (small.argmax(axis=1)))

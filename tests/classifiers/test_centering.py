"""CL2N centring (``center``) of every estimator: the straight formula, the stored mean, save/load."""

import numpy as np
import pytest

from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    SelectByValidation,
    TipAdapter,
    TransductiveGDA,
    ZeroShotClassifier,
    load_model,
    save_model,
)


def _cl2n(X, mean):
    Z = X.astype(np.float64) - mean
    return (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)


def _estimators(text_weights):
    return {
        "ncm": lambda c: ClassMeanClassifier(center=c),
        "gda": lambda c: GDAClassifier(center=c),
        "gda-lw": lambda c: GDAClassifier(precision="ledoit-wolf", center=c),
        "knn": lambda c: KNNClassifier(n_neighbors=3, center=c),
        "tip": lambda c: TipAdapter(center=c),
        "ensemble": lambda c: LogitEnsemble(center=c),
        "zeroshot": lambda c: ZeroShotClassifier(**text_weights, center=c),
        "select": lambda c: SelectByValidation(center=c),
        "transductive": lambda c: TransductiveGDA(center=c),
    }


def _fit(est, X, y, Xv, yv):
    if isinstance(est, KNNClassifier | GDAClassifier | ClassMeanClassifier | ZeroShotClassifier):
        return est.fit(X, y)
    return est.fit(X, y, Xv, yv)


@pytest.mark.parametrize("name", ["ncm", "gda", "gda-lw", "knn", "tip", "ensemble", "zeroshot", "select",
                                  "transductive"])
def test_a_given_mean_is_subtracted_then_rows_are_normalised(blobs, text_weights, name):
    make = _estimators(text_weights)[name]
    X, y, Xv, yv, Xt = blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"], blobs["Xt"]
    mean = np.random.default_rng(3).normal(size=16).astype(np.float32) * 0.3
    centred = _fit(make(mean), X, y, Xv, yv)
    plain = _fit(make(None), _cl2n(X, mean), y, _cl2n(Xv, mean), yv)
    np.testing.assert_array_equal(centred.center_, mean)
    assert plain.center_ is None
    np.testing.assert_allclose(centred.logits(Xt), plain.logits(_cl2n(Xt, mean)), rtol=1e-4, atol=1e-4)


def test_support_centring_takes_the_mean_of_the_fitted_rows(blobs):
    X, y = blobs["X"], blobs["y"]
    clf = ClassMeanClassifier(center="support").fit(X, y)
    np.testing.assert_allclose(clf.center_, X.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)
    ref = ClassMeanClassifier().fit(_cl2n(X, clf.center_), y)
    np.testing.assert_allclose(clf.prototypes_, ref.prototypes_, atol=1e-6)


def test_transductive_centring_includes_the_unlabelled_rows(blobs):
    X = np.vstack([blobs["X"], blobs["Xt"]])
    y = np.concatenate([blobs["y"], np.full(len(blobs["Xt"]), -1)])
    support = TransductiveGDA(center="support", strength=0.0).fit(X, y)
    transductive = TransductiveGDA(center="transductive", strength=0.0).fit(X, y)
    np.testing.assert_allclose(support.center_, blobs["X"].mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(transductive.center_, X.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_fusion_centres_and_normalises_each_feature_set_separately(blobs):
    rng = np.random.default_rng(4)
    aux = rng.normal(size=(len(blobs["X"]), 5)).astype(np.float32) + blobs["y"][:, None]
    X = np.hstack([blobs["X"], aux])
    mean = X.mean(axis=0)
    fusion = LogitBiasFusion(aux_dim=5, center="support").fit(X, blobs["y"])
    ref = LogitBiasFusion(aux_dim=5).fit(np.hstack([_cl2n(X[:, :16], mean[:16]), _cl2n(X[:, 16:], mean[16:])]),
                                         blobs["y"])
    np.testing.assert_allclose(fusion.base_.prototypes_, ref.base_.prototypes_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fusion.aux_.prototypes_, ref.aux_.prototypes_, rtol=1e-5, atol=1e-6)


def test_streamed_gda_fit_centres_like_the_in_memory_fit(blobs):
    X, y = blobs["X"], blobs["y"]
    for center in ("support", X[:5].mean(axis=0)):
        a = GDAClassifier(center=center, solver="covariance").fit(X, y)
        b = GDAClassifier(center=center).fit_chunks(lambda: ((X[i : i + 7], y[i : i + 7]) for i in range(0, 40, 7)))
        np.testing.assert_allclose(b.center_, a.center_, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-4, atol=1e-4 * np.abs(a.coef_).max())


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
@pytest.mark.parametrize("name", ["ncm", "gda", "knn", "tip", "select", "transductive"])
def test_save_and_load_keep_the_centring(tmp_path, blobs, text_weights, name, suffix):
    est = _fit(_estimators(text_weights)[name]("support"), blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    loaded, _ = load_model(save_model(est, tmp_path / f"m{suffix}"))
    np.testing.assert_array_equal(loaded.center_, est.center_)
    assert loaded.center == "support"
    np.testing.assert_array_equal(loaded.predict_proba(blobs["Xt"]), est.predict_proba(blobs["Xt"]))

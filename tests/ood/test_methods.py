"""Each OOD method equals a straight numpy reference formula to 1e-6, and the edge cases fail clearly."""

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from sklearn.base import clone
from sklearn.covariance import ledoit_wolf_shrinkage

from clipcache.calibration import fit_temperature
from clipcache.classifiers import ClassMeanClassifier, GDAClassifier
from clipcache.errors import (
    InvalidFeaturesError,
    InvalidParameterError,
    MissingTextError,
    NotFittedError,
)
from clipcache.ood import OODDetector, auroc, knn_default_k, vim_default_dim

D, C = 8, 3
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _blobs(rng, n_per_class, shift=0.0):
    centres = np.eye(C, D) * 3.0
    X = np.concatenate([centres[c] + rng.normal(size=(n_per_class, D)) + shift for c in range(C)])
    return X.astype(np.float32), np.repeat(np.arange(C), n_per_class)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, 30)
    Xv, yv = _blobs(rng, 10)
    Xi, _ = _blobs(rng, 20)
    Xo = (np.eye(D)[6] * 6.0 + rng.normal(size=(40, D))).astype(np.float32)  # an unseen class direction
    return X, y, Xv, yv, Xi, Xo


@pytest.fixture(scope="module")
def gda(data):
    X, y = data[:2]
    return GDAClassifier().fit(X, y)


def _scores(options, data):
    X, y, Xv, yv, Xi, Xo = data
    det = OODDetector(**options).fit(X, y, X_val=Xv, y_val=yv)
    Q = np.vstack([Xi, Xo])
    return det, Q, det.score_samples(Q)


def _normalize(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# -- logit methods ----------------------------------------------------------------------


def test_msp_maxlogit_energy_gen_equal_the_formulas_on_scaled_logits(data, gda):
    T = 2.5
    _, Q, _ = _scores({"method": "msp", "classifier": gda, "temperature": T}, data)
    z = gda.logits(Q).astype(np.float64) / T
    p = scipy.special.softmax(z, axis=1)
    top = np.sort(p, axis=1)[:, -3:]  # M=100 capped at C=3
    expected = {
        "msp": p.max(axis=1),
        "maxlogit": z.max(axis=1),
        "energy": np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1),
        "gen": -np.sum(top**0.1 * (1 - top) ** 0.1, axis=1),
    }
    for method, want in expected.items():
        _, _, got = _scores({"method": method, "classifier": gda, "temperature": T}, data)
        np.testing.assert_allclose(got, want, **TOL, err_msg=method)


def test_auto_temperature_is_fitted_on_the_validation_logits(data, gda):
    _, _, Xv, yv, _, _ = data
    det, _, _ = _scores({"method": "msp", "classifier": gda}, data)
    assert det.temperature_ == pytest.approx(fit_temperature(gda.logits(Xv), yv), rel=1e-9)
    assert det.temperature_ != 1.0


def test_default_classifier_is_a_gda_fitted_on_the_support(data):
    X, y = data[:2]
    det, Q, got = _scores({"method": "maxlogit", "temperature": 1.0}, data)
    reference = GDAClassifier().fit(X, y)
    np.testing.assert_allclose(got, reference.logits(Q).max(axis=1), **TOL)
    assert isinstance(det.classifier_, GDAClassifier)


def test_an_unfitted_classifier_is_cloned_and_fitted(data):
    X, y = data[:2]
    template = ClassMeanClassifier(logit_scale=10.0)
    det, Q, got = _scores({"method": "maxlogit", "classifier": template, "temperature": 1.0}, data)
    assert not hasattr(template, "prototypes_")
    np.testing.assert_allclose(got, clone(template).fit(X, y).logits(Q).max(axis=1), **TOL)


def test_mcm_is_the_max_softmax_of_raw_cosines_over_tau(data):
    rng = np.random.default_rng(1)
    text = rng.normal(size=(2 * C, D)).astype(np.float32)
    index = np.repeat(np.arange(C), 2)
    _, Q, got = _scores({"method": "mcm", "text_embeddings": text, "class_index": index, "tau": 0.5}, data)
    weights = _normalize(np.stack([_normalize(text[index == c]).mean(axis=0) for c in range(C)]))
    cos = _normalize(Q) @ weights.T
    np.testing.assert_allclose(got, scipy.special.softmax(cos / 0.5, axis=1).max(axis=1), **TOL)


# -- feature methods --------------------------------------------------------------------


def _gaussian_reference(X, y, normalize=False, ridge=0.0, inverse=np.linalg.inv):
    X = _normalize(X) if normalize else np.asarray(X, dtype=np.float64)
    means = np.stack([X[y == c].mean(axis=0) for c in range(C)])
    residual = X - means[y]
    cov = residual.T @ residual / len(X)
    cov = cov + ridge * np.trace(cov) / X.shape[1] * np.eye(X.shape[1])
    return means, inverse(cov)


def _min_distance(Q, means, precision):
    return np.min([np.einsum("ij,jk,ik->i", Q - m, precision, Q - m) for m in means], axis=0)


def test_mahalanobis_equals_the_formula(data):
    X, y = data[:2]
    det, Q, got = _scores({"method": "mahalanobis"}, data)
    assert det.ridge_ == 0.0  # n - C >= d: the plain inverse, as OpenOOD
    means, precision = _gaussian_reference(X, y)
    np.testing.assert_allclose(got, -_min_distance(Q.astype(np.float64), means, precision), **TOL)


def test_mahalanobis_plus_plus_normalises_the_features(data):
    X, y = data[:2]
    _, Q, got = _scores({"method": "mahalanobis++"}, data)
    means, precision = _gaussian_reference(X, y, normalize=True)
    np.testing.assert_allclose(got, -_min_distance(_normalize(Q), means, precision), **TOL)


def test_rmds_equals_the_formula(data):
    X, y = data[:2]
    _, Q, got = _scores({"method": "rmds"}, data)
    means, precision = _gaussian_reference(X, y)
    X64 = X.astype(np.float64)
    mu0 = X64.mean(axis=0)
    whole = np.linalg.inv((X64 - mu0).T @ (X64 - mu0) / len(X64))
    Q = Q.astype(np.float64)
    background = np.einsum("ij,jk,ik->i", Q - mu0, whole, Q - mu0)
    class_scores = np.stack([-np.einsum("ij,jk,ik->i", Q - m, precision, Q - m) + background for m in means], axis=1)
    np.testing.assert_allclose(got, class_scores.max(axis=1), **TOL)


def test_singular_covariance_uses_pinv_or_the_ledoit_wolf_ridge():
    rng = np.random.default_rng(5)
    X, y = _blobs(rng, 2)  # 6 rows in 8 dimensions: the covariance is singular
    Q = rng.normal(size=(5, D)).astype(np.float32)
    means = np.stack([X[y == c].astype(np.float64).mean(axis=0) for c in range(C)])

    plain = OODDetector("mahalanobis", ridge=0.0).fit(X, y, X_val=X, y_val=y)
    _, pinv = _gaussian_reference(X, y, inverse=scipy.linalg.pinvh)
    np.testing.assert_allclose(plain.score_samples(Q), -_min_distance(Q.astype(np.float64), means, pinv), **TOL)

    auto = OODDetector("mahalanobis").fit(X, y, X_val=X, y_val=y)
    residual = X.astype(np.float64) - means[y]
    delta = ledoit_wolf_shrinkage(residual, assume_centered=True)
    assert auto.ridge_ == pytest.approx(delta / (1 - delta), rel=1e-9)
    _, ridged = _gaussian_reference(X, y, ridge=delta / (1 - delta))
    np.testing.assert_allclose(auto.score_samples(Q), -_min_distance(Q.astype(np.float64), means, ridged), **TOL)


def test_rmds_with_a_singular_covariance_ridges_both_gaussians_alike():
    rng = np.random.default_rng(6)
    X, y = _blobs(rng, 2)  # 6 rows in 8 dimensions
    Q = rng.normal(size=(7, D)).astype(np.float32)
    det = OODDetector("rmds").fit(X, y, X_val=X, y_val=y)
    means, precision = _gaussian_reference(X, y, ridge=det.ridge_)
    X64 = X.astype(np.float64)
    mu0 = X64.mean(axis=0)
    whole = (X64 - mu0).T @ (X64 - mu0) / len(X64)
    whole_precision = np.linalg.inv(whole + det.ridge_ * np.trace(whole) / D * np.eye(D))
    Q64 = Q.astype(np.float64)
    background = np.einsum("ij,jk,ik->i", Q64 - mu0, whole_precision, Q64 - mu0)
    assert det.ridge_ > 0
    np.testing.assert_allclose(det.score_samples(Q), background - _min_distance(Q64, means, precision), **TOL)


def test_fdbd_with_a_cosine_head_uses_normalised_features(data):
    X, y = data[:2]
    clf = ClassMeanClassifier(logit_scale=20.0).fit(X, y)
    _, Q, got = _scores({"method": "fdbd", "classifier": clf}, data)
    w = 20.0 * clf.prototypes_.astype(np.float64)
    h, q = _normalize(X), _normalize(Q)
    z = q @ w.T
    want = []
    for i, row in enumerate(z):
        p = row.argmax()
        total = sum(abs(row[p] - row[c]) / np.linalg.norm(w[c] - w[p]) for c in range(C) if c != p)
        want.append(total / np.linalg.norm(q[i] - h.mean(axis=0)))
    np.testing.assert_allclose(got, want, **TOL)


def test_vim_equals_the_official_formula(data, gda):
    X = data[0]
    dim = 4
    _, Q, got = _scores({"method": "vim", "classifier": gda, "dim": dim}, data)
    w, b = gda.coef_.astype(np.float64), gda.intercept_.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    train = X.astype(np.float64) - u
    values, vectors = np.linalg.eigh(train.T @ train / len(train))
    ns = vectors[:, np.argsort(-values)[dim:]]
    alpha = (X.astype(np.float64) @ w.T + b).max(axis=1).mean() / np.linalg.norm(train @ ns, axis=1).mean()
    logits = Q.astype(np.float64) @ w.T + b
    want = scipy.special.logsumexp(logits, axis=1) - alpha * np.linalg.norm((Q - u) @ ns, axis=1)
    np.testing.assert_allclose(got, want, **TOL)


def test_vim_with_a_cosine_head_uses_normalised_features(data):
    X, y = data[:2]
    clf = ClassMeanClassifier(logit_scale=20.0).fit(X, y)
    _, Q, got = _scores({"method": "vim", "classifier": clf, "dim": 3}, data)
    w = 20.0 * clf.prototypes_.astype(np.float64)
    h, q = _normalize(X), _normalize(Q)
    values, vectors = np.linalg.eigh(h.T @ h / len(h))  # u = 0 without a bias
    ns = vectors[:, np.argsort(-values)[3:]]
    alpha = (h @ w.T).max(axis=1).mean() / np.linalg.norm(h @ ns, axis=1).mean()
    want = scipy.special.logsumexp(q @ w.T, axis=1) - alpha * np.linalg.norm(q @ ns, axis=1)
    np.testing.assert_allclose(got, want, **TOL)


def test_knn_is_the_kth_cosine_neighbour(data):
    X = data[0]
    _, Q, got = _scores({"method": "knn", "k": 5}, data)
    sims = np.sort(_normalize(Q) @ _normalize(X).T, axis=1)[:, ::-1]
    np.testing.assert_allclose(got, sims[:, 4], **TOL)


def test_knn_default_k_scales_with_the_fitted_rows(data):
    X, y = data[:2]
    assert OODDetector("knn").fit(X[:40], y[:40]).k_ == 1  # 32 rows after carving
    assert [knn_default_k(n) for n in (1, 1499, 1500, 50000, 100000)] == [1, 1, 2, 50, 100]
    assert OODDetector("knn", k=50).fit(X[:40], y[:40]).k_ == 32  # an explicit k is capped at the rows


def test_fdbd_equals_the_formula(data, gda):
    X = data[0]
    for normalizer in (True, False):
        _, Q, got = _scores({"method": "fdbd", "classifier": gda, "distance_as_normalizer": normalizer}, data)
        w, b = gda.coef_.astype(np.float64), gda.intercept_.astype(np.float64)
        Q64 = Q.astype(np.float64)
        z = Q64 @ w.T + b
        want = []
        for i, row in enumerate(z):
            p = row.argmax()
            total = sum(abs(row[p] - row[c]) / np.linalg.norm(w[c] - w[p]) for c in range(C) if c != p)
            ref = X.astype(np.float64).mean(axis=0) if normalizer else 0.0
            want.append(total / np.linalg.norm(Q64[i] - ref))
        np.testing.assert_allclose(got, want, **TOL)


def test_nnguide_equals_the_formula(data, gda):
    X = data[0]
    _, Q, got = _scores({"method": "nnguide", "classifier": gda, "k": 4}, data)
    bank = _normalize(X) * scipy.special.logsumexp(gda.logits(X).astype(np.float64), axis=1)[:, None]
    sims = np.sort(_normalize(Q) @ bank.T, axis=1)[:, ::-1][:, :4]
    want = sims.mean(axis=1) * scipy.special.logsumexp(gda.logits(Q).astype(np.float64), axis=1)
    np.testing.assert_allclose(got, want, **TOL)


# -- the estimator ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["maxlogit", "energy", "mahalanobis", "mahalanobis++", "knn", "fdbd", "nnguide"])
def test_detectors_separate_an_unseen_class_direction(method, data):
    options = {"method": method, "k": 5} if method in ("knn", "nnguide") else {"method": method}
    _, _, scores = _scores(options, data)
    assert auroc(scores[:60], scores[60:]) > 0.9


def test_predict_keeps_95_percent_of_validation(data):
    X, y, Xv, yv, Xi, Xo = data
    det = OODDetector("mahalanobis").fit(X, y, X_val=Xv, y_val=yv)
    val = np.sort(det.score_samples(Xv))
    assert det.offset_ == val[int(np.floor(0.05 * len(val)))]
    assert np.mean(det.predict(Xv) == 1) >= 0.95
    np.testing.assert_array_equal(det.predict(Xo), np.where(det.score_samples(Xo) >= det.offset_, 1, -1))
    np.testing.assert_allclose(det.decision_function(Xi), det.score_samples(Xi) - det.offset_)
    assert np.mean(det.predict(Xo) == -1) > 0.9


def test_without_validation_rows_are_carved_from_each_class(data):
    X, y = data[:2]
    det = OODDetector("mahalanobis").fit(X, y)
    assert det.val_carved_ and det.n_val_ == 3 * 6  # round(0.2 * 30) per class
    again = OODDetector("mahalanobis").fit(X, y)
    assert again.offset_ == det.offset_
    np.testing.assert_array_equal(det.means_, again.means_)


def test_single_class_works_for_gaussian_and_knn_but_not_for_logits():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, D)).astype(np.float32)
    y = np.zeros(30, dtype=int)
    Q = rng.normal(size=(5, D)).astype(np.float32)
    maha = OODDetector("mahalanobis").fit(X, y)
    means, precision = maha.means_, maha.precision_root_ @ maha.precision_root_.T
    np.testing.assert_allclose(maha.score_samples(Q), -_min_distance(Q.astype(np.float64), means, precision), **TOL)
    assert OODDetector("knn", k=3).fit(X).score_samples(Q).shape == (5,)
    with pytest.raises(InvalidFeaturesError, match="at least 2 classes"):
        OODDetector("msp").fit(X, y)


def test_vim_dimension_must_be_below_d(data):
    X, y = data[:2]
    with pytest.raises(InvalidParameterError, match="below the feature dimension 8") as info:
        OODDetector("vim", dim=8).fit(X, y)
    assert info.value.param == "dim"
    assert OODDetector("vim").fit(X, y).vim_dim_ == vim_default_dim(8) == 4
    assert vim_default_dim(512) == 256 and vim_default_dim(768) == 512 and vim_default_dim(2048) == 1000


def test_empty_ood_split_scores_to_an_empty_array_and_the_metric_refuses_it(data):
    X, y, Xv, yv, Xi, _ = data
    det = OODDetector("knn", k=3).fit(X, y, X_val=Xv)
    empty = det.score_samples(np.zeros((0, D), dtype=np.float32))
    assert empty.shape == (0,)
    with pytest.raises(InvalidFeaturesError, match="score_out is empty"):
        auroc(det.score_samples(Xi), empty)


def test_nan_features_are_a_clear_error(data):
    X, y, _, _, Xi, _ = data
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        OODDetector("knn").fit(bad, y)
    det = OODDetector("knn").fit(X, y)
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        det.score_samples(np.full((1, D), np.nan, dtype=np.float32))


@pytest.mark.parametrize(
    "options, param",
    [({"method": "odin"}, "method"), ({"k": 0}, "k"), ({"tau": -1.0}, "tau"), ({"ridge": -0.5}, "ridge"),
     ({"tpr": 1.0}, "tpr"), ({"temperature": 0}, "temperature"), ({"dim": 2.5}, "dim")],
)
def test_bad_parameters_raise_before_the_data_is_read(options, param):
    with pytest.raises(InvalidParameterError) as info:
        OODDetector(**options).fit("not an array")
    assert info.value.param == param


def test_missing_inputs_are_named(data):
    X, y = data[:2]
    with pytest.raises(MissingTextError):
        OODDetector("mcm").fit(X)
    with pytest.raises(InvalidFeaturesError, match="labels y"):
        OODDetector("mahalanobis").fit(X)
    with pytest.raises(InvalidParameterError, match="not a linear classifier"):
        from clipcache.classifiers import KNNClassifier

        OODDetector("fdbd", classifier=KNNClassifier(n_neighbors=3)).fit(X, y)
    with pytest.raises(NotFittedError):
        OODDetector().score_samples(X)
    det = OODDetector("knn").fit(X, y)
    with pytest.raises(InvalidFeaturesError, match="fitted on 8"):
        det.score_samples(np.zeros((2, 3), dtype=np.float32))


def test_get_params_and_clone_follow_scikit_learn():
    det = OODDetector("knn", k=7, tpr=0.9)
    assert det.get_params()["k"] == 7
    twin = clone(det)
    assert twin.get_params() == det.get_params() and twin is not det


def _centred(A, mean):
    return _normalize(np.asarray(A, dtype=np.float64) - mean).astype(np.float32)


def test_centred_mahalanobis_equals_the_formula_on_centred_normalised_features(data):
    X, y = data[:2]
    det, Q, got = _scores({"method": "mahalanobis", "center": True}, data)
    mean = X.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(det.center_, mean, rtol=1e-6)
    means, precision = _gaussian_reference(_centred(X, mean), y)
    np.testing.assert_allclose(got, -_min_distance(_centred(Q, mean).astype(np.float64), means, precision), **TOL)


@pytest.mark.parametrize("options", [{"method": "rmds"}, {"method": "knn", "k": 3}, {"method": "vim", "dim": 4},
                                     {"method": "fdbd"}, {"method": "msp"}, {"method": "nnguide", "k": 3}])
def test_center_is_the_method_on_centred_normalised_features(options, data):
    X, y, Xv, yv, Xi, Xo = data
    det, Q, got = _scores({**options, "center": True}, data)
    mean = X.astype(np.float64).mean(axis=0)
    reference = OODDetector(**options).fit(_centred(X, mean), y, X_val=_centred(Xv, mean), y_val=yv)
    np.testing.assert_allclose(got, reference.score_samples(_centred(Q, mean)), **TOL)
    assert det.offset_ == pytest.approx(reference.offset_, rel=1e-6, abs=1e-6)


def test_center_refuses_mcm_a_fitted_classifier_and_non_booleans(data, gda):
    X, y = data[:2]
    for options in ({"method": "mcm", "center": True}, {"method": "msp", "center": "yes"}):
        with pytest.raises(InvalidParameterError) as info:
            OODDetector(**options).fit(X, y)
        assert info.value.param == "center"
    with pytest.raises(InvalidParameterError, match="not fitted on") as info:
        OODDetector("msp", classifier=gda, center=True).fit(X, y)
    assert info.value.param == "center"

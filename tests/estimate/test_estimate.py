"""Label-free accuracy estimation: each method equals a straight reference formula."""

import numpy as np
import pytest
import scipy.special

from clipcache.calibration import fit_temperature
from clipcache.classifiers import ClassMeanClassifier, GDAClassifier
from clipcache.errors import InvalidFeaturesError, InvalidParameterError
from clipcache.estimate import (
    METHODS,
    atc_threshold,
    estimate_accuracy,
    mano_score,
    nuclear_norm_score,
    r2_linear_fit,
    softrun,
)

D, C = 6, 4


def _blobs(rng, n, noise=1.6):
    centres = np.eye(C, D) * 3.0
    y = np.repeat(np.arange(C), n)
    return (centres[y] + rng.normal(size=(len(y), D)) * noise).astype(np.float32), y


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, 40)
    Xv, yv = _blobs(rng, 40)
    Xt, yt = _blobs(rng, 50, noise=2.2)  # a shifted batch: noisier
    return GDAClassifier().fit(X, y), Xv, yv, Xt, yt


def _official_atc_threshold(scores, labels):
    """``find_ATC_threshold`` of saurabhgarg1996/ATC_code, line for line (labels: 1 right, 0 wrong)."""
    sorted_idx = np.argsort(scores, kind="stable")
    sorted_scores, sorted_labels = scores[sorted_idx], labels[sorted_idx]
    fp, fn = np.sum(labels == 0), 0.0
    min_fp_fn, thres = np.abs(fp - fn), 0.0
    for i in range(len(labels)):
        if sorted_labels[i] == 0:
            fp -= 1
        else:
            fn += 1
        if np.abs(fp - fn) < min_fp_fn:
            min_fp_fn, thres = np.abs(fp - fn), sorted_scores[i]
    return thres


def _reference_mano(z, p=4, delta=5.0):
    n, k = z.shape
    criterion = np.mean([-(1 / k) * np.sum(np.log(scipy.special.softmax(row))) for row in z])
    if criterion > delta:
        q = scipy.special.softmax(z, axis=1)
    else:
        q = z + 1 + z**2 / 2
        q = q - q.min(axis=1, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
    return (np.sum(np.abs(q) ** p) / (n * k)) ** (1 / p), criterion


def test_every_method_against_its_reference(setting):
    clf, Xv, yv, Xt, _ = setting
    T = fit_temperature(clf.logits(Xv), yv)
    z, zv = clf.logits(Xt).astype(np.float64) / T, clf.logits(Xv).astype(np.float64) / T
    p, pv = scipy.special.softmax(z, axis=1), scipy.special.softmax(zv, axis=1)
    right = (pv.argmax(axis=1) == yv).astype(int)
    mc, mc_val = p.max(axis=1), pv.max(axis=1)
    ne = np.sum(p * np.log(p + 1e-20), axis=1)
    ne_val = np.sum(pv * np.log(pv + 1e-20), axis=1)
    want = {
        "ac": mc.mean(),
        "doc": right.mean() - (mc_val.mean() - mc.mean()),
        "atc-mc": np.mean(mc >= _official_atc_threshold(mc_val, right)),
        "atc-ne": np.mean(ne >= _official_atc_threshold(ne_val, right)),
        "nuclear": np.linalg.norm(p, ord="nuc") / np.sqrt(min(p.shape) * len(p)),
        "mano": _reference_mano(z)[0],
    }
    for method in METHODS:
        got = estimate_accuracy(clf, Xt, method=method, X_val=Xv, y_val=yv)
        assert got == pytest.approx(want[method], rel=1e-6, abs=1e-9), method


def test_uncalibrated_estimates_use_the_raw_logits(setting):
    clf, Xv, yv, Xt, _ = setting
    z = clf.logits(Xt).astype(np.float64)
    assert estimate_accuracy(clf, Xt, method="ac", calibrate=False) == pytest.approx(
        scipy.special.softmax(z, axis=1).max(axis=1).mean(), rel=1e-9
    )
    assert estimate_accuracy(clf, Xt, method="mano", X_val=Xv, y_val=yv, calibrate=False) == pytest.approx(
        _reference_mano(z)[0], rel=1e-9
    )


@pytest.mark.parametrize("scale", [0.3, 30.0])
def test_mano_takes_both_branches_of_its_criterion(scale):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 10)) * scale
    want, criterion = _reference_mano(z)
    q, phi = softrun(z)
    assert phi == pytest.approx(criterion, rel=1e-12)
    assert (phi > 5.0) == (scale > 1)  # small logits: Taylor; large: softmax
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert mano_score(z) == pytest.approx(want, rel=1e-12)
    assert mano_score(z, norm_order=2) == pytest.approx(np.sqrt(np.sum(q**2) / q.size), rel=1e-12)


def test_nuclear_norm_is_one_for_confident_balanced_predictions():
    p = np.eye(5)[np.arange(50) % 5]
    assert nuclear_norm_score(p) == pytest.approx(1.0)
    assert nuclear_norm_score(np.full((50, 5), 0.2)) == pytest.approx(1 / 5)  # rank one: sqrt(N K / K^2) / sqrt(K N)


def test_atc_threshold_matches_the_official_loop_and_its_all_right_case():
    rng = np.random.default_rng(4)
    for _ in range(20):
        scores = rng.random(60)
        right = (rng.random(60) < 0.7).astype(int)
        assert atc_threshold(scores, right.astype(bool)) == _official_atc_threshold(scores, right)
    assert atc_threshold(np.array([-0.5, -0.1]), np.array([True, True])) == float("-inf")  # official: 0.0


def test_estimates_fall_with_the_true_accuracy_under_growing_noise():
    # Cosine prototypes: noise lowers the similarities, hence the confidences (GDA's linear logits grow
    # with the feature norm instead, so its confidence can rise with noise).
    rng = np.random.default_rng(5)
    X, y = _blobs(rng, 40)
    Xv, yv = _blobs(rng, 40)
    clf = ClassMeanClassifier(logit_scale=10.0).fit(X, y)
    truth, estimates = [], {m: [] for m in METHODS}
    for noise in (1.0, 2.0, 3.0, 4.0):
        Xs, ys = _blobs(rng, 100, noise=noise)
        truth.append(np.mean(clf.predict(Xs) == ys))
        for m in METHODS:
            estimates[m].append(estimate_accuracy(clf, Xs, method=m, X_val=Xv, y_val=yv))
    assert truth == sorted(truth, reverse=True)
    for m in ("ac", "doc", "atc-mc", "mano", "nuclear"):
        assert estimates[m] == sorted(estimates[m], reverse=True), m


def test_r2_linear_fit_is_the_squared_correlation():
    rng = np.random.default_rng(6)
    e = rng.random(20)
    t = 0.5 * e + rng.normal(scale=0.1, size=20)
    assert r2_linear_fit(e, t) == pytest.approx(np.corrcoef(e, t)[0, 1] ** 2, rel=1e-12)
    slope, intercept = np.polyfit(e, t, 1)
    residual = t - (slope * e + intercept)
    assert r2_linear_fit(e, t) == pytest.approx(1 - residual @ residual / np.sum((t - t.mean()) ** 2), rel=1e-9)


def test_errors(setting):
    clf, Xv, yv, Xt, _ = setting
    with pytest.raises(InvalidParameterError) as info:
        estimate_accuracy(clf, Xt, method="atc-mc")
    assert info.value.param == "X_val"
    with pytest.raises(InvalidParameterError) as info:
        estimate_accuracy(clf, "not read", method="entropy")
    assert info.value.param == "method"
    bad = Xt.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        estimate_accuracy(clf, bad, method="ac")
    with pytest.raises(InvalidFeaturesError, match="labels that the support set does not"):
        estimate_accuracy(clf, Xt, method="doc", X_val=Xv, y_val=yv + 10)
    with pytest.raises(InvalidFeaturesError):
        r2_linear_fit([1.0, 2.0], [1.0, 2.0])


def test_an_infinite_threshold_fixes_the_branch():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(50, 6)) * 30.0  # Phi > 5: softmax by default
    p = scipy.special.softmax(z, axis=1)
    v = 1 + z + z**2 / 2
    v = v - v.min(axis=1, keepdims=True)
    q = v / v.sum(axis=1, keepdims=True)
    assert mano_score(z) == pytest.approx(np.mean(p**4) ** 0.25, rel=1e-12)
    assert mano_score(z, threshold=-np.inf) == pytest.approx(np.mean(p**4) ** 0.25, rel=1e-12)
    assert mano_score(z, threshold=np.inf) == pytest.approx(np.mean(q**4) ** 0.25, rel=1e-12)

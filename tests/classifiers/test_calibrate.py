"""Temperature scaling in the estimators: ``calibrate``, ``temperature_``, ``predict_proba``, save/load."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from clipcache.calibration import fit_temperature
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitEnsemble,
    SelectByValidation,
    TipAdapter,
    load_model,
    save_model,
)


def _nll_minimiser(logits, y):
    """The NLL-minimising temperature by a straight scalar search (reference)."""
    z = logits.astype(np.float64)

    def nll(log_t):
        s = z / np.exp(log_t)
        return np.mean(scipy.special.logsumexp(s, axis=1) - s[np.arange(len(y)), y])

    return float(np.exp(scipy.optimize.minimize_scalar(nll, bounds=(-9, 13), method="bounded",
                                                       options={"xatol": 1e-10}).x))


@pytest.mark.parametrize("make", [ClassMeanClassifier, GDAClassifier, lambda: KNNClassifier(n_neighbors=5)],
                         ids=["ncm", "gda", "knn"])
def test_calibrate_fits_the_nll_temperature_and_predict_proba_divides_by_it(blobs, make):
    clf = make().fit(blobs["X"], blobs["y"])
    assert clf.temperature_ == 1.0
    before = clf.predict_proba(blobs["Xt"])
    np.testing.assert_allclose(before, scipy.special.softmax(clf.logits(blobs["Xt"]).astype(np.float64), axis=1),
                               atol=1e-6)
    clf.calibrate(blobs["Xv"], blobs["yv"])
    t = _nll_minimiser(clf.logits(blobs["Xv"]), blobs["yv"])
    np.testing.assert_allclose(clf.temperature_, t, rtol=1e-5)
    expected = scipy.special.softmax(clf.logits(blobs["Xt"]).astype(np.float64) / clf.temperature_, axis=1)
    np.testing.assert_allclose(clf.predict_proba(blobs["Xt"]), expected, atol=1e-6)


def test_calibration_never_changes_predictions_or_logits(blobs):
    clf = GDAClassifier().fit(blobs["X"], blobs["y"])
    pred, logits = clf.predict(blobs["Xt"]), clf.logits(blobs["Xt"])
    clf.calibrate(blobs["Xv"], blobs["yv"])
    assert clf.temperature_ != 1.0
    np.testing.assert_array_equal(clf.predict(blobs["Xt"]), pred)
    np.testing.assert_array_equal(clf.logits(blobs["Xt"]), logits)
    np.testing.assert_array_equal(clf.predict_proba(blobs["Xt"]).argmax(axis=1), pred)


@pytest.mark.parametrize("make", [TipAdapter, LogitEnsemble, SelectByValidation], ids=lambda c: c.__name__)
def test_fit_with_validation_data_calibrates_on_it(blobs, make):
    clf = make().fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    assert clf.temperature_ == pytest.approx(fit_temperature(clf.logits(blobs["Xv"]), blobs["yv"]), rel=1e-9)
    assert make().fit(blobs["X"], blobs["y"]).temperature_ == 1.0


def test_calibrate_maps_string_labels_to_columns(blobs):
    names = np.array(["a", "b", "c", "d", "e"])
    clf = GDAClassifier().fit(blobs["X"], names[blobs["y"]]).calibrate(blobs["Xv"], names[blobs["yv"]])
    ref = GDAClassifier().fit(blobs["X"], blobs["y"]).calibrate(blobs["Xv"], blobs["yv"])
    assert clf.temperature_ == pytest.approx(ref.temperature_, rel=1e-9)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_save_and_load_keep_the_temperature(tmp_path, blobs, suffix):
    clf = GDAClassifier().fit(blobs["X"], blobs["y"]).calibrate(blobs["Xv"], blobs["yv"])
    loaded, _ = load_model(save_model(clf, tmp_path / f"m{suffix}"))
    assert loaded.temperature_ == clf.temperature_
    np.testing.assert_array_equal(loaded.predict_proba(blobs["Xt"]), clf.predict_proba(blobs["Xt"]))


def test_a_model_without_a_temperature_predicts_the_plain_softmax(blobs):
    clf = ClassMeanClassifier().fit(blobs["X"], blobs["y"])
    del clf.temperature_  # as a model file written before calibration existed
    np.testing.assert_allclose(clf.predict_proba(blobs["Xt"]),
                               scipy.special.softmax(clf.logits(blobs["Xt"]).astype(np.float64), axis=1), atol=1e-6)

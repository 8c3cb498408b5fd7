"""Centring, calibration, auto, transductive, cross-store and base-to-new runs of the protocol."""

import numpy as np
import pytest
import scipy.special

from clipcache import FeatureStore, StoreMismatchError
from clipcache.classifiers import GDAClassifier, ZeroShotClassifier, load_model
from clipcache.evaluation import (
    ProtocolError,
    ProtocolOptions,
    fit_from_store,
    resolve_protocol,
    run_evaluation,
)
from clipcache.evaluation.base_to_new import class_split, harmonic_mean
from clipcache.evaluation.metrics import expected_calibration_error
from clipcache.evaluation.options import BASE_TO_NEW_METRICS, TRANSDUCTIVE_METHOD
from clipcache.evaluation.protocol import pool_mean
from tests.classifiers.synth import CLIP_PROVENANCE, write_store


def test_transductive_predictions_never_depend_on_the_test_labels(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_store(a)
    write_store(b, permute_test_labels=7)
    kwargs = {"feature_set": "clip", "transductive": True, "center": "transductive", "keep_predictions": True}
    ra = run_evaluation(a, ["gda", "auto"], [1, 4], [1, 2], **kwargs)
    rb = run_evaluation(b, ["gda", "auto"], [1, 4], [1, 2], **kwargs)
    assert {m for m, _, _ in ra.predictions} == {"gda", "auto", TRANSDUCTIVE_METHOD}
    for key, pred in ra.predictions.items():
        np.testing.assert_array_equal(rb.predictions[key], pred)
    top1 = {(r["method"], r["shots"], r["seed"]): r["top1"] for r in ra.runs}
    assert any(top1[(r["method"], r["shots"], r["seed"])] != r["top1"] for r in rb.runs)  # only the labels moved


def test_the_transductive_method_is_never_worse_than_gda_on_validation(store):
    report = run_evaluation(store, ["gda"], [2, 4], [1, 2, 3], feature_set="clip", transductive=True)
    runs = [r for r in report.runs if r["method"] == TRANSDUCTIVE_METHOD]
    assert len(runs) == 6 and all(r["hyperparameters"]["strength"] >= 0 for r in runs)


def test_pool_centring_takes_the_pool_mean_and_the_model_keeps_it(store, tmp_path):
    with FeatureStore(store) as s:
        X, _ = s.to_numpy("train", "clip")
        protocol = resolve_protocol(s, ["gda"], feature_set="clip", center="pool")
        mean = pool_mean(s, protocol, chunk_rows=7)
    assert protocol.pool_split == "train"
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-5, atol=1e-7)
    meta = fit_from_store(store, "gda", tmp_path / "m.h5", shots=4, seed=1, feature_set="clip", center="pool")
    model, saved = load_model(tmp_path / "m.h5")
    assert meta["center"] == saved["center"] == "pool"
    np.testing.assert_allclose(model.center_, mean, rtol=1e-6)
    assert model.temperature_ == saved["temperature"] != 1.0


def test_each_run_reports_the_ece_before_and_after_calibration(store):
    report = run_evaluation(store, ["gda"], [4], [1], feature_set="clip", center="support")
    run = report.runs[0]
    with FeatureStore(store) as s:
        ids = np.asarray(s.ids("train")).astype(str)
        rows = np.flatnonzero(np.isin(ids, report.supports[0]["ids"]))
        X, y = s.features("train", "clip", rows), s.labels("train", rows)
        Xv, yv = s.to_numpy("val", "clip")
        Xt, yt = s.to_numpy("test", "clip")
    clf = GDAClassifier(center="support").fit(X, y).calibrate(Xv, yv)
    z = clf.logits(Xt).astype(np.float64)
    assert run["ece"] == pytest.approx(expected_calibration_error(scipy.special.softmax(z, axis=1), yt), abs=1e-6)
    assert run["ece_calibrated"] == pytest.approx(
        expected_calibration_error(scipy.special.softmax(z / clf.temperature_, axis=1), yt), abs=1e-6)
    assert run["temperature"] == pytest.approx(clf.temperature_, rel=1e-6)
    assert report.summary("ece_calibrated")["gda"][4][0] == run["ece_calibrated"]


def test_auto_reports_the_selected_candidate(store):
    report = run_evaluation(store, ["auto"], [4], [1, 2], feature_set="clip")
    names = {"gda+ncm+zeroshot", "zeroshot", "gda", "ncm", "gda-ensemble", "tip"}
    assert all(r["hyperparameters"]["selected"] in names for r in report.runs)


def test_cross_store_scores_the_other_stores_test_split(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    write_store(a)
    write_store(b, seed=1)
    write_store(c, clip_provenance={**CLIP_PROVENANCE, "model": "other"})
    cross = run_evaluation(a, ["gda"], [4], [1], feature_set="clip", test_store=str(b))
    with FeatureStore(b) as s:
        assert cross.config["n_test"] == s.n_rows("test")
        assert cross.config["test_store"] == str(b.resolve())
    own = run_evaluation(a, ["gda"], [4], [1], feature_set="clip")
    assert cross.runs[0]["top1"] != own.runs[0]["top1"]
    with pytest.raises(StoreMismatchError, match="different model"):
        run_evaluation(a, ["gda"], [4], [1], feature_set="clip", test_store=str(c))


def test_class_split_and_harmonic_mean():
    assert [list(p) for p in class_split(5)] == [[0, 1, 2], [3, 4]]
    assert [list(p) for p in class_split(10)] == [list(range(5)), list(range(5, 10))]
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / 1.2)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_base_to_new_fits_on_base_classes_and_scores_new_ones_zero_shot(store):
    report = run_evaluation(store, ["gda", "gda-zs"], [2], [1, 2], feature_set="clip", base_to_new=True)
    assert report.metrics == BASE_TO_NEW_METRICS
    assert report.config["base_classes"] == [0, 1, 2] and report.config["new_classes"] == [3, 4]
    with FeatureStore(store) as s:
        Xt, yt = s.to_numpy("test", "clip")
        text = s.text("simple")
        ids = np.asarray(s.ids("train")).astype(str)
        support = np.isin(ids, report.supports[0]["ids"])
        assert set(s.labels("train")[support]) == {0, 1, 2}
    new = yt >= 3
    keep = np.isin(text.class_index, [3, 4])
    zs = ZeroShotClassifier(text_embeddings=text.embeddings[keep], class_index=text.class_index[keep] - 3).fit(Xt)
    new_acc = float(np.mean(zs.predict(Xt[new]) == yt[new] - 3))
    for run in report.runs:
        assert run["new"] == pytest.approx(new_acc)
        assert run["hm"] == pytest.approx(harmonic_mean(run["base"], run["new"]))
    assert set(report.summary("hm")) == {"gda", "gda-zs"}


def test_base_to_new_needs_text(store_no_val):
    with pytest.raises(ProtocolError, match="zero-shot"):
        run_evaluation(store_no_val, ["gda"], [2], [1], base_to_new=True)


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"center": "mean"}, "center"),
        ({"center": "transductive"}, "center"),
        ({"pool_split": "test"}, "pool_split"),
        ({"base_to_new": True, "transductive": True}, "base_to_new"),
    ],
)
def test_new_options_are_checked_when_made(values, param):
    with pytest.raises(ValueError) as info:
        ProtocolOptions(**values)
    assert info.value.param == param


def test_fit_refuses_the_evaluation_only_protocols(store, tmp_path):
    with pytest.raises(ValueError) as info:
        fit_from_store(store, "gda", tmp_path / "m.h5", shots=2, seed=1, feature_set="clip", transductive=True)
    assert info.value.param == "transductive"

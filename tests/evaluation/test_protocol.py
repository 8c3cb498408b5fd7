import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipcache import FeatureStore, StoreMismatchError
from clipcache.classifiers import load_model, save_model
from clipcache.errors import InvalidParameterError
from clipcache.evaluation import (
    METHODS,
    ProtocolError,
    ProtocolOptions,
    fit_from_store,
    predict_to_csv,
    resolve_protocol,
    run_evaluation,
)
from clipcache.evaluation.protocol import split_rows
from tests.classifiers.synth import write_store

DATA = Path(__file__).parent / "data"


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_zero_shot_without_text_is_a_clear_error(store_no_val):
    with FeatureStore(store_no_val) as s, pytest.raises(ProtocolError, match="no text embeddings"):
        resolve_protocol(s, ["zeroshot"])


def test_text_from_another_model_is_refused(tmp_path):
    path = tmp_path / "mixed.h5"
    write_store(path, text_model="other-clip")
    with FeatureStore(path) as s, pytest.raises(StoreMismatchError, match="different models"):
        resolve_protocol(s, ["tip"], feature_set="clip")


def test_fusion_needs_aux_feature_set(store):
    with FeatureStore(store) as s, pytest.raises(ProtocolError, match="give aux_feature_set") as err:
        resolve_protocol(s, ["fusion"], feature_set="clip")
    assert err.value.param == "aux_feature_set"


def test_two_feature_sets_and_none_chosen_names_the_parameter(store):
    with FeatureStore(store) as s, pytest.raises(ProtocolError, match="has feature sets aux, clip; give feature_set") as err:
        resolve_protocol(s, ["gda"])
    assert err.value.param == "feature_set"


def test_base_defaults_to_class_mean_without_text(store_no_val):
    with FeatureStore(store_no_val) as s:
        assert resolve_protocol(s, ["tip"]).base == "ncm"


def test_options_object_and_keyword_overrides_resolve_alike(store):
    options = ProtocolOptions(feature_set="clip", aux_feature_set="aux", val_per_class=5)
    with FeatureStore(store) as s:
        from_object = resolve_protocol(s, ["fusion"], options)
        from_keywords = resolve_protocol(s, ["fusion"], feature_set="clip", aux_feature_set="aux", val_per_class=5)
        overridden = resolve_protocol(s, ["fusion"], options, val_split=None, test_split=None)
    assert from_object == from_keywords
    assert (from_object.feature_set, from_object.aux_feature_set, from_object.text, from_object.base) == (
        "clip", "aux", "simple", "zeroshot")
    assert (from_object.val_split, from_object.test_split, overridden.test_split) == ("val", "test", None)
    assert from_object.classes == [f"class{i}" for i in range(5)]


def test_an_unknown_option_is_a_type_error(store):
    with FeatureStore(store) as s, pytest.raises(TypeError, match="features"):
        resolve_protocol(s, ["gda"], features="clip")


@pytest.mark.parametrize(
    "values, param",
    [({"base": "svm"}, "base"), ({"val_per_class": 0}, "val_per_class"), ({"val_per_class": -3}, "val_per_class"),
     ({"feature_set": "clip", "aux_feature_set": "clip"}, "aux_feature_set"),
     ({"val_split": "test"}, "val_split"), ({"test_split": "train"}, "test_split")],
)
def test_bad_option_values_are_value_errors_naming_the_parameter(values, param):
    with pytest.raises(InvalidParameterError) as err:
        ProtocolOptions(**values)
    assert err.value.param == param and isinstance(err.value, ValueError)


@pytest.mark.parametrize("call", [
    lambda path, out: run_evaluation(path, ["svm"], [1], [1]),
    lambda path, out: run_evaluation(path, ["gda"], [-1], [1]),
    lambda path, out: fit_from_store(path, "gda", out, shots=-2, seed=1),
    lambda path, out: fit_from_store(path, "svm", out, shots=2, seed=1),
])
def test_bad_parameters_are_refused_before_the_store_is_opened(tmp_path, call):
    missing = tmp_path / "no-such-store.h5"  # opening it would raise a StoreError, not a ValueError
    with pytest.raises(InvalidParameterError):
        call(missing, tmp_path / "m.npz")


def test_store_val_split_is_used_when_present(store):
    report = run_evaluation(store, ["gda"], [2], [1], feature_set="clip")
    assert report.config["val"] == {"split": "val", "carved": False, "n": 40, "seed": None}


def test_val_is_not_the_default_validation_split_when_it_is_the_test_split(store):
    with FeatureStore(store) as s:
        protocol = resolve_protocol(s, ["gda"], feature_set="clip", test_split="val")
    assert (protocol.val_split, protocol.test_split) == (None, "val")


def test_report_config_names_the_feature_sets(store):
    config = run_evaluation(store, ["fusion"], [1], [1], feature_set="clip", aux_feature_set="aux").config
    assert (config["feature_set"], config["aux_feature_set"], config["text"], config["base"]) == ("clip", "aux", "simple", "zeroshot")
    assert "features" not in config and "aux_features" not in config


def test_validation_is_carved_from_train_disjoint_from_support(store_no_val, tmp_path):
    meta = fit_from_store(store_no_val, "tip", tmp_path / "m.npz", shots=8, seed=1, val_per_class=5)
    assert meta["val"] == {"split": "train", "carved": True, "n": 25, "seed": 0}
    with FeatureStore(store_no_val) as s:
        protocol = resolve_protocol(s, ["tip"], val_per_class=5)
        val_ids = set(s.ids("train", split_rows(s, protocol).val_rows))
    assert len(val_ids) == 25 and not val_ids & set(meta["support"]["ids"])


def test_evaluation_is_reproducible_and_records_supports(store):
    a = run_evaluation(store, ["tip", "knn"], [1, 4], [1, 2], feature_set="clip")
    b = run_evaluation(store, ["tip", "knn"], [1, 4], [1, 2], feature_set="clip")
    assert a.runs == b.runs
    assert [(s["shots"], s["seed"]) for s in a.supports] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert len(a.supports[2]["ids"]) == 20


def test_every_method_is_exact_on_separable_classes(tmp_path):
    """Classes 50 noise widths apart: every method must classify every test row right."""
    path = tmp_path / "separable.h5"
    write_store(path, noise=0.05)
    report = run_evaluation(path, METHODS, [4], [1], feature_set="clip", aux_feature_set="aux")
    assert {r["method"]: (r["top1"], r["recall"]) for r in report.runs} == {m: (1.0, 1.0) for m in METHODS}
    assert report.summary()["gda"][4] == (1.0, 0.0)  # one seed: zero-width interval


def test_class_mean_and_zero_shot_accuracies_equal_a_straight_recomputation(store):
    """On overlapping classes (noise 1.2), recompute top-1 from the recorded support ids with numpy."""
    report = run_evaluation(store, ["ncm", "zeroshot"], [1, 4], [1, 2], feature_set="clip")
    with FeatureStore(store) as s:
        ids = s.ids("train")
        x, y = s.features("train", "clip").astype(np.float64), s.labels("train")
        xt, yt = _unit(s.features("test", "clip")), s.labels("test")
        text = s.text("simple")
    weights = _unit([_unit(text.embeddings[text.class_index == c]).mean(axis=0) for c in range(5)])
    zero_shot = float(np.mean((xt @ weights.T).argmax(axis=1) == yt))
    expected = {}
    for support in report.supports:
        rows = np.flatnonzero(np.isin(ids, support["ids"]))
        means = _unit([_unit(x[rows][y[rows] == c]).mean(axis=0) for c in range(5)])
        expected[("ncm", support["shots"], support["seed"])] = float(np.mean((xt @ means.T).argmax(axis=1) == yt))
        expected[("zeroshot", support["shots"], support["seed"])] = zero_shot
    got = {(r["method"], r["shots"], r["seed"]): r["top1"] for r in report.runs}
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.3 < zero_shot < 1.0 and len(set(expected.values())) > 2  # neither trivial nor degenerate


def test_fit_on_a_custom_support_split(store, tmp_path):
    with FeatureStore(store, "a") as s:
        x = s.features("train", "clip", slice(0, 30))
        y = np.random.default_rng(0).permutation(np.arange(5).repeat(6))  # pseudo-labels
        s.create_split("support", ["clip"])
        ids = [f"s{i}" for i in range(30)]
        s.append("support", ids=ids, paths=ids, labels=y, features={"clip": x})
        s.mark_complete("support")
    meta = fit_from_store(store, "gda", tmp_path / "g.h5", shots=0, seed=0, feature_set="clip", train_split="support")
    assert meta["support"]["n"] == 30 and meta["train_split"] == "support"
    assert meta["support"]["ids"] == ids


def test_fitted_model_metadata_uses_the_new_keys(store, tmp_path):
    meta = fit_from_store(store, "fusion", tmp_path / "f.npz", shots=2, seed=1, feature_set="clip", aux_feature_set="aux")
    _, saved = load_model(tmp_path / "f.npz")
    assert saved == meta
    assert (saved["feature_set"], saved["aux_feature_set"]) == ("clip", "aux")
    assert "features" not in saved and "aux_features" not in saved
    assert set(saved["identities"]) == {"clip", "aux"}


def test_predict_refuses_a_store_with_other_features(store, tmp_path):
    model = tmp_path / "m.h5"
    fit_from_store(store, "gda", model, shots=4, seed=1, feature_set="clip")
    other = tmp_path / "other.h5"
    write_store(other)
    with FeatureStore(other, "a") as s:
        s.h5["feature_sets/clip"].attrs["provenance"] = '{"backbone": "open_clip", "model": "big", "pretrained": "x"}'
    with pytest.raises(StoreMismatchError, match="different model"):
        predict_to_csv(other, model, tmp_path / "p.csv")


def test_predict_csv_holds_exactly_the_model_predictions(store, tmp_path):
    model = tmp_path / "m.npz"
    fit_from_store(store, "gda", model, shots=4, seed=1, feature_set="clip")
    n = predict_to_csv(store, model, tmp_path / "p.csv", chunk_rows=64)  # three blocks: 64, 64, 22
    est, _ = load_model(model)
    with FeatureStore(store) as s:
        proba = est.predict_proba(s.features("test", "clip"))
        ids, paths, labels = s.ids("test"), s.paths("test"), s.labels("test")
    pred = proba.argmax(axis=1)
    expected = [["id", "path", "label", "pred", "pred_name", "confidence"]] + [
        [str(ids[i]), str(paths[i]), str(labels[i]), str(pred[i]), f"class{pred[i]}", f"{proba[i].max():.6f}"]
        for i in range(150)
    ]
    assert n == 150
    assert _read_csv(tmp_path / "p.csv") == expected


def test_predict_reads_the_class_list_once(tmp_path, monkeypatch):
    """Issue 13: the class list was read from the file once per output row."""
    path = tmp_path / "big.h5"
    write_store(path, per_class={"train": 10, "val": 4, "test": 400}, text=False, aux=False)  # 2,000 test rows
    fit_from_store(path, "ncm", tmp_path / "m.npz", shots=2, seed=1)
    reads = []
    original = FeatureStore.classes

    def counting(self):
        reads.append(1)
        return original.fget(self)

    monkeypatch.setattr(FeatureStore, "classes", property(counting))
    assert predict_to_csv(path, tmp_path / "m.npz", tmp_path / "p.csv", chunk_rows=500) == 2000
    assert len(reads) == 1
    assert len(_read_csv(tmp_path / "p.csv")) == 2001


def test_a_model_saved_by_0_1_0_with_the_old_metadata_keys_still_predicts(tmp_path):
    """tests/evaluation/data/fusion-0.1.0.npz records ``features``/``aux_features``; predict reads them."""
    store = tmp_path / "store.h5"
    write_store(store)  # seeded: the store the file was fitted on (see data/README.md)
    model = tmp_path / "fusion-0.1.0.npz"
    shutil.copy(DATA / "fusion-0.1.0.npz", model)
    _, metadata = load_model(model)
    assert (metadata["features"], metadata["aux_features"]) == ("clip", "aux") and "feature_set" not in metadata
    predict_to_csv(store, model, tmp_path / "p.csv")
    got, old = _read_csv(tmp_path / "p.csv"), _read_csv(DATA / "fusion-0.1.0.predictions.csv")
    assert [row[:5] for row in got] == [row[:5] for row in old]
    np.testing.assert_allclose([float(r[5]) for r in got[1:]], [float(r[5]) for r in old[1:]], atol=2e-6)


def test_old_metadata_keys_give_the_same_predictions_as_the_new_ones(store, tmp_path):
    new = tmp_path / "new.npz"
    fit_from_store(store, "fusion", new, shots=4, seed=2, feature_set="clip", aux_feature_set="aux")
    est, meta = load_model(new)
    meta["features"], meta["aux_features"] = meta.pop("feature_set"), meta.pop("aux_feature_set")
    save_model(est, tmp_path / "old.npz", meta)
    predict_to_csv(store, new, tmp_path / "new.csv")
    predict_to_csv(store, tmp_path / "old.npz", tmp_path / "old.csv")
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes()


def _views_store(path, n_images=12, views=3, n_classes=3, d=8):
    """Each image stored as ``views`` rows under one id, view index 0..views-1."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_images) % n_classes, views)
    x = rng.normal(size=(n_images * views, d)).astype(np.float32) + 3 * np.eye(n_classes, d)[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"img{i:03d}" for i in np.repeat(np.arange(n_images), views)]
    with FeatureStore(path, "w") as s:
        s.set_classes([f"c{i}" for i in range(n_classes)])
        s.add_feature_set("f", d, provenance={"model": "m"})
        s.create_split("train", ["f"])
        s.append("train", ids=ids, paths=ids, labels=labels, features={"f": x}, views=np.tile(np.arange(views), n_images))
    return path


def test_views_of_one_image_stay_together_in_support_and_validation(tmp_path):
    path = _views_store(tmp_path / "views.h5")
    meta = fit_from_store(path, "gda", tmp_path / "m.npz", shots=2, seed=1, val_per_class=1)
    assert meta["val"]["n"] == 3 * 3  # one image per class, each with its 3 views
    support_ids = meta["support"]["ids"]
    assert len(support_ids) == len(set(support_ids)) == 2 * 3  # k shots = k images
    with FeatureStore(path) as s:
        rows = split_rows(s, resolve_protocol(s, ["gda"], val_per_class=1, test_split=None))
        val_ids = s.ids("train", rows.val_rows)
        support_rows = rows.expand(np.flatnonzero(np.isin(s.ids("train"), support_ids)))
        assert len(support_rows) == 2 * 3 * 3  # every view of each support image
        assert sorted(s.views("train", support_rows)) == sorted([0, 1, 2] * 6)
    assert not set(val_ids) & set(support_ids)
    assert all((val_ids == i).sum() == 3 for i in set(val_ids))


@pytest.mark.parametrize(
    "splits, message",
    [({"val_split": "test"}, "validation split 'test' must differ"),
     ({"test_split": "train"}, "test split 'train' must differ")],
)
def test_hyper_parameters_and_scores_never_touch_the_support_split_or_test(store, splits, message):
    with FeatureStore(store) as s, pytest.raises(InvalidParameterError, match=message):
        resolve_protocol(s, ["tip"], feature_set="clip", **splits)

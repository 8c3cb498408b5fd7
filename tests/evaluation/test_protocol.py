import numpy as np
import pytest

from clipcache import FeatureStore, StoreMismatchError
from clipcache.classifiers import load_model
from clipcache.evaluation import (
    ProtocolError,
    fit_from_store,
    predict_to_csv,
    resolve_protocol,
    run_evaluation,
)
from tests.classifiers.synth import write_store


def test_zero_shot_without_text_is_a_clear_error(store_no_val):
    with FeatureStore(store_no_val) as s, pytest.raises(ProtocolError, match="no text embeddings"):
        resolve_protocol(s, ["zeroshot"])


def test_text_from_another_model_is_refused(tmp_path):
    path = tmp_path / "mixed.h5"
    write_store(path, text_model="other-clip")
    with FeatureStore(path) as s, pytest.raises(StoreMismatchError, match="different models"):
        resolve_protocol(s, ["tip"], features="clip")


def test_fusion_needs_aux_features(store):
    with FeatureStore(store) as s, pytest.raises(ProtocolError, match="--aux-features"):
        resolve_protocol(s, ["fusion"], features="clip")


def test_base_defaults_to_class_mean_without_text(store_no_val):
    with FeatureStore(store_no_val) as s:
        assert resolve_protocol(s, ["tip"]).base == "ncm"


def test_store_val_split_is_used_when_present(store):
    report = run_evaluation(store, ["gda"], [2], [1], features="clip")
    assert report.config["val"] == {"split": "val", "carved": False, "n": 40, "seed": None}


def test_validation_is_carved_from_train_disjoint_from_support(store_no_val, tmp_path):
    meta = fit_from_store(store_no_val, "tip", tmp_path / "m.npz", shots=8, seed=1, val_per_class=5)
    assert meta["val"] == {"split": "train", "carved": True, "n": 25, "seed": 0}
    from clipcache.evaluation.protocol import split_rows

    with FeatureStore(store_no_val) as s:
        protocol = resolve_protocol(s, ["tip"], val_per_class=5)
        val_ids = set(s.ids("train", split_rows(s, protocol).val_rows))
    assert not val_ids & set(meta["support"]["ids"])


def test_evaluation_is_reproducible_and_records_supports(store):
    a = run_evaluation(store, ["tip", "knn"], [1, 4], [1, 2], features="clip")
    b = run_evaluation(store, ["tip", "knn"], [1, 4], [1, 2], features="clip")
    assert a.runs == b.runs
    assert [(s["shots"], s["seed"]) for s in a.supports] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert len(a.supports[2]["ids"]) == 20


def test_every_method_runs_above_chance(store):
    methods = ["zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn"]
    report = run_evaluation(store, methods, [4], [1], features="clip", aux_features="aux")
    top1 = {r["method"]: r["top1"] for r in report.runs}
    assert set(top1) == set(methods) and all(0.2 < v <= 1.0 for v in top1.values())
    assert report.summary()["gda"][4][1] == 0.0  # one seed: zero-width interval


def test_fit_on_a_custom_support_split(store, tmp_path):
    with FeatureStore(store, "a") as s:
        x, y = s.features("train", "clip", slice(0, 30)), s.labels("train", slice(0, 30))
        rng = np.random.default_rng(0)
        y = rng.permutation(np.arange(5).repeat(6))  # pseudo-labels
        s.create_split("support", ["clip"])
        ids = [f"s{i}" for i in range(30)]
        s.append("support", ids=ids, paths=ids, labels=y, features={"clip": x})
        s.mark_complete("support")
    meta = fit_from_store(store, "gda", tmp_path / "g.h5", shots=0, seed=0, features="clip", train_split="support")
    assert meta["support"]["n"] == 30 and meta["train_split"] == "support"


def test_predict_refuses_a_store_with_other_features(store, tmp_path):
    model = tmp_path / "m.h5"
    fit_from_store(store, "gda", model, shots=4, seed=1, features="clip")
    other = tmp_path / "other.h5"
    write_store(other)
    with FeatureStore(other, "a") as s:
        s.h5["feature_sets/clip"].attrs["provenance"] = '{"backbone": "open_clip", "model": "big", "pretrained": "x"}'
    with pytest.raises(StoreMismatchError, match="different model"):
        predict_to_csv(other, model, tmp_path / "p.csv")


def test_predict_writes_one_row_per_sample_matching_the_model(store, tmp_path):
    model = tmp_path / "m.npz"
    fit_from_store(store, "gda", model, shots=4, seed=1, features="clip")
    n = predict_to_csv(store, model, tmp_path / "p.csv")
    rows = (tmp_path / "p.csv").read_text().splitlines()
    est, _ = load_model(model)
    with FeatureStore(store) as s:
        expected = est.predict(s.features("test", "clip"))
    assert n == 150 and len(rows) == 151
    assert [int(r.split(",")[3]) for r in rows[1:]] == expected.tolist()


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
    from clipcache.evaluation.protocol import split_rows

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
    with FeatureStore(store) as s, pytest.raises(ProtocolError, match=message):
        resolve_protocol(s, ["tip"], features="clip", **splits)

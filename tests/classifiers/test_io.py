import json

import h5py
import numpy as np
import pytest

from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    ModelFileError,
    TipAdapter,
    ZeroShotClassifier,
    load_model,
    save_model,
)


def _fuse(X):
    return np.hstack([X, X[:, :4] ** 2])


def _fitted(name, blobs, text_weights):
    X, y, Xv, yv = blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"]
    zs = ZeroShotClassifier(**text_weights)
    if name == "fusion":
        return LogitBiasFusion(aux_dim=4, base=zs, aux=GDAClassifier()).fit(_fuse(X), y, _fuse(Xv), yv)
    return {
        "zeroshot": lambda: zs.fit(X, y),
        "ncm": lambda: ClassMeanClassifier().fit(X, y),
        "gda": lambda: GDAClassifier(precision="ledoit-wolf").fit(X, y),
        "gda-zs": lambda: LogitEnsemble(base=zs, model=GDAClassifier()).fit(X, y, Xv, yv),
        "tip": lambda: TipAdapter(base=zs).fit(X, y, Xv, yv),
        "knn": lambda: KNNClassifier(n_neighbors=3, weights="distance").fit(X, y),
    }[name]()


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("name", ["zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn"])
def test_saved_model_predicts_identically(tmp_path, blobs, text_weights, name, suffix):
    est = _fitted(name, blobs, text_weights)
    path = save_model(est, tmp_path / f"m{suffix}", {"shots": 8})
    loaded, meta = load_model(path)
    assert meta == {"shots": 8} and type(loaded) is type(est)
    Xt = _fuse(blobs["Xt"]) if name == "fusion" else blobs["Xt"]
    np.testing.assert_array_equal(loaded.predict_proba(Xt), est.predict_proba(Xt))


def test_npz_model_has_no_object_arrays(tmp_path, blobs, text_weights):
    path = save_model(_fitted("tip", blobs, text_weights), tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_unknown_class_in_file_is_refused(tmp_path, blobs, text_weights):
    path = save_model(_fitted("ncm", blobs, text_weights), tmp_path / "m.h5")
    with h5py.File(path, "r+") as h5:
        doc = json.loads(h5.attrs["__clipcache_model__"])
        doc["estimator"]["class"] = "os.system"
        h5.attrs["__clipcache_model__"] = json.dumps(doc)
    with pytest.raises(ModelFileError, match="unknown classifier"):
        load_model(path)


def test_not_a_model_file_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a clipcache model file"):
        load_model(path)


def test_wrong_suffix_is_refused(tmp_path, blobs, text_weights):
    with pytest.raises(ModelFileError, match=r"\.h5, \.hdf5 or \.npz"):
        save_model(_fitted("ncm", blobs, text_weights), tmp_path / "m.pkl")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize(
    "labels",
    [
        np.array([3, 7, 9, 11, 20]),
        np.array(["cat", "dog", "owl", "emu", "yak"]),
        np.array(["a", "bb", "ccc", "dddd", "e"], dtype="<U10"),  # wider than the longest label
        np.array([0.0, 1.0, 2.0, 5.0, 10.0]),
    ],
    ids=["int", "str", "wide-str", "float"],
)
@pytest.mark.parametrize("name", ["ncm", "knn", "tip"])
def test_saved_model_keeps_label_dtype_and_values(tmp_path, blobs, name, suffix, labels):
    y = labels[blobs["y"]]
    est = {
        "ncm": ClassMeanClassifier(),
        "knn": KNNClassifier(n_neighbors=3),
        "tip": TipAdapter(),
    }[name].fit(blobs["X"], y)
    before = est.predict(blobs["Xt"])
    assert before.dtype == labels.dtype
    loaded, _ = load_model(save_model(est, tmp_path / f"m{suffix}"))
    after = loaded.predict(blobs["Xt"])
    assert after.dtype == labels.dtype
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(loaded.classes_, np.unique(labels))


def test_h5_written_before_dtypes_were_recorded_reads_strings_as_str(tmp_path, blobs):
    est = ClassMeanClassifier().fit(blobs["X"], np.array(["cat", "dog", "owl", "emu", "yak"])[blobs["y"]])
    path = save_model(est, tmp_path / "m.h5")
    with h5py.File(path, "r+") as h5:
        del h5["est/attrs/classes_"].attrs["numpy_dtype"]
    loaded, _ = load_model(path)
    assert loaded.classes_.dtype == np.dtype("<U3")
    np.testing.assert_array_equal(loaded.predict(blobs["Xt"]), est.predict(blobs["Xt"]))


def test_is_model_file_reads_the_content_not_the_suffix(tmp_path, blobs, text_weights):
    from clipcache.classifiers.io import is_model_file
    from tests.conftest import write_synthetic_store

    est = _fitted("ncm", blobs, text_weights)
    save_model(est, tmp_path / "m.h5")
    npz = save_model(est, tmp_path / "m.npz")
    (tmp_path / "npz-named.h5").write_bytes(npz.read_bytes())
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    write_synthetic_store(tmp_path / "store.h5")
    (tmp_path / "text.h5").write_text("hello")
    (tmp_path / "truncated.npz").write_bytes(npz.read_bytes()[:100])
    assert [is_model_file(tmp_path / n) for n in ("m.h5", "m.npz", "npz-named.h5")] == [True, True, True]
    for name in ("plain.npz", "store.h5", "text.h5", "truncated.npz", "missing.h5"):
        assert not is_model_file(tmp_path / name), name


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_model_arrays_that_do_not_fit_together_are_refused_on_load(tmp_path, blobs, text_weights, suffix):
    est = _fitted("knn", blobs, text_weights)
    est.classes_ = est.classes_[:-1]  # one class fewer than the stored labels index
    est.n_features_in_ += 1
    path = save_model(est, tmp_path / f"m{suffix}")
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: the model file is damaged (its KNNClassifier ")
    assert str(err.value).endswith("; give a file written by save_model (clipcache fit)")

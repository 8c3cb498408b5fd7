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

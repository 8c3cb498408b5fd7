"""A store written in format version 1, frozen under tests/data/, reads back exactly.

``tests/data/store-v1.h5`` was written once by ``tests/data/make_store_v1.py``
and is never regenerated: these tests read that file, so a reader that changes
the meaning of a version-1 element fails here. The expected values come from
the generator's rules (integer arithmetic, recomputed here) and from literals.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from clipcache import FeatureSetInfo, FeatureStore
from clipcache.feature_store import schema
from tests.data import make_store_v1 as v1

FROZEN = Path(__file__).resolve().parents[1] / "data" / "store-v1.h5"
FROZEN_SHA256 = "68d32da4380e3ead222a6c6013e130a05f8d51831a7b97e42d1839b513444d72"
ROWS = {"train": 21, "val": 10, "test": 0}
FEATURE_ROWS = {"train": {"clip": 21, "aux": 21}, "val": {"clip": 10, "aux": 3}, "test": {"clip": 0, "aux": 0}}


def _f16(x: np.ndarray) -> np.ndarray:
    """What a float16 feature set returns for features written as ``x``."""
    return x.astype(np.float16).astype(np.float32)


def _expected_features(split: str, feature_set: str) -> np.ndarray:
    n = FEATURE_ROWS[split][feature_set]
    if feature_set == "clip":
        return v1.clip_rows(split, 0, n)
    return _f16(v1.aux_rows(split, 0, n))


@pytest.fixture(scope="module")
def store():
    with FeatureStore(FROZEN) as s:
        yield s


def test_the_frozen_file_is_unchanged():
    digest = hashlib.sha256(FROZEN.read_bytes()).hexdigest()
    assert digest == FROZEN_SHA256, "tests/data/store-v1.h5 is frozen: restore it from git, never regenerate it"


def test_the_rules_are_the_ones_frozen():
    # Pin the generator's rules too, so that an edit to them cannot move the expectations with the file.
    assert v1.clip_rows("train", 0, 1)[0, 0] == np.float32(-0.48693088)
    np.testing.assert_array_equal(v1.aux_rows("val", 3, 4)[0], (np.array([-21, -10, 1, 12, 23]) / 7).astype(np.float32))
    assert v1.labels("train", 0, 5).tolist() == [-1, 0, 1, 2, -1]
    assert v1.ids("val", 9, 10) == ["val/0009"]


def test_root_classes_and_metadata(store):
    assert store.uuid == v1.STORE_UUID
    assert store.classes == ["cat", "dog", "café"]
    assert store.metadata == v1.METADATA
    assert store.metadata[schema.METADATA_EXTRACT]["batch_size"] == 7
    assert store.metadata[schema.METADATA_SHARD]["items"]["val"] == [0, 10, 10]
    assert store.metadata[schema.METADATA_SUPPORT_SETS]["support-k2"]["pool"] == "train"


def test_feature_sets(store):
    assert store.feature_sets == {
        "clip": FeatureSetInfo("clip", 8, "float32", True, v1.CLIP_PROVENANCE),
        "aux": FeatureSetInfo("aux", 5, "float16", False, v1.AUX_PROVENANCE),
    }


def test_split_state(store):
    assert store.splits == ["test", "train", "val"]
    for split, n in ROWS.items():
        assert store.n_rows(split) == n
        assert store.split_feature_sets(split) == ["clip", "aux"]  # train and val got "aux" after their rows
        assert {f: store.feature_rows(split, f) for f in ("clip", "aux")} == FEATURE_ROWS[split]
    assert [store.is_complete(s) for s in ("train", "val", "test")] == [True, False, False]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_columns(store, split):
    n = ROWS[split]
    assert list(store.ids(split)) == v1.ids(split, 0, n)
    assert list(store.paths(split)) == v1.paths(split, 0, n)
    np.testing.assert_array_equal(store.labels(split), v1.labels(split, 0, n))
    np.testing.assert_array_equal(store.views(split), v1.views(split, 0, n))
    assert store.labels(split).dtype == np.int64 and store.views(split).dtype == np.int16
    assert store.skipped(split) == v1.SKIPPED[split]


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("feature_set", ["clip", "aux"])
def test_features_read_exactly(store, split, feature_set):
    want = _expected_features(split, feature_set)
    got = store.features(split, feature_set)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_float16_features_are_really_half_precision(store):
    raw = v1.aux_rows("train", 0, 21)
    got = store.features("train", "aux")
    assert store.h5["splits/train/features/aux"].dtype == np.float16
    assert np.abs(got - raw).max() > 0  # would fail if the reader served the float32 input


def test_row_selections_cross_the_frozen_chunks(store):
    # The file was written with 4 clip rows, 12 aux rows and 8 column rows per chunk.
    assert store.h5["splits/train/features/clip"].chunks == (4, 8)
    assert store.h5["splits/train/features/aux"].chunks == (12, 5)
    rows = [20, 0, 7, 7, 13, 4, 19]
    for feature_set in ("clip", "aux"):
        want = _expected_features("train", feature_set)
        np.testing.assert_array_equal(store.features("train", feature_set, rows), want[rows])
        np.testing.assert_array_equal(store.features("train", feature_set, slice(3, 18, 5)), want[3:18:5])
    assert list(store.ids("train", rows)) == [v1.ids("train", 0, 21)[r] for r in rows]
    chunks = list(store.iter_chunks("train", "aux", chunk_rows=5))
    assert [len(c.rows) for c in chunks] == [5, 5, 5, 5, 1]
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), _expected_features("train", "aux"))
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), v1.labels("train", 0, 21))
    x, y = store.to_numpy("val", "aux")  # the labels of the rows that feature set covers
    np.testing.assert_array_equal(x, _expected_features("val", "aux"))
    np.testing.assert_array_equal(y, v1.labels("val", 0, 3))


def test_text_embeddings(store):
    assert store.text_names == ["descriptions", "ensemble"]
    for name, want in v1.text_sets().items():
        text = store.text(name)
        assert text.name == name
        np.testing.assert_array_equal(text.embeddings, want["embeddings"])
        np.testing.assert_array_equal(text.class_index, want["class_index"])
        assert text.embeddings.dtype == np.float32 and text.class_index.dtype == np.int64
        assert text.prompts == want["prompts"]
        assert text.templates == want["templates"]
        assert text.provenance == want["provenance"]
        assert text.normalized is want["normalized"]
    assert store.text("ensemble").prompts[5] == "a drawing of a café."
    assert store.text("descriptions").templates is None


def test_fingerprints_are_stable(store):
    # Saved indexes record these; a change would call every existing index stale.
    assert store.fingerprint("train", "clip") == "e243c5a0b4265e91f5ed33de850b6797"
    assert store.fingerprint("val", "aux") == "0f79ab100ab2f455efb298842be4d620"


def test_text_matches_its_feature_set(store):
    store.check_text_matches("ensemble", "clip")


def test_describe(store):
    got = store.describe()
    assert got.pop("path") == str(FROZEN)
    assert got == {
        "format": "clipcache.feature_store v1",
        "uuid": v1.STORE_UUID,
        "created": v1.CREATED,
        "clipcache_version": "0.1.0",
        "classes": ["cat", "dog", "café"],
        "splits": {
            "test": {"rows": 0, "complete": False, "skipped": 0, "labelled": 0, "views": 0,
                     "features": {"clip": 0, "aux": 0}},
            "train": {"rows": 21, "complete": True, "skipped": 2, "labelled": 15, "views": 2,
                      "features": {"clip": 21, "aux": 21}},
            "val": {"rows": 10, "complete": False, "skipped": 1, "labelled": 7, "views": 1,
                    "features": {"clip": 10, "aux": 3}},
        },
        "feature_sets": {
            "clip": {"dim": 8, "dtype": "float32", "normalized": True, "provenance": v1.CLIP_PROVENANCE},
            "aux": {"dim": 5, "dtype": "float16", "normalized": False, "provenance": v1.AUX_PROVENANCE},
        },
        "text": {
            "descriptions": {"prompts": 4, "dim": 8, "templates": None, "provenance": v1.text_sets()["descriptions"]["provenance"]},
            "ensemble": {"prompts": 6, "dim": 8, "templates": 2, "provenance": v1.text_sets()["ensemble"]["provenance"]},
        },
        "metadata": v1.METADATA,
    }


def test_a_writer_resumes_the_frozen_store(tmp_path):
    path = tmp_path / "copy.h5"
    shutil.copyfile(FROZEN, path)
    with FeatureStore(path, "a") as store:
        store.append_features("val", "aux", v1.aux_rows("val", 3, 10))
        store.mark_complete("val")
        store.append("test", ids=v1.ids("test", 0, 2), paths=v1.paths("test", 0, 2), labels=v1.labels("test", 0, 2),
                     features={"clip": v1.clip_rows("test", 0, 2), "aux": v1.aux_rows("test", 0, 2)})
    with FeatureStore(path) as store:
        assert store.is_complete("val") and store.n_rows("test") == 2
        np.testing.assert_array_equal(store.features("val", "aux"), _f16(v1.aux_rows("val", 0, 10)))
        np.testing.assert_array_equal(store.features("test", "clip"), v1.clip_rows("test", 0, 2))
        np.testing.assert_array_equal(store.features("train", "clip"), v1.clip_rows("train", 0, 21))
        assert store.uuid == v1.STORE_UUID


def _dump(path: Path) -> dict:
    """Every object of an HDF5 file: attributes, dtype, shape, maxshape, chunks and values."""
    out = {}

    def attrs(obj) -> dict:
        return {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            values = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
            out[name] = (attrs(obj), str(obj.dtype), obj.shape, obj.maxshape, obj.chunks, np.asarray(values).tolist())
        else:
            out[name] = attrs(obj)

    with h5py.File(path, "r", locking=False) as f:
        out["/"] = attrs(f)
        f.visititems(visit)
    return out


def test_this_release_still_writes_version_1(tmp_path):
    """The writer of today, fed the generator's calls, makes the same objects as the frozen file."""
    fresh = tmp_path / "fresh.h5"
    v1.write(fresh)
    got, want = _dump(fresh), _dump(FROZEN)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name

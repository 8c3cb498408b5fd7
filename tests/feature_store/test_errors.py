"""Every way a store can be wrong gives one clear error naming the file, in the API and the CLI."""

import multiprocessing
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import (
    FeatureStore,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    StoreMismatchError,
    StoreVersionError,
)
from clipcache.cli import cli
from clipcache.errors import InvalidParameterError
from tests.conftest import unit_rows


def _info_error(path) -> str:
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    return lines[0]


def test_missing_file(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        FeatureStore(tmp_path / "nope.h5")
    assert "nope.h5: no such file" in _info_error(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(StoreFormatError, match="not an HDF5 file"):
        FeatureStore(tmp_path / "x.h5")
    assert "x.h5: not an HDF5 file" in _info_error(tmp_path / "x.h5")


def test_hdf5_but_not_a_store(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(StoreFormatError, match="not a clipcache feature store"):
        FeatureStore(tmp_path / "other.h5")
    assert "not a clipcache feature store" in _info_error(tmp_path / "other.h5")


def test_newer_format_version_says_to_upgrade(synthetic_store):
    path, _ = synthetic_store
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(StoreVersionError, match="format version 2.*pip install -U clipcache"):
        FeatureStore(path)
    assert "version 2" in _info_error(path)


def test_newer_element_version_names_the_element(synthetic_store):
    path, _ = synthetic_store
    with h5py.File(path, "r+") as f:
        f["splits/train"].attrs["encoding_version"] = 7
    with FeatureStore(path) as store, pytest.raises(StoreVersionError, match="/splits/train.*version 7"):
        store.features("train", "clip")


def test_truncated_file(synthetic_store):
    path, _ = synthetic_store
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreFormatError, match="truncated or corrupt"):
        FeatureStore(path)
    assert "truncated or corrupt" in _info_error(path)


def test_corrupt_superblock(synthetic_store):
    path, _ = synthetic_store
    data = bytearray(path.read_bytes())
    data[20:44] = bytes(24)
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in _info_error(path)


def test_feature_set_from_another_model_is_refused(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path, "a") as store:
        with pytest.raises(StoreMismatchError, match="'clip' was made with a different model"):
            store.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "ViT-B-32", "pretrained": "none"})
        with pytest.raises(StoreMismatchError, match="different dim"):
            store.add_feature_set("clip", 32, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        # the same identity is accepted again, whatever else the provenance says, and the stored set is kept
        again = store.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none", "created": "now"})
        assert again.provenance == {"backbone": "open_clip", "model": "tiny", "pretrained": "none"}


def test_different_class_list_is_refused(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path, "a") as store, pytest.raises(StoreMismatchError, match="4 classes"):
        store.set_classes(["x", "y"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": [0, 9]}, "label 9 is outside"),
        ({"x": np.array([[np.nan] * 4, [1, 0, 0, 0]], np.float32)}, "NaN or inf"),
        ({"x": np.ones((2, 4), np.float32)}, "marked normalized but a row has norm 2.0000"),
        ({"x": np.ones((2, 3), np.float32)}, r"shape \(2, 3\), expected \(2, 4\)"),
        ({"ids": ["a"]}, "same length"),
        ({"features": {}}, "needs features for exactly"),
    ],
)
def test_bad_append_is_refused_and_writes_nothing(tmp_path, change, message):
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.set_classes(["a", "b"])
        store.add_feature_set("f", 4)
        store.create_split("s", ["f"])
        x = change.get("x", unit_rows(np.random.default_rng(0), 2, 4))
        kwargs = {"ids": change.get("ids", ["1", "2"]), "paths": ["", ""], "labels": change.get("labels", [0, 1]),
                  "features": change.get("features", {"f": x})}
        with pytest.raises(StoreError, match=message):
            store.append("s", **kwargs)
        assert store.n_rows("s") == 0


def test_complete_split_refuses_appends(synthetic_store):
    path, _ = synthetic_store
    x = unit_rows(np.random.default_rng(0), 1, 16)
    with FeatureStore(path, "a") as store, pytest.raises(StoreError, match="'train' is complete"):
        store.append("train", ids=["z"], paths=[""], labels=[0], features={"clip": x})


def test_read_only_store_refuses_writes(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path) as store, pytest.raises(StoreError, match="opened read-only"):
        store.set_metadata("k", 1)


def test_second_writer_is_locked_out(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path, "a"):
        with pytest.raises(StoreLockedError, match="another process is writing"):
            FeatureStore(path, "a")
        with FeatureStore(path) as reader:  # readers are never locked out
            assert reader.n_rows("train") == 40


def test_a_child_forked_by_a_writer_does_not_keep_the_store_locked(synthetic_store):
    """A process forked while a writer holds the lock (a DataLoader worker) closes its copy of the lock's descriptor:
    once the writer closes, the store can be written again while the child still lives."""
    path, _ = synthetic_store
    context = multiprocessing.get_context("fork")
    done = context.Event()
    with FeatureStore(path, "a"):
        child = context.Process(target=done.wait, args=(60,))
        child.start()
    try:
        with FeatureStore(path, "a") as store:  # StoreLockedError if the child's copy still held the lock
            assert child.is_alive() and store.n_rows("train") == 40
    finally:
        done.set()
        child.join()
    assert child.exitcode == 0


def test_closing_a_writer_unlocks_even_while_a_copy_of_its_descriptor_is_open(synthetic_store):
    """A forked child shares the lock's open file until it has run its fork handler; the writer's close must not
    wait for that: it unlocks before it closes (a copy made with ``dup`` shares the open file as a child's does)."""
    path, _ = synthetic_store
    store = FeatureStore(path, "a")
    copy = os.dup(store._lock._fd)
    try:
        store.close()
        with FeatureStore(path, "a") as again:  # StoreLockedError if only the last copy's close released it
            assert again.n_rows("train") == 40
    finally:
        os.close(copy)


def test_unknown_split_and_feature_set_list_what_exists(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path) as store:
        with pytest.raises(StoreError, match=r"no split 'val' \(the store has: test, train\)"):
            store.labels("val")
        with pytest.raises(StoreError, match="no feature set 'dino'"):
            store.features("train", "dino")
        with pytest.raises(StoreError, match="row 40 is outside the 40 committed rows"):
            store.features("train", "clip", [0, 40])


def test_create_exclusive_refuses_existing_file(synthetic_store):
    path, _ = synthetic_store
    with pytest.raises(StoreError, match="already exists"):
        FeatureStore(path, "x")


def test_split_with_a_foreign_layout_is_a_format_error(synthetic_store):
    path, _ = synthetic_store
    with h5py.File(path, "r+") as f:
        del f["splits/train/ids"]
        f["splits/train"].create_dataset("ids", data=["a"] * 40, dtype=h5py.string_dtype())
    with FeatureStore(path) as store, pytest.raises(StoreFormatError, match="/splits/train/ids is not a string column"):
        store.ids("train")
    with pytest.raises(StoreFormatError, match="not a string column"):
        FeatureStore(path, "a")


def test_text_from_another_model_does_not_match_features(synthetic_store):
    path, _ = synthetic_store
    emb = unit_rows(np.random.default_rng(0), 4, 16)
    with FeatureStore(path, "a") as store:
        store.write_text("same", emb, [0, 1, 2, 3], list("abcd"), provenance={"model": "tiny", "pretrained": "none"})
        store.write_text("other", emb, [0, 1, 2, 3], list("abcd"), provenance={"model": "ViT-B-32"})
        store.write_text("wide", np.ones((4, 8)), [0, 1, 2, 3], list("abcd"), provenance={"model": "tiny"})
        store.check_text_matches("same", "clip")
        with pytest.raises(StoreMismatchError, match="'other' have model 'ViT-B-32' but feature set 'clip' has 'tiny'"):
            store.check_text_matches("other", "clip")
        with pytest.raises(StoreMismatchError, match="dimension 8 but feature set 'clip' has 16"):
            store.check_text_matches("wide", "clip")


def test_unwritable_location_is_a_one_line_error(tmp_path):
    target = tmp_path / "missing-dir" / "s.h5"
    with pytest.raises(StoreError, match="missing-dir/s.h5: cannot open the store for writing"):
        FeatureStore(target, "w")


@pytest.mark.parametrize("chunk_rows", [0, -3, 2.5, True])
def test_iter_chunks_refuses_chunk_rows_below_one(synthetic_store, chunk_rows):
    path, _ = synthetic_store
    with FeatureStore(path) as store:
        with pytest.raises(InvalidParameterError, match="chunk_rows must be a positive number of rows") as err:
            store.iter_chunks("train", "clip", chunk_rows=chunk_rows)  # on the call, before any block is read
    assert err.value.param == "chunk_rows" and isinstance(err.value, ValueError)


def test_unknown_mode_is_a_parameter_error(tmp_path):
    with pytest.raises(InvalidParameterError, match="mode must be one of r, a, w, x, not 'rw'") as err:
        FeatureStore(tmp_path / "s.h5", "rw")
    assert err.value.param == "mode" and not (tmp_path / "s.h5").exists()


def test_errors_name_the_parameter_at_fault(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path) as store:
        calls = {
            "split": lambda: store.labels("val"),
            "feature_set": lambda: store.features("train", "dino"),
            "rows": lambda: store.features("train", "clip", [40]),
            "name": lambda: store.text("nope"),
            "text": lambda: store.check_text_matches("nope", "clip"),
        }
        for param, call in calls.items():
            with pytest.raises(StoreError) as err:
                call()
            assert err.value.param == param
            assert not str(err.value).endswith(".")
    with FeatureStore(path, "a") as store:
        store.create_split("extra", ["clip"])
        with pytest.raises(StoreError, match="label 7 is outside") as err:
            store.append("extra", ids=["z"], paths=[""], labels=[7], features={"clip": unit_rows(np.random.default_rng(0), 1, 16)})
    assert err.value.param == "labels"

"""The way out of a split that an interrupted command left: ``info`` names it, ``drop-split`` removes it.

Also: a half-made split never shows under its name, its hidden leftover is
removed by the next writer, and the store-side checks on what is appended
(values too large for float32 arithmetic) and on what is read (a virtual
merge whose shard file has moved).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore, StoreError, StoreFormatError
from clipcache.cli.main import cli
from clipcache.feature_store import schema
from tests.conftest import unit_rows, write_synthetic_store
from tests.feature_store.faulty import state_of


def _with_empty_split(path, name="sup") -> None:
    write_synthetic_store(path)
    with FeatureStore(path, "a") as store:
        store.create_split(name, ["clip"])


def test_info_names_an_incomplete_split_with_the_way_out(tmp_path):
    path = tmp_path / "s.h5"
    _with_empty_split(path)
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "  sup: 0 rows (0 labelled), INCOMPLETE\n    clip: 0 rows\n" in result.output
    assert f"    resume the command that wrote it, or drop it: clipcache drop-split {path} sup\n" in result.output
    assert "  train: 40 rows (40 labelled), complete\n    clip: 40 rows\nfeature sets:" in result.output  # no advice there


def test_info_advises_resume_for_an_extracted_split(tmp_path):
    path = tmp_path / "s.h5"
    _with_empty_split(path, "test2")
    with FeatureStore(path, "a") as store:
        store.set_metadata(schema.METADATA_SHARD, {"index": 0, "count": 1, "items": {"test2": [0, 9, 9]}})
    out = CliRunner().invoke(cli, ["info", str(path)]).output
    assert f"    finish it with clipcache extract --resume (the same flags), or drop it: clipcache drop-split {path} test2" in out


def test_drop_split_removes_an_incomplete_split_and_its_name_can_be_used_again(tmp_path):
    path = tmp_path / "s.h5"
    _with_empty_split(path)
    before = state_of(path)
    result = CliRunner().invoke(cli, ["drop-split", str(path), "sup"])
    assert result.exit_code == 0, result.output
    assert result.output == f"Dropped split 'sup' (0 rows) from {path}\n"
    after = state_of(path)
    assert after == {**before, "splits": {k: v for k, v in before["splits"].items() if k != "sup"}}
    x = unit_rows(np.random.default_rng(3), 2, 16)
    with FeatureStore(path, "a") as store:
        store.create_split("sup", ["clip"])
        store.append("sup", ids=["a", "b"], paths=["a", "b"], labels=[0, 1], features={"clip": x})
        store.mark_complete("sup")
    np.testing.assert_array_equal(FeatureStore(path).features("sup", "clip"), x)


def test_drop_split_refuses_a_complete_split_unless_forced(tmp_path):
    path = tmp_path / "s.h5"
    write_synthetic_store(path)
    with FeatureStore(path, "a") as store:
        store.set_metadata(schema.METADATA_SUPPORT_SETS, {"test": {"pool": "train"}, "other": {"pool": "train"}})
    result = CliRunner().invoke(cli, ["drop-split", str(path), "test"])
    assert result.exit_code == 1
    assert result.output == f"Error: {path}: split 'test' is complete with 20 rows; set force to drop it anyway (--force)\n"
    assert FeatureStore(path).n_rows("test") == 20
    result = CliRunner().invoke(cli, ["drop-split", str(path), "test", "--force"])
    assert result.exit_code == 0 and "(20 rows)" in result.output
    with FeatureStore(path) as store:
        assert store.splits == ["train"]
        assert store.metadata[schema.METADATA_SUPPORT_SETS] == {"other": {"pool": "train"}}  # its record went with it


def test_drop_split_of_an_unknown_split_lists_the_splits(tmp_path):
    path = tmp_path / "s.h5"
    write_synthetic_store(path)
    with FeatureStore(path, "a") as store, pytest.raises(StoreError, match=r"no split 'nope' \(the store has: test, train\)"):
        store.drop_split("nope")


def test_a_half_made_split_is_hidden_and_dropped_by_the_next_writer(tmp_path):
    """What a writer killed inside create_split leaves: a hidden group that readers never list."""
    path = tmp_path / "s.h5"
    write_synthetic_store(path)
    with FeatureStore(path, "a") as store, store._change("leave a half-made split") as h5:
        h5["splits"].create_group(".new-sup")
    with FeatureStore(path) as store:
        assert store.splits == ["test", "train"] and ".new-sup" in store.h5["splits"]
        with pytest.raises(StoreError, match="no split '.new-sup'"):
            store.n_rows(".new-sup")
    with FeatureStore(path, "a") as store:
        assert ".new-sup" not in store.h5["splits"]
        store.create_split("sup", ["clip"])
        assert store.splits == ["sup", "test", "train"]


def test_a_damaged_split_is_reported_and_can_be_dropped(tmp_path):
    path = tmp_path / "s.h5"
    write_synthetic_store(path)
    with FeatureStore(path, "a") as store, store._change("damage a split") as h5:
        h5["splits"]["broken"] = h5py_soft_link("/nowhere")
    result = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["splits"]["broken"] == {
        "damaged": f"{path}: split 'broken' is damaged and cannot be read; drop it with drop_split"
    }
    assert f"  broken: DAMAGED, cannot be read; drop it: clipcache drop-split {path} broken" in CliRunner().invoke(
        cli, ["info", str(path)]
    ).output
    with pytest.raises(StoreFormatError, match="split 'broken' is damaged"):
        FeatureStore(path).n_rows("broken")
    with FeatureStore(path, "a") as store:  # a writer still opens it
        assert store.drop_split("broken") == 0
    assert state_of(path)["splits"].keys() == {"test", "train"}


def h5py_soft_link(target: str):
    import h5py

    return h5py.SoftLink(target)


# -- what is appended, what is read -------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        ("float32", 1e30, "hold a value of 1e+30, so large that a row's squared norm overflows float32"),
        ("float32", 3e19, "hold a value of 3e+19, so large that a row's squared norm overflows float32"),
        ("float16", 1e5, "hold a value of 1e+05, larger than float16 storage holds"),
    ],
)
def test_features_too_large_for_float32_arithmetic_are_refused(tmp_path, dtype, value, message):
    path = tmp_path / "s.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(["a", "b"])
        store.add_feature_set("raw", 4, dtype=dtype, normalized=False)
        store.create_split("train", ["raw"])
        x = np.ones((3, 4), np.float32)
        x[1, 2] = value
        with pytest.raises(StoreError, match=re.escape(f"split 'train': features 'raw' {message}; scale the features down")) as info:
            store.append("train", ids=list("xyz"), paths=list("xyz"), labels=[0, 1, 0], features={"raw": x})
        assert info.value.param == "features"
        assert store.n_rows("train") == 0
        x[1, 2] = 1e18 if dtype == "float32" else 6e4  # large, but within float32 norms and float16 storage
        store.append("train", ids=list("xyz"), paths=list("xyz"), labels=[0, 1, 0], features={"raw": x})
    assert np.isfinite(FeatureStore(path).features("train", "raw")).all()


def _virtual_merge(tmp_path):
    from clipcache.extract.merge import merge_stores

    rng = np.random.default_rng(0)
    shards = []
    for i in range(2):
        path = tmp_path / f"shard{i}.h5"
        with FeatureStore(path, "w") as store:
            store.set_classes(["a", "b"])
            store.add_feature_set("clip", 8)
            store.create_split("train", ["clip"])
            x = unit_rows(rng, 5, 8)
            store.append("train", ids=[f"{i}-{j}" for j in range(5)], paths=list("abcde"), labels=[0, 1, 0, 1, 0],
                         features={"clip": x})
            store.mark_complete("train")
            store.set_metadata(schema.METADATA_SHARD, {"index": i, "count": 2, "items": {"train": [5 * i, 5 * i + 5, 10]}})
        shards.append(path)
    merge_stores(shards, tmp_path / "merged.h5", layout="virtual")
    return tmp_path / "merged.h5", shards


def test_a_virtual_merge_whose_shard_moved_names_the_missing_file(tmp_path):
    merged, shards = _virtual_merge(tmp_path)
    whole = FeatureStore(merged).features("train", "clip")
    assert np.isfinite(whole).all() and whole.shape == (10, 8)
    shutil.move(shards[1], tmp_path / "elsewhere.h5")

    message = (f"{merged}: feature set 'clip' of split 'train' maps rows of shard1.h5, which is missing beside the "
               "store; put the shard stores back beside it, or merge them with layout 'copy'")
    with FeatureStore(merged) as store:
        for read in (lambda: store.features("train", "clip", [0]), lambda: store.to_numpy("train", "clip"),
                     lambda: list(store.iter_chunks("train", "clip", chunk_rows=4))):
            with pytest.raises(StoreFormatError) as info:
                read()
            assert str(info.value) == message
        assert list(store.labels("train")) == [0, 1, 0, 1, 0] * 2  # what is not mapped still reads
        assert store.describe()["splits"]["train"]["missing_sources"] == {"clip": ["shard1.h5"]}
    out = CliRunner().invoke(cli, ["info", str(merged)]).output
    assert "    clip: 10 rows, UNREADABLE: shard files missing beside the store: shard1.h5\n" in out
    for command in (["index", str(merged), "--split", "train", "--feature-set", "clip"],
                    ["fit", str(merged), "--method", "ncm", "--shots", "2", "--val-per-class", "1", "-o", str(tmp_path / "m.h5")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1 and result.output == f"Error: {message}\n", command[0]
    shutil.move(tmp_path / "elsewhere.h5", shards[1])
    np.testing.assert_array_equal(FeatureStore(merged).features("train", "clip"), whole)

"""extract(..., add_splits=True) and `extract --add-splits`: shifted copies join an existing store as new splits."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.errors import InvalidParameterError, StoreError, StoreMismatchError
from clipcache.extract.loop import ExtractConfig, RunOptions, extract, recorded_config
from clipcache.feature_store import schema
from tests.extract.conftest import write_image_folder
from tests.extract.helpers import interrupt_append, snapshot

QUIET = RunOptions(progress=False)


def _config(source, **kw) -> ExtractConfig:
    base = dict(source=str(source), aux=("efficientnet-lite0",), image_size=64, batch_size=4)
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture
def base_store(tmp_path):
    """A store extracted from train (2 x 6) and test (2 x 3) shape images."""
    folder = write_image_folder(tmp_path / "images", {"train": 6, "test": 3})
    path = tmp_path / "s.h5"
    extract(path, _config(folder), QUIET)
    return path


def write_manifest(folder):
    """``folder/images.csv`` (path,label,split) over ``folder/<split>/<class>/*.png``, as `clipcache corrupt` writes it."""
    rows = [f"{p.relative_to(folder).as_posix()},{p.parent.name},{p.parent.parent.name}" for p in sorted(folder.glob("*/*/*.png"))]
    (folder / "images.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return folder / "images.csv"


@pytest.fixture
def shifted(tmp_path):
    """A manifest of other images of the same two classes in the splits test-fog-1 (2 x 3) and test-fog-3 (2 x 2)."""
    return write_manifest(write_image_folder(tmp_path / "shifted", {"test-fog-1": 3, "test-fog-3": 2}, seed=7))


def test_added_splits_hold_what_a_fresh_extraction_of_them_holds(base_store, shifted, tmp_path):
    before = snapshot(base_store)
    report = extract(base_store, _config(shifted), QUIET, add_splits=True)
    assert report.rows == {"test-fog-1": 6, "test-fog-3": 4} and report.encoded == 10
    alone = tmp_path / "alone.h5"
    extract(alone, _config(shifted), QUIET)
    after, fresh = snapshot(base_store), snapshot(alone)
    assert {k: after[k] for k in before} == before  # the store's own splits are untouched, byte for byte
    assert after["test-fog-1"] == fresh["test-fog-1"] and after["test-fog-3"] == fresh["test-fog-3"]
    with FeatureStore(base_store) as store:
        assert store.splits == ["test", "test-fog-1", "test-fog-3", "train"]
        added = store.metadata[schema.METADATA_ADDED_SPLITS]
        assert added == {"test-fog-1": _config(shifted).to_json(), "test-fog-3": _config(shifted).to_json()}
        assert store.metadata[schema.METADATA_EXTRACT]["source"] == str((tmp_path / "images").resolve())
        assert set(store.metadata[schema.METADATA_SHARD]["items"]) == {"train", "test", "test-fog-1", "test-fog-3"}


def test_labels_follow_the_store_classes_even_when_the_source_lacks_one(base_store, tmp_path):
    folder = write_image_folder(tmp_path / "sq", {"test-x": 2}, seed=3)
    (folder / "test-x" / "circle").rename(tmp_path / "moved")  # the folder now holds squares only
    extract(base_store, _config(write_manifest(folder)), QUIET, add_splits=True)
    with FeatureStore(base_store) as store:
        assert store.classes == ["circle", "square"] and store.labels("test-x").tolist() == [1, 1]


def test_an_interrupted_add_finishes_when_run_again(base_store, shifted, tmp_path, monkeypatch):
    whole = tmp_path / "whole.h5"
    whole.write_bytes(base_store.read_bytes())
    extract(whole, _config(shifted), QUIET, add_splits=True)
    interrupt_append(monkeypatch, at=2)
    with pytest.raises(KeyboardInterrupt):
        extract(base_store, _config(shifted), QUIET, add_splits=True)
    monkeypatch.undo()
    with FeatureStore(base_store) as store:
        assert store.n_rows("test-fog-1") == 4 and not store.is_complete("test-fog-1")
    report = extract(base_store, _config(shifted), QUIET, add_splits=True)
    assert report.encoded == 6  # the 2 rows after the committed batch, then the 4 of test-fog-3
    assert snapshot(base_store) == snapshot(whole)


@pytest.mark.parametrize(
    ("change", "param"),
    [({"image_size": 96}, "image_size"), ({"dtype": "float16"}, "dtype"), ({"normalize": False}, "normalize"),
     ({"aux": (), "model": "clipcache-tiny-vit", "pretrained": "none"}, "aux")],
    ids=["image_size", "dtype", "normalize", "backbones"],
)
def test_settings_that_change_stored_values_must_be_the_stores(base_store, shifted, change, param):
    before = snapshot(base_store)
    with pytest.raises(StoreMismatchError, match="was extracted with different") as info:
        extract(base_store, _config(shifted, **change), QUIET, add_splits=True)
    assert info.value.param == param
    assert snapshot(base_store) == before


def test_a_split_the_store_holds_is_refused(base_store, tmp_path):
    before = snapshot(base_store)
    with pytest.raises(StoreMismatchError, match="already holds a split 'test'") as info:
        extract(base_store, _config(tmp_path / "images", splits=("test",)), QUIET, add_splits=True)
    assert info.value.param == "splits"
    assert snapshot(base_store) == before


def test_misuse_is_refused_before_any_work(base_store, shifted, tmp_path):
    with pytest.raises(StoreError, match="there is no store to add splits to"):
        extract(tmp_path / "none.h5", _config(shifted), QUIET, add_splits=True)
    assert not (tmp_path / "none.h5").exists()
    with pytest.raises(InvalidParameterError, match="pass neither resume nor overwrite") as info:
        extract(base_store, _config(shifted), QUIET, add_splits=True, resume=True)
    assert info.value.param == "add_splits"
    with pytest.raises(InvalidParameterError, match="splits are added whole"):
        extract(base_store, _config(shifted, shard=(0, 2)), QUIET, add_splits=True)
    with pytest.raises(StoreMismatchError, match="holds the classes circle, square") as info:
        extract(base_store, _config(shifted, classes=("square", "circle")), QUIET, add_splits=True)
    assert info.value.param == "classes"


def test_a_shard_store_is_refused(shifted, tmp_path):
    folder = write_image_folder(tmp_path / "images", {"test": 3})
    shard = tmp_path / "shard.h5"
    extract(shard, _config(folder, shard=(0, 2)), QUIET)
    with pytest.raises(StoreMismatchError, match="is shard 0 of 2; add splits to the merged store"):
        extract(shard, _config(shifted), QUIET, add_splits=True)


def test_recorded_config_reads_back_what_extracted_the_store(base_store, tmp_path):
    config = recorded_config(base_store)
    assert config == dataclasses.replace(_config(tmp_path / "images"), source=str((tmp_path / "images").resolve()))


def test_cli_takes_the_backbones_and_settings_from_the_store(base_store, shifted, tmp_path):
    alone = tmp_path / "alone.h5"
    extract(alone, _config(shifted), QUIET)
    result = CliRunner().invoke(cli, ["extract", str(shifted), str(base_store), "--add-splits", "--batch-size", "4",
                                      "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Wrote {base_store}: test-fog-1 6, test-fog-3 4 rows of efficientnet-lite0 (fp32)")
    after, fresh = snapshot(base_store), snapshot(alone)
    assert after["test-fog-1"] == fresh["test-fog-1"] and after["test-fog-3"] == fresh["test-fog-3"]


def test_cli_errors_name_the_flag(base_store, shifted, tmp_path):
    runner = CliRunner()
    other = runner.invoke(cli, ["extract", str(shifted), str(base_store), "--add-splits", "--image-size", "96"])
    assert other.exit_code == 1
    assert other.stderr == (
        f"Error: {base_store}: was extracted with different image_size; add splits with the settings the store was "
        "extracted with (recorded_config gives them) (--image-size)\n"
    )
    both = runner.invoke(cli, ["extract", str(shifted), str(base_store), "--add-splits", "--resume"])
    assert both.exit_code == 2 and "--add-splits continues an interrupted add by itself" in both.stderr
    missing = runner.invoke(cli, ["extract", str(shifted), str(tmp_path / "none.h5"), "--add-splits"])
    assert missing.exit_code == 2 and "no such store; --add-splits adds splits to an existing store" in missing.stderr

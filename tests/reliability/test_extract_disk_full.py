"""``clipcache extract`` meeting a full disk: one line naming the file and the cause, no split marked complete,
the committed rows readable, and ``--resume`` (once there is room) ending with the store of an uninterrupted run.

The full disk is simulated (``ENOSPC`` raised after a named write, as h5py
raises it), and real on a small tmpfs where this process may mount one: once
with the store's free-space check, which stops the run before HDF5 meets the
full disk, and once without it, where HDF5 meets it (it used to crash).
"""

from __future__ import annotations

import errno
import os
import re

import pytest

from clipcache import FeatureStore
from clipcache.errors import StoreWriteError
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from tests.extract.conftest import write_image_folder
from tests.extract.helpers import snapshot
from tests.faults import Fault, _resolve, install, run_cli
from tests.feature_store.faulty import resize_tmpfs, tmpfs
from tests.reliability.test_store_disk_full import run_without_preflight

WRITE_ROWS = "clipcache.feature_store._hdf5.write_rows"  # per batch: ids and paths (bytes, offsets), labels, views, features
NO_SPACE = os.strerror(errno.ENOSPC)
#: A tmpfs that holds the store's structure and train's first chunks (4 MiB of features), not test's as well.
TRAIN_ONLY = "6m"
QUIET = RunOptions(progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An ImageFolder (train 2 x 6, test 2 x 3), and the store of an uninterrupted run over it."""
    folder = write_image_folder(tmp_path_factory.mktemp("images") / "images", {"train": 6, "test": 3})
    full = folder.parent / "full.h5"
    extract(full, _config(folder), QUIET)
    return folder, snapshot(full)


def _config(folder) -> ExtractConfig:
    return ExtractConfig(source=str(folder), model="clipcache-tiny-vit", pretrained="none", batch_size=4)


def _args(folder, path) -> list:
    return ["extract", folder, path, "--model", "clipcache-tiny-vit", "--pretrained", "none", "--batch-size", 4,
            "--workers", 0, "--threads", 1]


def _inject(monkeypatch, fault: Fault) -> None:
    """Install ``fault`` in this process until the end of the test."""
    owner, name = _resolve(fault.target)
    monkeypatch.setattr(owner, name, getattr(owner, name))  # monkeypatch restores it
    install(fault)


def _check_left(path, train_rows: int, test_rows: int | None) -> None:
    """The store after the failure: readable, its committed rows intact, no split complete."""
    with FeatureStore(path) as store:
        assert store.n_rows("train") == train_rows
        assert not store.is_complete("train")
        if test_rows is None:
            assert store.n_rows("test") == 0 and not store.is_complete("test")
        assert store.features("train", "clip").shape == (train_rows, 32)


def test_a_full_disk_stops_extract_and_resume_finishes_it(tmp_path, images, monkeypatch):
    folder, full = images
    path = tmp_path / "s.h5"
    _inject(monkeypatch, Fault(WRITE_ROWS, call=14, when="after", action="enospc"))  # batch 2 of train: its features
    with pytest.raises(StoreWriteError) as info:
        extract(path, _config(folder), QUIET)
    assert str(info.value) == (
        f"{path}: cannot append 4 rows to split 'train' ({NO_SPACE}); what was committed before is kept; "
        "fix the cause (free some space if the disk is full), then resume the extraction"
    )
    assert info.value.param == "resume"
    monkeypatch.undo()
    _check_left(path, train_rows=4, test_rows=None)
    extract(path, _config(folder), QUIET, resume=True)
    assert snapshot(path) == full


@pytest.mark.slow
def test_the_command_says_it_in_one_line(tmp_path, images):
    folder, full = images
    path = tmp_path / "s.h5"
    result = run_cli(_args(folder, path), Fault(WRITE_ROWS, call=7, when="after", action="enospc"))  # batch 1: its features
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: {path}: cannot append 4 rows to split 'train' ({NO_SPACE}); what was committed before is kept; "
        "fix the cause (free some space if the disk is full), then resume the extraction (--resume)"
    ]
    assert "Wrote" not in result.stdout
    _check_left(path, train_rows=0, test_rows=None)
    extract(path, _config(folder), QUIET, resume=True)
    assert snapshot(path) == full


def test_a_real_full_disk_is_refused_before_hdf5_meets_it(tmp_path, images):
    folder, full = images
    with tmpfs(tmp_path / "tiny", TRAIN_ONLY) as tiny:
        path = tiny / "s.h5"
        with pytest.raises(StoreWriteError) as info:
            extract(path, _config(folder), QUIET)
        assert re.fullmatch(
            rf"{path}: {NO_SPACE}: the next write needs about 4\.\d MiB and the file system has \d+\.\d (KiB|MiB) free; "
            r"what was committed before is kept; fix the cause \(free some space if the disk is full\), then resume the extraction",
            str(info.value),
        ), str(info.value)
        with FeatureStore(path) as store:  # train finished before the disk was full; test has nothing
            assert store.is_complete("train") and store.n_rows("train") == 12
            assert store.n_rows("test") == 0 and not store.is_complete("test")
        resize_tmpfs(tiny, "16m")
        extract(path, _config(folder), QUIET, resume=True)
        assert snapshot(path) == full


@pytest.mark.slow
def test_a_real_full_disk_met_by_hdf5_is_one_line_and_no_crash(tmp_path, images):
    folder, full = images
    with tmpfs(tmp_path / "tiny", TRAIN_ONLY) as tiny:
        path = tiny / "s.h5"
        result = run_without_preflight(_args(folder, path))
        assert result.returncode == 1, result.stderr  # it was 139, a segmentation fault, at exit
        assert result.stderr.splitlines() == [
            f"Error: {path}: cannot append 4 rows to split 'test' ({NO_SPACE}); what was committed before is kept; "
            "fix the cause (free some space if the disk is full), then resume the extraction (--resume)"
        ]
        with FeatureStore(path) as store:
            assert store.is_complete("train") and store.n_rows("train") == 12 and store.n_rows("test") == 0
        resize_tmpfs(tiny, "16m")
        extract(path, _config(folder), QUIET, resume=True)
        assert snapshot(path) == full

"""A full disk while a command writes a store: one line naming the file and the cause, and a store that is never broken.

The store side of ``support --to-split`` and of ``text`` is tested with a
simulated ``ENOSPC`` (an ``OSError`` raised at a named call, as h5py raises
it), which needs no privileges, and with a real small tmpfs where this process
may mount one. ``extract`` has its own file (``test_extract_disk_full.py``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.errors import StoreWriteError
from clipcache.feature_store import _hdf5
from tests.faults import ROOT, Fault, run_cli
from tests.feature_store.faulty import (
    N_CLASSES,
    pool_states,
    resize_tmpfs,
    state_of,
    support_args,
    tmpfs,
    write_pool_store,
)

WRITE_ROWS = "clipcache.feature_store._hdf5.write_rows"
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A pool store, its state, and the state of the same store after an uninterrupted ``support`` run."""
    return pool_states(tmp_path_factory.mktemp("pool"))


def _one_line_error(result, path) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: "), result.stderr
    assert NO_SPACE in lines[0]
    return lines[0]


def _without_sup(state: dict) -> dict:
    return {**state, "splits": {k: v for k, v in state["splits"].items() if k != "sup"}}


def _run_support_again(path, pool) -> None:
    """The way out: info names it, drop-split takes it, support runs again and gives the uninterrupted result."""
    if "sup" in state_of(path)["splits"]:
        assert f"clipcache drop-split {path} sup" in run_cli(["info", path]).stdout
        assert run_cli(["drop-split", path, "sup"]).returncode == 0
    again = run_cli(support_args(path))
    assert again.returncode == 0, again.stderr
    assert state_of(path) == pool[2]


@pytest.mark.parametrize(
    ("fault", "sup_left"),
    [
        (Fault("h5py.Group.create_dataset", call=3, action="enospc"), False),  # creating the split's columns
        (Fault(WRITE_ROWS, call=3, when="after", action="enospc"), True),  # writing its rows
        (Fault("h5py.Dataset.flush", call=2, action="enospc"), True),
    ],
    ids=["create-columns", "write-rows", "flush"],
)
def test_support_meeting_a_full_disk(tmp_path, pool, fault, sup_left):
    path = tmp_path / "s.h5"
    shutil.copyfile(pool[0], path)
    line = _one_line_error(run_cli(support_args(path), fault), path)
    assert "what was committed before is kept" in line
    after = state_of(path)  # readable, and nothing committed was lost
    assert _without_sup(after) == pool[1]
    if sup_left:  # an empty, incomplete split, never a half-filled or complete one
        assert after["splits"]["sup"]["rows"] == 0 and not after["splits"]["sup"]["complete"]
    else:
        assert "sup" not in after["splits"]
    _run_support_again(path, pool)


def test_text_meeting_a_full_disk_keeps_the_old_text(tmp_path, pool):
    path = tmp_path / "s.h5"
    shutil.copyfile(pool[0], path)
    with FeatureStore(path, "a") as store:  # a text tower that `text` rebuilds offline
        store.add_feature_set("tiny", 32, provenance={"backbone": "open_clip", "model": "clipcache-tiny-vit", "pretrained": "none"})
    before = state_of(path)
    args = ["text", path, "--templates", "simple", "--name", "prompts", "--feature-set", "tiny", "--overwrite", "--device", "cpu"]
    line = _one_line_error(run_cli(args, Fault("h5py.Dataset.flush", call=1, action="enospc")), path)
    assert "text embeddings 'prompts'" in line
    assert state_of(path) == before
    with FeatureStore(path) as store:
        assert store.text_names == ["prompts"] and len(store.text("prompts").prompts) == 2 * N_CLASSES


@pytest.mark.parametrize("failing", [1, 5, 7, 8], ids=["ids", "labels", "features", "state"])
def test_a_failed_write_commits_nothing_and_refuses_later_writes(tmp_path, monkeypatch, failing):
    """A dataset flush failing in an append (ids, paths, labels, views, features, then the state): nothing is committed
    before the state's own flush, and the handle refuses further writes."""
    path = tmp_path / "s.h5"
    write_pool_store(path)
    with FeatureStore(path, "a") as store:
        store.create_split("more", ["clip"])
    before = state_of(path)
    x = np.eye(2, 16, dtype=np.float32)
    real_flush, calls = h5py.Dataset.flush, [0]

    def flush(self):
        calls[0] += 1
        if calls[0] == failing:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_flush(self)

    with FeatureStore(path, "a") as store:
        monkeypatch.setattr(h5py.Dataset, "flush", flush)
        with pytest.raises(StoreWriteError, match=rf"^{path}: cannot append 2 rows to split 'more' \({NO_SPACE}\)"):
            store.append("more", ids=["m0", "m1"], paths=["m0", "m1"], labels=[0, 1], features={"clip": x})
        monkeypatch.undo()
        with pytest.raises(StoreWriteError, match="an earlier write failed"):
            store.mark_complete("more")
    after = state_of(path)
    more = after["splits"].pop("more")
    assert after == {**before, "splits": {k: v for k, v in before["splits"].items() if k != "more"}}
    if failing < 8:
        assert more == before["splits"]["more"]
    else:  # the state itself failed to flush: committed or not, never half
        assert more["ids"] in ([], ["m0", "m1"]) and len(more["clip"]) == 4 * 16 * more["rows"]
    assert not more["complete"]
    with FeatureStore(path, "a") as store:  # a new handle writes again
        if not store.n_rows("more"):
            store.append("more", ids=["m0", "m1"], paths=["m0", "m1"], labels=[0, 1], features={"clip": x})
        store.mark_complete("more")
    np.testing.assert_array_equal(FeatureStore(path).features("more", "clip"), x)


def _free_space(monkeypatch, kib: int) -> None:
    """Make the store's file system report ``kib`` KiB free."""

    class Full:
        f_bavail, f_frsize = kib, 1024

    monkeypatch.setattr(_hdf5.os, "statvfs", lambda _: Full)


def test_free_space_is_checked_before_a_write(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    write_pool_store(path)
    x = np.eye(1, 16, dtype=np.float32)
    with FeatureStore(path, "a") as store:
        _free_space(monkeypatch, 200)
        with pytest.raises(StoreWriteError) as info:
            store.create_split("new", ["clip"])  # allocates little: refused only below the margin
        assert str(info.value) == (
            f"{path}: {NO_SPACE}: the next write needs about 256.0 KiB and the file system has 200.0 KiB free; "
            "what was committed before is kept"
        )
        assert "new" not in store.splits
        _free_space(monkeypatch, 300)
        store.create_split("new", ["clip"])
        with pytest.raises(StoreWriteError, match=r"needs about 4\.\d MiB and the file system has 300\.0 KiB"):
            store.append("new", ids=["a"], paths=["a"], labels=[0], features={"clip": x})  # its first 4 MiB chunk
        monkeypatch.undo()
        assert store.n_rows("new") == 0
        store.append("new", ids=["a"], paths=["a"], labels=[0], features={"clip": x})  # a refusal is not a failure
    assert state_of(path)["splits"]["new"]["ids"] == ["a"]


# -- a real full disk ------------------------------------------------------------------

_NO_PREFLIGHT = (
    "import sys; from clipcache.feature_store import _hdf5; _hdf5.check_free_space = lambda path, need: None; "
    "from clipcache.cli.main import main; main(sys.argv[1:])"
)


def run_without_preflight(args) -> subprocess.CompletedProcess:
    """``clipcache ARGS`` with the free-space check off, so that HDF5 itself meets the full disk."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", _NO_PREFLIGHT, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("preflight", [True, False], ids=["checked", "hdf5-meets-it"])
def test_support_on_a_full_tmpfs(tmp_path, pool, preflight):
    with tmpfs(tmp_path / "tiny", f"{os.path.getsize(pool[0]) // 1024 + 1024}k") as folder:
        path = folder / "s.h5"
        shutil.copyfile(pool[0], path)
        result = (run_cli if preflight else run_without_preflight)(support_args(path))
        _one_line_error(result, path)  # exit status 1: no segmentation fault, no traceback
        after = state_of(path)
        assert _without_sup(after) == pool[1]
        assert after["splits"]["sup"]["rows"] == 0 and not after["splits"]["sup"]["complete"]
        resize_tmpfs(folder, "16m")
        _run_support_again(path, pool)

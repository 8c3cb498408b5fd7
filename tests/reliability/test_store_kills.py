"""A writer killed at a named point leaves a store that every reader reads, without write access, as last committed.

Each test runs a real command in a child (``tests.faults``), SIGKILLs it at one
call of a named function, then reads the store through a read-only view (a
0444 file; as root also a read-only bind mount): ``clipcache info`` and the
library must return exactly the state of the last commit, and the file must be
left byte for byte as the killed writer left it. Then the way out is taken.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from clipcache import FeatureStore, StoreLockedError
from clipcache.feature_store import _hdf5
from tests.faults import Fault, run_cli
from tests.feature_store.faulty import (
    N_CLASSES,
    pool_states,
    read_only,
    sha256,
    state_of,
    support_args,
)

STORE = "clipcache.feature_store.store.FeatureStore"
SPLIT = "clipcache.feature_store.elements.split.Split"


@pytest.fixture(scope="module")
def pool_template(tmp_path_factory):
    """A pool store, its state, and the state of the same store after an uninterrupted ``support`` run."""
    return pool_states(tmp_path_factory.mktemp("pool"))


def _support(path, fault=None):
    return run_cli(support_args(path), fault)


def _check_readers(path, want: dict) -> dict:
    """Read ``path`` without write access with info and the library; both must show ``want``; return info's JSON."""
    before = sha256(path)
    with read_only(path) as view:
        info = run_cli(["info", view, "--json"])
        assert info.returncode == 0, info.stderr
        assert run_cli(["info", view]).returncode == 0
        assert state_of(view) == want
    assert sha256(path) == before  # the readers wrote nothing
    return json.loads(info.stdout)


def _expected(pool_template, sup: str) -> dict:
    """The state before support, with the split ``sup`` as a kill at that point leaves it."""
    _, before, after = pool_template
    splits = dict(before["splits"])
    if sup == "empty":
        splits["sup"] = {"rows": 0, "complete": False, "ids": [], "labels": [], "views": [], "clip": b""}
    elif sup in ("rows", "complete"):
        splits["sup"] = {**after["splits"]["sup"], "complete": sup == "complete"}
    return {**before, "splits": splits}


KILLS = [
    # (target, call, when, what the split "sup" is after the kill)
    ("clipcache.retrieval.support.retrieve_support", 1, "before", "absent"),  # the read-only phase of a writer
    (f"{STORE}.create_split", 1, "before", "absent"),
    ("h5py.Group.create_dataset", 1, "before", "absent"),  # the first column of the hidden new split
    ("h5py.Group.create_dataset", 8, "after", "absent"),
    ("h5py.Group.move", 1, "before", "absent"),  # the hidden split about to take its name
    ("h5py.Group.move", 1, "after", "absent"),  # renamed, not yet flushed
    (f"{STORE}.create_split", 1, "after", "empty"),
    (f"{SPLIT}.write_state", 1, "before", "empty"),  # rows written, the commit not
    (f"{SPLIT}.write_state", 1, "after", "rows"),  # the commit of the rows
    (f"{SPLIT}.write_state", 2, "after", "complete"),  # the commit of "complete"
]


@pytest.mark.parametrize(("target", "call", "when", "sup"), KILLS, ids=[f"{t.rsplit('.', 2)[-2]}.{t.rsplit('.', 1)[-1]}-{c}-{w}" for t, c, w, _ in KILLS])
def test_support_killed_at_a_named_point(tmp_path, pool_template, target, call, when, sup):
    path = tmp_path / "s.h5"
    shutil.copyfile(pool_template[0], path)
    result = _support(path, Fault(target, call, when))
    assert result.returncode == -signal.SIGKILL, result.stderr

    info = _check_readers(path, _expected(pool_template, sup))
    assert ("sup" in info["splits"]) == (sup != "absent")

    if sup in ("empty", "rows"):  # the way out info names, then the command again
        text = run_cli(["info", path]).stdout
        assert f"clipcache drop-split {path} sup" in text
        assert run_cli(["drop-split", path, "sup"]).returncode == 0
    if sup != "complete":
        again = _support(path)
        assert again.returncode == 0, again.stderr
        assert state_of(path) == pool_template[2]


def _add_text_tower(path) -> None:
    """Give the store a feature set whose open_clip model ``clipcache text`` can rebuild offline."""
    with FeatureStore(path, "a") as store:
        store.add_feature_set("tiny", 32, provenance={"backbone": "open_clip", "model": "clipcache-tiny-vit", "pretrained": "none"})


@pytest.mark.parametrize(("target", "call", "when"), [("h5py.Group.create_dataset", 1, "after"), ("h5py.Group.move", 1, "before")])
def test_text_killed_at_a_named_point_keeps_the_old_text(tmp_path, pool_template, target, call, when):
    """``clipcache text --overwrite`` killed before its change is flushed: readers see the old set, never half a new one."""
    path = tmp_path / "s.h5"
    shutil.copyfile(pool_template[0], path)
    _add_text_tower(path)
    before = state_of(path)
    args = ["text", path, "--templates", "simple", "--name", "prompts", "--feature-set", "tiny", "--overwrite", "--device", "cpu"]
    result = run_cli(args, Fault(target, call, when))
    assert result.returncode == -signal.SIGKILL, result.stderr
    info = _check_readers(path, before)
    assert info["text"]["prompts"]["prompts"] == 2 * N_CLASSES  # the old set, not the new one's 4


def test_a_writer_waits_for_readers_of_a_crashed_file_then_recovers_it(tmp_path, pool_template, monkeypatch):
    path = tmp_path / "s.h5"
    shutil.copyfile(pool_template[0], path)
    assert _support(path, Fault("h5py.Group.create_dataset", 1, "after")).returncode == -signal.SIGKILL
    flags = _hdf5.writer_flags(path)
    assert flags & _hdf5.WRITE_ACCESS and not flags & _hdf5.SWMR_WRITE_ACCESS  # killed inside a structural change
    monkeypatch.setattr(_hdf5, "_WAIT_S", 0.2)
    with FeatureStore(path) as reader:  # reads the crashed file, holding a shared lock
        with pytest.raises(StoreLockedError, match="readers have the store open as a crashed writer left it"):
            FeatureStore(path, "a")
        assert reader.n_rows("pool") == 200
    assert _hdf5.writer_flags(path) == flags  # the refused writer changed nothing
    with FeatureStore(path, "a") as store:  # the readers are gone: a writer recovers the file
        assert store.splits == ["pool", "test"]
    assert _hdf5.writer_flags(path) == 0
    assert state_of(path) == pool_template[1]

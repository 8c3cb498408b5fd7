"""A writer killed with SIGKILL mid-append loses only its uncommitted batch."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipcache import FeatureStore, StoreLockedError
from tests.feature_store.crash_writer import append_until, create, rows

ROOT = Path(__file__).resolve().parents[2]


def _kill_after(path: Path, min_rows: int, extra_s: float) -> None:
    child = subprocess.Popen([sys.executable, "-m", "tests.feature_store.crash_writer", str(path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with FeatureStore(path) as reader:  # SWMR readers see committed rows while it writes
                    if reader.n_rows("train") >= min_rows:
                        break
            except StoreLockedError:  # the writer has not started appending yet
                pass
            time.sleep(0.05)
        time.sleep(extra_s)
        assert child.poll() is None, "the writer exited before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.mark.parametrize("extra_s", [0.0, 0.13, 0.41])
def test_sigkill_mid_append_recovers_every_committed_row(tmp_path, extra_s):
    path = tmp_path / "crash.h5"
    create(path)
    _kill_after(path, min_rows=2000, extra_s=extra_s)

    with FeatureStore(path) as reader:  # readable as it was left
        n_killed = reader.n_rows("train")
        assert not reader.is_complete("train")
    assert n_killed >= 2000

    with FeatureStore(path, "a") as store:  # a new writer recovers the file and resumes
        assert store.n_rows("train") == n_killed
        assert store.h5["splits/train/labels"].shape[0] == n_killed  # uncommitted tail cut off
        append_until(store, n_killed + 500)
        store.mark_complete("train")

    expected = rows(0, n_killed + 500)
    with FeatureStore(path) as store:
        assert store.is_complete("train")
        assert list(store.ids("train")) == expected["ids"]  # nothing lost, nothing duplicated
        np.testing.assert_array_equal(store.labels("train"), expected["labels"])
        np.testing.assert_array_equal(store.features("train", "f"), expected["features"]["f"])


def test_killed_store_equals_uninterrupted_store(tmp_path):
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    create(killed)
    _kill_after(killed, min_rows=500, extra_s=0.05)
    with FeatureStore(killed, "a") as store:
        target = store.n_rows("train") + 1000
        append_until(store, target)
    create(clean)
    with FeatureStore(clean, "a") as store:
        append_until(store, target)
    with FeatureStore(killed) as a, FeatureStore(clean) as b:
        for col in ("ids", "paths", "labels", "views"):
            np.testing.assert_array_equal(getattr(a, col)("train"), getattr(b, col)("train"))
        np.testing.assert_array_equal(a.features("train", "f"), b.features("train", "f"))

"""Readers of a store that a live writer is changing: every read succeeds and shows a committed state.

A reader opens the file in SWMR mode while the writer appends, waits out the
moment of a structural change, and opens the file anew when it misses
something a writer made or replaced since it opened it.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.errors import ClipCacheError
from tests.faults import ROOT
from tests.feature_store.crash_writer import create, rows
from tests.feature_store.live_writer import BATCH


def _read_committed(path) -> int:
    """Read a store as a reader does, checking every committed row; return the committed rows of train."""
    with FeatureStore(path) as store:
        n = store.n_rows("train")
        want = rows(0, n)
        assert list(store.ids("train", slice(0, n))) == want["ids"]
        np.testing.assert_array_equal(store.labels("train", slice(0, n)), want["labels"])
        np.testing.assert_array_equal(store.features("train", "f", slice(0, n)), want["features"]["f"])
        described = store.describe()
        assert described["splits"]["train"]["rows"] >= n
        if "t" in described["text"]:
            assert store.text("t").embeddings.shape == (5, 32)
    return n


def test_readers_during_appends_and_structural_changes(tmp_path):
    path = tmp_path / "live.h5"
    create(path)
    writer = subprocess.Popen([sys.executable, "-m", "tests.feature_store.live_writer", str(path), "250"], cwd=ROOT)
    seen, errors = [], collections.Counter()
    try:
        while writer.poll() is None:
            try:
                seen.append(_read_committed(path))
            except (ClipCacheError, OSError, KeyError, AssertionError) as exc:
                errors[f"{type(exc).__name__}: {exc}"] += 1
    finally:
        writer.wait(timeout=300)
    assert writer.returncode == 0
    assert not errors, errors
    assert len(seen) >= 10 and seen == sorted(seen) and 0 < seen[-1] <= 250 * BATCH  # reads overlapped the appends
    assert _read_committed(path) == 250 * BATCH


@pytest.mark.slow
def test_readers_during_a_live_extraction(tmp_path):
    """``clipcache info`` and library reads in a loop while ``clipcache extract`` runs: none fails."""
    from tests.extract.conftest import write_image_folder

    images = write_image_folder(tmp_path / "images", {"train": 60, "test": 20}, size=32)
    path = tmp_path / "s.h5"
    args = [sys.executable, "-m", "clipcache", "extract", str(images), str(path), "--model", "clipcache-tiny-vit",
            "--pretrained", "none", "--workers", "0", "--threads", "1", "--batch-size", "1", "--templates", "simple"]
    writer = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counts, errors, reads = [], collections.Counter(), 0
    try:
        while writer.poll() is None:
            if not path.exists():
                time.sleep(0.05)
                continue
            try:
                with FeatureStore(path) as store:
                    store.describe()
                    for split in store.splits:
                        n = store.n_rows(split)
                        assert len(store.ids(split, slice(0, n))) == n
                        x = store.features(split, "clip", slice(0, n))
                        assert np.isfinite(x).all() and (n == 0 or abs(np.linalg.norm(x[-1]) - 1) < 1e-3)
                    counts.append(sum(store.n_rows(s) for s in store.splits))
                info = subprocess.run([sys.executable, "-m", "clipcache", "info", str(path)], cwd=ROOT,
                                      capture_output=True, text=True)
                assert info.returncode == 0, info.stderr
                reads += 1
            except (ClipCacheError, OSError, KeyError, AssertionError) as exc:
                errors[f"{type(exc).__name__}: {exc}"] += 1
    finally:
        _, stderr = writer.communicate(timeout=600)
    assert writer.returncode == 0, stderr
    assert not errors, errors
    assert reads >= 5 and counts == sorted(counts) and counts[-1] <= 160

"""Fixtures shared by the whole suite: seeded synthetic stores and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from clipcache import FeatureStore

# Property tests draw the same examples on every run and machine, and keep no example database.
settings.register_profile("clipcache", derandomize=True, database=None)
settings.load_profile("clipcache")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Random L2-normalised float32 rows, shape (n, d)."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic_store(path: Path, n_per_split=None, d: int = 16, n_classes: int = 4, seed: int = 0) -> dict:
    """Write a small complete store; return the arrays written, by split."""
    n_per_split = n_per_split or {"train": 40, "test": 20}
    rng = np.random.default_rng(seed)
    written = {}
    with FeatureStore(path, "w") as store:
        store.set_classes([f"class{i}" for i in range(n_classes)])
        store.add_feature_set("clip", d, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        for split, n in n_per_split.items():
            store.create_split(split, ["clip"])
            x, y = unit_rows(rng, n, d), rng.integers(0, n_classes, n)
            ids = [f"{split}-{i:05d}" for i in range(n)]
            store.append(split, ids=ids, paths=[f"/img/{i}.jpg" for i in ids], labels=y, features={"clip": x})
            store.mark_complete(split)
            written[split] = {"x": x, "y": y, "ids": ids}
    return written


@pytest.fixture
def synthetic_store(tmp_path):
    """A complete synthetic store with splits train (40) and test (20), d=16, 4 classes."""
    path = tmp_path / "synthetic.h5"
    return path, write_synthetic_store(path)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when it is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA

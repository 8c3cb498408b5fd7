"""Fixtures of the retrieval tests: seeded stores with clustered features, pools and text embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipcache import FeatureStore

D = 16
N_CLASSES = 4


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of x L2-normalised, float32."""
    x = np.asarray(x, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_rows(rng: np.random.Generator, n: int, d: int, n_clusters: int, spread: float = 0.35) -> np.ndarray:
    """Unit rows around ``n_clusters`` random centres, like real embeddings: shape (n, d), float32."""
    centres = unit(rng.normal(size=(n_clusters, d)))
    which = rng.integers(0, n_clusters, n)
    return unit(centres[which] + spread * rng.normal(size=(n, d)))


def write_store(path: Path, splits: dict, *, d: int = D, complete: bool = True, text: np.ndarray | None = None) -> None:
    """Write a store with splits ``{name: (X (n, d) float32, labels (n,) int64)}`` and optional text embeddings."""
    with FeatureStore(path, "w") as store:
        store.set_classes([f"class{i}" for i in range(N_CLASSES)])
        store.add_feature_set("clip", d, provenance={"backbone": "open_clip", "model": "synthetic", "pretrained": "none"})
        for split, (x, y) in splits.items():
            store.create_split(split, ["clip"])
            if len(x):
                ids = [f"{split}-{i:05d}" for i in range(len(x))]
                store.append(split, ids=ids, paths=[f"/img/{i}.jpg" for i in ids], labels=y, features={"clip": x})
            if complete:
                store.mark_complete(split)
        if text is not None:
            class_index = np.repeat(np.arange(N_CLASSES), len(text) // N_CLASSES)
            store.write_text(
                "prompts", text, class_index, [f"a photo of class{c}" for c in class_index],
                provenance={"backbone": "open_clip", "model": "synthetic", "pretrained": "none"},
            )


@pytest.fixture
def db(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A store with split "db" (300 clustered rows, labelled) and "queries" (25 rows): (path, X_db, X_queries)."""
    rng = np.random.default_rng(0)
    x = clustered_rows(rng, 325, D, 12)
    y = rng.integers(0, N_CLASSES, 325)
    path = tmp_path / "db.h5"
    write_store(path, {"db": (x[:300], y[:300]), "queries": (x[300:], y[300:])})
    return path, x[:300], x[300:]


@pytest.fixture
def pool_store(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A store with an unlabelled split "pool" (240 rows, labels -1) and text embeddings "prompts" (2 per class).

    Returns (path, X_pool (240, 16) float32, class embeddings (4, 16) float32).
    """
    rng = np.random.default_rng(1)
    centres = unit(rng.normal(size=(N_CLASSES, D)))
    text = unit(np.repeat(centres, 2, axis=0) + 0.2 * rng.normal(size=(2 * N_CLASSES, D)))
    x = unit(centres[rng.integers(0, N_CLASSES, 240)] + 0.5 * rng.normal(size=(240, D)))
    path = tmp_path / "pool.h5"
    write_store(path, {"pool": (x, np.full(240, -1))}, text=text)
    with FeatureStore(path) as store:
        class_emb = store.text("prompts").class_embeddings(N_CLASSES)
    return path, x, class_emb

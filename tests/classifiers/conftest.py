"""Fixtures of the classifier tests: seeded clustered data and a small store."""

from __future__ import annotations

import numpy as np
import pytest

from tests.classifiers.synth import clustered, unit, write_store


@pytest.fixture
def blobs():
    """Support (40 x 16), validation (60) and test (100) sets of 5 classes, plus class centres."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(5, 16)))
    X, y = clustered(rng, centres, 8, 1.5)
    Xv, yv = clustered(rng, centres, 12, 1.5)
    Xt, yt = clustered(rng, centres, 20, 1.5)
    return {"centres": centres, "X": X, "y": y, "Xv": Xv, "yv": yv, "Xt": Xt, "yt": yt}


@pytest.fixture
def text_weights(blobs):
    """ZeroShotClassifier keywords: noisy prompt embeddings (3 per class) around the class centres."""
    rng = np.random.default_rng(1)
    emb = np.repeat(blobs["centres"], 3, axis=0) + 0.4 * rng.normal(size=(15, 16)) / 4
    return {"text_embeddings": unit(emb), "class_index": np.repeat(np.arange(5), 3)}


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "store.h5"
    write_store(path)
    return path

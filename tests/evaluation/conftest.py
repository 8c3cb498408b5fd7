"""Fixtures of the evaluation tests: small synthetic stores with class structure."""

from __future__ import annotations

import pytest

from tests.classifiers.synth import write_store


@pytest.fixture
def store(tmp_path):
    """Store with 'clip' + 'aux' feature sets, text 'simple', splits train (20/class), val (8), test (30); 5 classes."""
    path = tmp_path / "store.h5"
    write_store(path)
    return path


@pytest.fixture
def store_no_val(tmp_path):
    """Like ``store`` without a val split and without text."""
    path = tmp_path / "noval.h5"
    write_store(path, per_class={"train": 20, "test": 30}, text=False, aux=False)
    return path

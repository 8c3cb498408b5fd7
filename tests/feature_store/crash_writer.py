"""Child process for test_crash: appends deterministic batches to a store until it is killed.

Usage: python -m tests.feature_store.crash_writer STORE START_ROW
"""

import sys

import numpy as np

from clipcache import FeatureStore

DIM = 32
BATCHES = np.random.default_rng(0).integers(1, 97, size=10_000)  # fixed batch sizes


def rows(start: int, stop: int) -> dict:
    """The content of rows [start, stop): the same whoever writes them."""
    i = np.arange(start, stop)
    x = np.sin(np.outer(i + 1, np.arange(1, DIM + 1) * 0.37)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"id{k:07d}" for k in i]
    return {"ids": ids, "paths": [f"/data/{k}.jpg" for k in ids], "labels": i % 5, "features": {"f": x}}


def create(path) -> None:
    with FeatureStore(path, "w") as store:
        store.set_classes(list("abcde"))
        store.add_feature_set("f", DIM, provenance={"model": "synthetic"})
        store.create_split("train", ["f"])


def append_until(store: FeatureStore, stop_row: int | None) -> None:
    """Append the fixed batches after the store's committed rows, up to stop_row (None: forever)."""
    n, b = store.n_rows("train"), 0
    edges = np.cumsum(BATCHES)
    k = int(np.searchsorted(edges, n, side="right"))
    start = n
    while stop_row is None or start < stop_row:
        stop = int(edges[k]) if stop_row is None else min(int(edges[k]), stop_row)
        store.append("train", **rows(start, stop))
        start, k, b = stop, k + 1, b + 1


if __name__ == "__main__":
    with FeatureStore(sys.argv[1], "a") as s:
        append_until(s, None)

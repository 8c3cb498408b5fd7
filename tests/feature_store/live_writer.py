"""Child process of the live-reader tests: appends batches and makes a structural change every few batches.

Usage: python -m tests.feature_store.live_writer STORE BATCHES

The store must exist (``crash_writer.create``). Rows are ``crash_writer.rows``;
every 10 batches the metadata changes, every 25 a new split is made and the
text embeddings ``t`` are replaced, so readers meet every kind of change.
"""

import sys

import numpy as np

from clipcache import FeatureStore
from tests.feature_store.crash_writer import DIM, rows

BATCH = 37


def main(path: str, batches: int) -> None:
    with FeatureStore(path, "a") as store:
        n = store.n_rows("train")
        for k in range(batches):
            store.append("train", **rows(n, n + BATCH))
            n += BATCH
            if k % 10 == 0:
                store.set_metadata("batches", k)
            if k % 25 == 0:
                store.create_split(f"s{k}", ["f"])
                store.write_text("t", np.eye(5, DIM, k % DIM, dtype=np.float32), np.arange(5), list("abcde"),
                                 provenance={}, overwrite=True)
        store.mark_complete("train")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

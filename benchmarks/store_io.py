"""Feature store I/O against numpy.save/numpy.load of the same array, in one run.

Writes an N x d float32 matrix (default N=200,000, d=768) through the store and
with numpy.save, then times, best of --repeat:

- a full read: ``store.features(split, name)`` vs ``numpy.load``;
- chunked iteration: ``store.iter_chunks`` vs slices of ``numpy.load(mmap_mode="r")``, also with
  ``allocate`` handing out three reused arrays (as a GPU fit reads into reused pinned blocks);
- a random subset (16 rows per class of 1,000 classes): ``store.features(rows=...)``
  vs plain h5py fancy indexing of the same dataset vs the numpy memmap.

Goals: full read <= 1.25x numpy.load; random subset at least as fast as h5py fancy indexing.

    python benchmarks/store_io.py [--rows 200000] [--dim 768] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clipcache import FeatureStore


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8192, help="rows per append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(args.rows) % args.classes
    rows = np.concatenate([rng.choice(np.flatnonzero(y == c), args.shots, replace=False) for c in range(args.classes)])
    rng.shuffle(rows)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store_path, npy_path = Path(tmp) / "bench.h5", Path(tmp) / "bench.npy"
        t0 = time.perf_counter()
        with FeatureStore(store_path, "w") as store:
            store.set_classes([str(c) for c in range(args.classes)])
            store.add_feature_set("f", args.dim, provenance={"model": "benchmark"})
            store.create_split("train", ["f"])
            for s in range(0, args.rows, args.batch):
                e = min(s + args.batch, args.rows)
                ids = [str(i) for i in range(s, e)]
                store.append("train", ids=ids, paths=ids, labels=y[s:e], features={"f": x[s:e]})
            store.mark_complete("train")
        t_write_store = time.perf_counter() - t0
        t_write_npy, _ = best_of(1, lambda: np.save(npy_path, x))

        results = []
        with FeatureStore(store_path) as store:
            ds = store.h5["splits/train/features/f"]
            t_np, a = best_of(args.repeat, lambda: np.load(npy_path))
            t_st, b = best_of(args.repeat, lambda: store.features("train", "f"))
            if not np.array_equal(a, b):
                raise SystemExit("full read differs from numpy")
            results.append(("full read", t_st, "numpy.load", t_np))

            step = 65536

            def np_chunks():
                m = np.load(npy_path, mmap_mode="r")
                return sum(float(np.array(m[s : s + step])[0, 0]) for s in range(0, len(m), step))

            def st_chunks():
                return sum(float(c.features[0, 0]) for c in store.iter_chunks("train", "f", chunk_rows=step))

            ring = [np.zeros((step, args.dim), dtype=np.float32) for _ in range(3)]  # touched: its pages are mapped
            turn = iter(range(10**9))

            def st_chunks_into():  # as GDAClassifier.fit_store on a GPU reads into reused pinned blocks
                def allocate(shape, dtype):
                    return ring[next(turn) % len(ring)][: shape[0]]

                return sum(float(c.features[0, 0]) for c in store.iter_chunks("train", "f", chunk_rows=step, allocate=allocate))

            t_np, a = best_of(args.repeat, np_chunks)
            t_st, b = best_of(args.repeat, st_chunks)
            t_into, c = best_of(args.repeat, st_chunks_into)
            if not a == b == c:
                raise SystemExit("chunked iteration differs from numpy")
            results.append((f"chunked iteration ({step} rows)", t_st, "numpy memmap slices", t_np))
            results.append((f"chunked iteration ({step} rows) into 3 reused arrays (`allocate`)", t_into,
                            "numpy memmap slices", t_np))

            sorted_rows = np.sort(rows)
            t_h5, a = best_of(args.repeat, lambda: ds[sorted_rows])
            t_st, b = best_of(args.repeat, lambda: store.features("train", "f", rows))
            t_np, c = best_of(args.repeat, lambda: np.load(npy_path, mmap_mode="r")[rows])
            if not (np.array_equal(a, x[sorted_rows]) and np.array_equal(b, x[rows]) and np.array_equal(c, x[rows])):
                raise SystemExit("random subset differs")
            results.append((f"random subset ({len(rows)} rows)", t_st, "h5py fancy indexing", t_h5))
            results.append((f"random subset ({len(rows)} rows)", t_st, "numpy memmap fancy", t_np))

    mb = x.nbytes / 2**20
    print(f"N={args.rows} d={args.dim} float32 ({mb:.0f} MiB); best of {args.repeat}")
    print(f"write: store {t_write_store:.2f} s ({args.batch}-row appends), numpy.save {t_write_npy:.2f} s")
    print("| operation | clipcache (s) | peer | peer (s) | clipcache / peer |")
    print("|---|---:|---|---:|---:|")
    for op, t_st, peer, t_peer in results:
        print(f"| {op} | {t_st:.3f} | {peer} | {t_peer:.3f} | {t_st / t_peer:.2f}x |")


if __name__ == "__main__":
    main()

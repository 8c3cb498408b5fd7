"""Queries per second of clipcache search against numpy brute force, on the same data in one run.

The database (default 200,000 x 512 L2-normalised float32 vectors) is written
to a temporary feature store; clipcache indexes it block by block
(``clipcache.retrieval.build_index``) and searches it; the peer is numpy brute
force: ``queries @ db.T`` per block of queries, then ``argpartition`` and a sort
of the k best. Both get every core.

The vectors are synthetic but clustered like real embeddings (``--clusters``
centres on the sphere plus noise), because IVF on structureless uniform data
needs to probe most lists; pass ``--clusters 0`` for uniform data.

Printed: build time, queries/s, the speed-up over numpy, how many result ids
equal numpy's where numpy's scores are not tied, the largest score difference,
and for IVF the recall@k (against numpy's exact result) at several nprobe.

Run: ``python benchmarks/search_speed.py`` (about 5 minutes on 2 cores);
``--gpu`` searches with faiss-gpu when it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import faiss
import numpy as np

from clipcache import FeatureStore
from clipcache.retrieval import build_index, gpu_available


def make_data(n: int, nq: int, d: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Database (n, d) and queries (nq, d), float32, L2-normalised, drawn around shared centres."""
    rng = np.random.default_rng(seed)
    total = n + nq
    out = np.empty((total, d), dtype=np.float32)
    centres = rng.standard_normal((max(clusters, 1), d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, total, 50_000):
        b = min(50_000, total - start)
        x = rng.standard_normal((b, d), dtype=np.float32)
        if clusters:
            x *= np.float32(noise / np.sqrt(d))
            x += centres[rng.integers(0, clusters, b)]
        out[start : start + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out[:n], out[n:]


def numpy_knn(xb: np.ndarray, xq: np.ndarray, k: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with numpy: (scores (q, k) float32, ids (q, k) int64), best first.

    ``queries @ db.T`` per block of queries, ``argpartition`` for the k largest
    (no negated copy of the score matrix), then a sort of those k.
    """
    scores = np.empty((len(xq), k), dtype=np.float32)
    ids = np.empty((len(xq), k), dtype=np.int64)
    for start in range(0, len(xq), block):
        s = xq[start : start + block] @ xb.T
        part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        ids[start : start + block] = np.take_along_axis(part, order, axis=1)
        scores[start : start + block] = np.take_along_axis(top, order, axis=1)
    return scores, ids


def interleaved(fns: dict, xq: np.ndarray, k: int, block: int) -> tuple[dict, dict]:
    """Run every search function on each block of queries in turn, so that load from
    other processes falls on all of them alike.

    Returns
    -------
    results : dict of name to (scores (q, k), ids (q, k))
    seconds : dict of name to total seconds
    """
    seconds = dict.fromkeys(fns, 0.0)
    parts: dict = {name: ([], []) for name in fns}
    for start in range(0, len(xq), block):
        q = xq[start : start + block]
        for name, fn in fns.items():
            t = time.perf_counter()
            scores, ids = fn(q, k)
            seconds[name] += time.perf_counter() - t
            parts[name][0].append(scores)
            parts[name][1].append(ids)
    results = {name: (np.concatenate(s), np.concatenate(i)) for name, (s, i) in parts.items()}
    return results, seconds


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k found, for (q, k) id arrays."""
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def agreement(rows: np.ndarray, scores: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray, tol: float) -> dict:
    """How far a result is from numpy's: ids equal where untied, max score difference."""
    gaps = np.diff(ref_scores, axis=1)
    untied = np.ones(ref_ids.shape, dtype=bool)
    untied[:, 1:] &= gaps < -tol
    untied[:, :-1] &= gaps < -tol
    return {
        "untied_fraction": float(untied.mean()),
        "ids_equal_where_untied": float((rows[untied] == ref_ids[untied]).mean()),
        "ids_equal_all": float((rows == ref_ids).mean()),
        "max_score_diff": float(np.abs(scores - ref_scores).max()),
    }


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="database vectors")
    p.add_argument("--nq", type=int, default=10_000, help="queries")
    p.add_argument("--d", type=int, default=512, help="dimension")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=4000, help="centres of the synthetic data; 0 for uniform")
    p.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit centres")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    p.add_argument("--nprobe", default="4,8,16,32,64,128", help="comma-separated nprobe values to measure")
    p.add_argument("--hnsw", action="store_true", help="also measure HNSW32 (slow to build on few cores)")
    p.add_argument("--block", type=int, default=1000, help="queries per interleaved timing block")
    p.add_argument("--gpu", action="store_true", help="search with faiss-gpu when installed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    print(
        f"# search_speed: n={args.n} d={args.d} queries={args.nq} k={args.k} clusters={args.clusters} "
        f"noise={args.noise}; faiss {faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"faiss threads {faiss.omp_get_max_threads()}, gpu={'yes' if args.gpu and gpu_available() else 'no'}"
    )
    xb, xq = make_data(args.n, args.nq, args.d, args.clusters, args.noise, args.seed)
    figures: dict = {"config": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.h5")
        with FeatureStore(path, "w") as store:
            store.set_classes(["x"])
            store.add_feature_set("clip", args.d, provenance={"model": "synthetic"})
            store.create_split("db", ["clip"])
            for start in range(0, args.n, 50_000):
                b = min(50_000, args.n - start)
                ids = [str(i) for i in range(start, start + b)]
                store.append("db", ids=ids, paths=ids, labels=np.zeros(b, np.int64), features={"clip": xb[start : start + b]})
            store.mark_complete("db")

        indexes = {}
        with FeatureStore(path, "r") as store:
            indexes["flat"], t_flat_build = timed(build_index, store, "db", "clip", gpu=args.gpu)
            ivf_factory = f"IVF{args.nlist},Flat"
            indexes["ivf"], t_ivf_build = timed(build_index, store, "db", "clip", factory=ivf_factory, gpu=args.gpu)
            if args.hnsw:
                indexes["hnsw"], t_hnsw_build = timed(build_index, store, "db", "clip", factory="HNSW32")
        nprobes = [int(v) for v in args.nprobe.split(",")]

        def searcher(index, nprobe=None):
            def knn(q, k):
                if nprobe is not None:
                    index.set_search_params(nprobe=nprobe)
                res = index.search(q, k)
                return res.scores, res.rows

            return knn

        fns = {"numpy": lambda q, k: numpy_knn(xb, q, k), "flat": searcher(indexes["flat"])}
        fns.update({f"ivf{p}": searcher(indexes["ivf"], p) for p in nprobes})
        if args.hnsw:
            fns["hnsw"] = searcher(indexes["hnsw"])
        for fn in fns.values():
            fn(xq[:100], args.k)  # warm-up
        results, seconds = interleaved(fns, xq, args.k, args.block)
        ref_scores, ref_ids = results["numpy"]
        qps_np = args.nq / seconds["numpy"]
        print(f"numpy brute force:   {qps_np:10.0f} queries/s  ({seconds['numpy']:.2f} s)")
        figures["numpy"] = {"qps": qps_np, "seconds": seconds["numpy"]}

        flat = indexes["flat"]
        agree = agreement(results["flat"][1], results["flat"][0], ref_ids, ref_scores, 1e-5)
        qps = args.nq / seconds["flat"]
        print(
            f"clipcache Flat ({flat.device}): {qps:10.0f} queries/s  ({seconds['flat']:.2f} s, build {t_flat_build:.2f} s)  "
            f"speed-up {qps / qps_np:5.2f}x; ids equal where untied {agree['ids_equal_where_untied']:.4%} "
            f"({agree['untied_fraction']:.2%} untied), all ids {agree['ids_equal_all']:.4%}, "
            f"max |score diff| {agree['max_score_diff']:.2e}"
        )
        figures["flat"] = {"qps": qps, "seconds": seconds["flat"], "build_seconds": t_flat_build, "speedup": qps / qps_np, **agree}

        ivf = indexes["ivf"]
        print(f"clipcache {ivf_factory} ({ivf.device}): build {t_ivf_build:.1f} s (trained on {ivf.meta['train_rows']} rows)")
        figures["ivf"] = {"build_seconds": t_ivf_build, "train_rows": ivf.meta["train_rows"], "nprobe": {}}
        print(f"  {'nprobe':>6}  {'queries/s':>10}  {'speed-up':>8}  recall@{args.k}")
        for nprobe in nprobes:
            r = recall(results[f"ivf{nprobe}"][1], ref_ids)
            qps = args.nq / seconds[f"ivf{nprobe}"]
            default = "  (default)" if nprobe == max(1, args.nlist // 16) else ""
            print(f"  {nprobe:>6}  {qps:>10.0f}  {qps / qps_np:>7.1f}x  {r:.4f}{default}")
            figures["ivf"]["nprobe"][nprobe] = {"qps": qps, "speedup": qps / qps_np, "recall": r}

        if args.hnsw:
            r = recall(results["hnsw"][1], ref_ids)
            qps = args.nq / seconds["hnsw"]
            print(f"clipcache HNSW32 (efSearch 128): {qps:10.0f} queries/s  speed-up {qps / qps_np:.1f}x  recall {r:.4f}  build {t_hnsw_build:.0f} s")
            figures["hnsw"] = {"qps": qps, "speedup": qps / qps_np, "recall": r, "build_seconds": t_hnsw_build}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

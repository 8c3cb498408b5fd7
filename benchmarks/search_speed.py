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

``--backend torch [--device cuda] [--dtypes float32,float16,bfloat16]`` adds the
torch backend's exact Flat rows (``build_index(..., backend="torch")``), one per
storage dtype, to the same table, measured in the same interleaved run; the
database is resident on the device. ``--device`` defaults to cuda when torch
sees a GPU, else cpu.

``--stream`` is a separate demonstration that a database larger than the
device's memory budget completes: ``--n`` vectors (e.g. 20,000,000 x 512) are
generated with torch on ``--device``, kept in host memory in ``--dtype``
(float16 by default), and only ``--device-memory-gb`` of them stay on the
device; the rest streams through in blocks of ``--block-rows`` at every search.
It prints the time per query, and checks ``--check`` queries against a plain
exact search (numpy top-k of torch float32 products) of the same rounded
vectors on the CPU. It also runs at a small
size on the CPU, e.g. ``--stream --n 200000 --device cpu --device-memory-gb 0.05``.
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
    p.add_argument("--backend", choices=["faiss", "torch"], default="faiss",
                   help="torch: also measure the torch backend's exact Flat rows on --device")
    p.add_argument("--device", help="torch device of --backend torch and --stream (default cuda when torch sees one, else cpu)")
    p.add_argument("--dtypes", default="float32,float16,bfloat16", help="storage dtypes measured with --backend torch")
    p.add_argument("--stream", action="store_true", help="the streaming demonstration instead of the table (see above)")
    p.add_argument("--dtype", default="float16", help="--stream: storage dtype")
    p.add_argument("--block-rows", type=int, default=None, help="--stream: vectors per block (default: the backend's)")
    p.add_argument("--device-memory-gb", type=float, default=4.0, help="--stream: GiB of vectors kept on the device")
    p.add_argument("--check", type=int, default=20, help="--stream: queries checked against an exact CPU search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.backend == "torch" or args.stream:
        import torch

        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.stream:
        figures = stream_demo(args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(figures, fh, indent=2)
        return 0

    print(
        f"# search_speed: n={args.n} d={args.d} queries={args.nq} k={args.k} clusters={args.clusters} "
        f"noise={args.noise}; faiss {faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"faiss threads {faiss.omp_get_max_threads()}, gpu={'yes' if args.gpu and gpu_available() else 'no'}"
        + (f"; torch {torch_version()} on {args.device}" if args.backend == "torch" else "")
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
            indexes["flat"], t_flat_build = timed(build_index, store, "db", "clip", gpu=args.gpu, backend="faiss")
            dtypes = args.dtypes.split(",") if args.backend == "torch" else []
            t_torch_build = {}
            for dtype in dtypes:
                indexes[f"torch-{dtype}"], t_torch_build[dtype] = timed(
                    build_index, store, "db", "clip", backend="torch", device=args.device, dtype=dtype
                )
            ivf_factory = f"IVF{args.nlist},Flat"
            indexes["ivf"], t_ivf_build = timed(
                build_index, store, "db", "clip", factory=ivf_factory, gpu=args.gpu, backend="faiss"
            )
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
        fns.update({f"torch-{dtype}": searcher(indexes[f"torch-{dtype}"]) for dtype in dtypes})
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

        for dtype in dtypes:
            name = f"torch-{dtype}"
            scores, rows = results[name]
            agree = agreement(rows, scores, ref_ids, ref_scores, 1e-5)
            r = recall(rows, ref_ids)
            qps = args.nq / seconds[name]
            print(
                f"clipcache Flat, torch on {args.device} ({dtype}): {qps:10.0f} queries/s  ({seconds[name]:.2f} s, build "
                f"{t_torch_build[dtype]:.2f} s)  speed-up {qps / qps_np:7.2f}x, {qps / figures['flat']['qps']:5.2f}x faiss Flat; "
                f"recall@{args.k} {r:.4f}; ids equal where untied {agree['ids_equal_where_untied']:.4%}, "
                f"max |score diff| {agree['max_score_diff']:.2e}"
            )
            figures[name] = {
                "qps": qps, "seconds": seconds[name], "build_seconds": t_torch_build[dtype], "speedup": qps / qps_np,
                "vs_faiss_flat": qps / figures["flat"]["qps"], "recall": r, "device": args.device, **agree,
            }

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


def torch_version() -> str:
    import torch

    return torch.__version__


def stream_demo(args) -> dict:
    """A database of ``args.n`` vectors searched with at most ``args.device_memory_gb`` of it on the device."""
    import torch

    from clipcache.retrieval.torch_flat import TorchFlatIndex

    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    budget = int(args.device_memory_gb * 2**30)
    index = TorchFlatIndex(args.d, "ip", device=dev, dtype=args.dtype, block_rows=args.block_rows, device_memory=budget)
    size = args.n * args.d * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"# search_speed --stream: n={args.n} d={args.d} dtype={args.dtype} ({size / 2**30:.1f} GiB) queries={args.nq} "
        f"k={args.k}; torch {torch.__version__} on {dev} ({name}); device budget {args.device_memory_gb:g} GiB, "
        f"block_rows {index.block_rows}"
    )
    centres = torch.randn(max(args.clusters, 1), args.d, generator=gen, device=dev)
    centres /= centres.norm(dim=1, keepdim=True)

    def draw(b: int):
        x = torch.randn(b, args.d, generator=gen, device=dev)
        if args.clusters:
            x = centres[torch.randint(0, args.clusters, (b,), generator=gen, device=dev)] + x * (args.noise / args.d**0.5)
        return x / x.norm(dim=1, keepdim=True)

    start = time.perf_counter()
    for first in range(0, args.n, 1 << 20):
        index.add(draw(min(1 << 20, args.n - first)))
    resident, streamed = index.resident_bytes, index.streamed_bytes
    t_build = time.perf_counter() - start
    xq = draw(args.nq).cpu().numpy()
    print(f"built in {t_build:.1f} s: {resident / 2**30:.2f} GiB resident on {dev}, {streamed / 2**30:.2f} GiB streamed "
          f"from host memory at each search")
    index.search(xq[:10], args.k)  # warm-up: one full pass
    start = time.perf_counter()
    scores, ids = index.search(xq, args.k)
    seconds = time.perf_counter() - start
    print(f"search: {seconds:.2f} s for {args.nq} queries: {1e3 * seconds / args.nq:.4f} ms per query, "
          f"{args.nq / seconds:,.0f} queries/s, {streamed / 2**30 / seconds:.1f} GiB/s streamed")
    check = stream_check(index, xq[: args.check], scores[: args.check], ids[: args.check], args.k)
    print(f"check of {args.check} queries against a plain exact CPU search of the same rounded vectors: ids equal "
          f"where untied {check['ids_equal_where_untied']:.4%} ({check['untied_fraction']:.2%} untied), "
          f"max |score diff| {check['max_score_diff']:.2e}")
    return {
        "config": vars(args), "device_name": name, "bytes": size, "resident_bytes": resident, "streamed_bytes": streamed,
        "build_seconds": t_build, "search_seconds": seconds, "ms_per_query": 1e3 * seconds / args.nq,
        "qps": args.nq / seconds, **check,
    }


def stream_check(index, xq: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int, sub: int = 1 << 17) -> dict:
    """Compare a search with a plain exact search on the CPU (float32 products of the index's blocks and the rounded queries)."""
    import torch

    q = torch.from_numpy(xq).to(getattr(torch, index.dtype)).float()
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for offset, vectors, _ in index.iter_blocks():
        for first in range(0, len(vectors), sub):
            s = (q @ vectors[first : first + sub].cpu().float().T).numpy()
            cand_s = np.concatenate([best_s, s], axis=1)
            rows = np.arange(offset + first, offset + first + s.shape[1])
            cand_i = np.concatenate([best_i, np.broadcast_to(rows, s.shape)], axis=1)
            top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(cand_s, top, axis=1), np.take_along_axis(cand_i, top, axis=1)
    return agreement(ids, scores, best_i, best_s, 1e-5)


if __name__ == "__main__":
    sys.exit(main())

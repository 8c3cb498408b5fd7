"""What the store's writer thread costs a thread that launches many small operations, as the extraction loop does.

The extraction loop's thread launches a tower's kernels one by one (a few
hundred per batch for a ViT, docs/extraction.md), and each torch call releases
and takes back the GIL. The writer thread (:class:`clipcache.extract.writer.StoreWriter`)
runs each batch's ``FeatureStore.append`` in the same process. h5py releases the
GIL inside HDF5's writes and flushes (the first line printed checks it: how much
of its rate a thread counting in a Python loop keeps during one large write), so
what the loop can lose is the append's Python work around those calls, and the
turns at the GIL. This measures, in one run, a stand-in for the loop's
thread: per batch, ``--ops`` in-place additions on a tiny tensor on ``--device``
(their launches, without the model's work), then, in the measured variant, the
batch's append handed to a real writer and store (``--rows`` rows of ``--dim``
float32 features, ids and paths). The peer is the same loop with no writer. Both
run alternately, ``--repeats`` times, and the best of each is compared::

    python benchmarks/writer_contention.py                       # CPU
    python benchmarks/writer_contention.py --device cuda         # kernel launches on a GPU

It prints the loop's milliseconds per batch alone and beside the writer, their
ratio, the loop thread's CPU milliseconds per batch, the writer thread's CPU
milliseconds per append, and how long the loop waited for room in the writer's
queue (a loop faster than the appends is bound by the writer, not slowed by it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import h5py
import numpy as np
import torch

from clipcache import FeatureStore
from clipcache.extract.writer import writing


def _store(path: str, dim: int) -> FeatureStore:
    store = FeatureStore(path, "w")
    store.set_classes([str(c) for c in range(10)])
    store.add_feature_set("clip", dim=dim)
    store.create_split("train", ["clip"])
    return store


def gil_during_write(dtype: str = "float16", rows: int = 20_000, dim: int = 1792) -> tuple[float, float]:
    """(seconds of one ``ds[:] = x`` write of ``rows`` x ``dim`` float32 values into a ``dtype`` dataset, the share of
    its rate alone that a thread counting in a Python loop keeps meanwhile): near 1 when h5py releases the GIL."""
    x = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.2)
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.3)
        alone = (count[0] - c0) / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp, h5py.File(os.path.join(tmp, "g.h5"), "w") as f:
            ds = f.create_dataset("x", shape=x.shape, dtype=dtype, chunks=(256, dim))
            c0, t0 = count[0], time.perf_counter()
            ds[:] = x
            seconds = time.perf_counter() - t0
            beside = (count[0] - c0) / seconds
    finally:
        stop.set()
        spinner.join()
    return seconds, beside / alone


def run(args, with_writer: bool) -> tuple[float, float, float, float]:
    """One loop of ``args.batches`` batches: (ms per batch, the loop thread's CPU ms per batch, the writer
    thread's CPU ms per append, the loop's ms per batch waiting for room in the writer's queue)."""
    device = torch.device(args.device)
    x = torch.zeros(8, device=device)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.arange(args.rows) % 10
    writer_cpu = [0.0]

    def append(store, n):
        began = time.thread_time()
        ids = [f"class{j % 10}/img{n + j:07d}.jpg" for j in range(args.rows)]
        store.append("train", ids=ids, paths=ids, labels=labels, features={"clip": features})
        writer_cpu[0] += time.thread_time() - began

    with tempfile.TemporaryDirectory() as tmp, _store(os.path.join(tmp, "s.h5"), args.dim) as store:
        with writing() as writer:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began, began_cpu, waited = time.perf_counter(), time.thread_time(), 0.0
            for b in range(args.batches):
                for _ in range(args.ops):
                    x.add_(1.0)
                if with_writer:
                    submitted = time.perf_counter()
                    writer.submit(append, store, b * args.rows)
                    waited += time.perf_counter() - submitted
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds, cpu = time.perf_counter() - began, time.thread_time() - began_cpu
    per = 1e3 / args.batches
    return seconds * per, cpu * per, writer_cpu[0] * per, waited * per


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ops", type=int, default=4500,
                        help="operations launched per batch (ViT-B-32's forward pass: 424 ATen operations); the "
                             "default makes a loop of about 11 ms a batch on the 2-core development machine, longer "
                             "than an append, as ViT-B-32's loop on a GPU (25 ms a batch of 256)")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rows", type=int, default=256, help="rows per append (the batch size)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds, kept = gil_during_write()
    print(f"h5py and the GIL: a counting thread kept {kept:.0%} of its rate during a {seconds:.2f} s write "
          "(float32 into float16) on another thread")
    run(args, True)  # warm up: allocator, h5py, the device
    alone, beside = [], []
    for _ in range(args.repeats):
        alone.append(run(args, False))
        beside.append(run(args, True))
    a, w = min(alone), min(beside)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    print(f"device {args.device} ({where}); {args.batches} batches of {args.ops} operations; appends of {args.rows} "
          f"x {args.dim} float32 rows; best of {args.repeats}")
    print(f"loop alone        : {a[0]:6.2f} ms per batch (runs: {', '.join(f'{r[0]:.2f}' for r in alone)}); "
          f"its thread's CPU {a[1]:.2f} ms")
    print(f"loop beside writer: {w[0]:6.2f} ms per batch (runs: {', '.join(f'{r[0]:.2f}' for r in beside)}); "
          f"its thread's CPU {w[1]:.2f} ms; the writer's CPU {w[2]:.2f} ms per append; waiting for room in "
          f"the writer's queue {w[3]:.2f} ms per batch")
    print(f"ratio (beside / alone): {w[0] / a[0]:.2f}; added per batch: {w[0] - a[0]:.2f} ms")


if __name__ == "__main__":
    main()

"""What starting the extraction's DataLoader workers costs, by what the main process holds, forked or from a fork server.

An extraction starts its workers inside the loop's timed window: on an H100,
16 workers took 0.29 to 0.48 s to start beside a CUDA context, a third of
ViT-B-32's run over 10,000 CIFAR-10 JPEGs (docs/benchmarks.md, "Ninth run").
``fork`` copies the main process's page tables, so the cost grows with what the
process has mapped. This measures, in one process, as it grows:

1. ``torch``: torch and clipcache imported;
2. ``model``: ``--model`` built on the CPU (open_clip, random weights);
3. ``cuda``: the model moved to the device (on a CUDA device; the CUDA context with it);
4. ``pinned``: ``--pinned-mb`` MiB of pinned host memory more (on a CUDA device).

At each stage it starts ``--workers`` workers over the project's own worker
side (``_ItemDataset`` of the CIFAR-10 training JPEGs, ``hybrid`` path, parts of
32), as ``extract`` does (the DataLoader's ``fork``), and as a fork server
started before stage 2 would (``forkserver``, with this script and
``clipcache.extract.loop`` preloaded: a small process that forks the workers,
each of which is then sent the pickled dataset). For each it prints the seconds of ``iter()`` (the start),
to the first part received, and of stopping them, best of ``--repeats``; the
ratio is forkserver / fork. The fork server costs its own start once per
process (printed). Run it as a script: a fork server imports the script's
module in each worker::

    python benchmarks/worker_start.py --workers 16 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from worker_paths import VIT
from worker_transfer import cifar_folder

from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import _collate, _ItemDataset
from clipcache.extract.plan import build_plans, select_samples


def start(dataset, workers: int, context) -> tuple[float, float, float]:
    """Seconds to start ``workers`` workers (``iter``), to their first part, and to stop them."""
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=_collate, multiprocessing_context=context)
    began = time.perf_counter()
    parts = iter(loader)
    started = time.perf_counter() - began
    next(parts)
    first = time.perf_counter() - began
    began = time.perf_counter()
    parts._shutdown_workers()
    return started, first, time.perf_counter() - began


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/cifar10-jpg", help="where the tarball is unpacked")
    parser.add_argument("--per-class", type=int, default=5000, help="training images per class in the dataset (default 5000)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pinned-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    (plan,) = build_plans(
        select_samples(open_dataset(cifar_folder(Path(args.cache), "train")), max_per_class=args.per_class),
        views=1, batch_size=32, shard=(0, 1))
    dataset = _ItemDataset(plan, [VIT], augment=False, seed=0, decode="hybrid")
    server = multiprocessing.get_context("forkserver")
    server.set_forkserver_preload(["__main__", "clipcache.extract.loop"])  # each worker then imports neither
    began = time.perf_counter()
    from multiprocessing import forkserver

    forkserver.ensure_running()
    print(f"{plan.n_items} JPEGs, {args.workers} workers, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"the fork server started in {time.perf_counter() - began:.2f} s")
    held = []

    def grow(stage: str):
        if stage == "model":
            import open_clip

            held.append(open_clip.create_model(args.model, pretrained=None))
        elif stage == "cuda":
            held[0].to(args.device)
        elif stage == "pinned":
            held.append(torch.ones(args.pinned_mb * 2**18, pin_memory=True))

    stages = ["torch", "model"] + (["cuda", "pinned"] if args.device.startswith("cuda") else [])
    print(f"{'stage':>7} | {'RSS MB':>7} | {'fork: start':>11} | {'first part':>10} | {'stop':>5} | "
          f"{'forkserver: start':>17} | {'first part':>10} | {'stop':>5} | ratio (first part)")
    for stage in stages:
        grow(stage)
        best = {}
        for _ in range(args.repeats):  # alternate
            for name, context in (("fork", multiprocessing.get_context("fork")), ("forkserver", server)):
                times = start(dataset, args.workers, context)
                best[name] = [min(a, b) for a, b in zip(best.get(name, times), times, strict=True)]
        f, s = best["fork"], best["forkserver"]
        print(f"{stage:>7} | {_rss_mb():7.0f} | {f[0]:11.3f} | {f[1]:10.3f} | {f[2]:5.3f} | {s[0]:17.3f} | "
              f"{s[1]:10.3f} | {s[2]:5.3f} | {s[1] / f[1]:.2f}")
    print("seconds, best of each; start: iter() of the DataLoader; first part: from iter() to the first part received")


if __name__ == "__main__":
    main()

"""Listing an ImageFolder tree: ``open_dataset`` against torchvision's ``ImageFolder``, in one run.

Both list the 60,000 CIFAR-10 JPEGs of ``../shared/data/cifar10-jpg.tar.gz``
(unpacked once into ``--cache``), train and test. torchvision's ImageFolder
walks each split's tree and keeps the files with an image suffix; ``open_dataset``
does that and also makes sure that no file is listed twice (links, hard links,
cycles). Both run alternately, ``--repeats`` times, with the file system's cache
warm; the best of each is compared. The ``stat`` calls each makes on image files
are counted too: on a network file system each is a round trip to the server,
where a folder's entries come in a few reads::

    python benchmarks/listing.py [--repeats 5] [--cache /tmp/cifar10-jpg]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from extract_throughput import cifar_folder
from torchvision.datasets import ImageFolder

from clipcache.extract.datasets import open_dataset


def _stats_of_images(function) -> tuple[float, int, object]:
    """(seconds, ``os.stat`` calls on image files, result) of ``function()``."""
    stat, calls = os.stat, [0]

    def counting(path, *args, **kwargs):
        if os.fspath(path).lower().endswith((".jpg", ".jpeg", ".png")):
            calls[0] += 1
        return stat(path, *args, **kwargs)

    os.stat = counting
    try:
        began = time.perf_counter()
        result = function()
        return time.perf_counter() - began, calls[0], result
    finally:
        os.stat = stat


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cifar10-jpg"))
    args = parser.parse_args(argv)
    root = cifar_folder(args.cache, "all")
    ours, peer = [], []
    for _ in range(args.repeats):
        ours.append(_stats_of_images(lambda: open_dataset(root)))
        peer.append(_stats_of_images(lambda: [ImageFolder(root / split) for split in ("train", "test")]))
    dataset = ours[0][2]
    n = sum(len(split) for split in dataset.splits.values())
    assert n == sum(len(folder.samples) for folder in peer[0][2]), "the two listings differ in size"
    best, best_peer = min(r[0] for r in ours), min(r[0] for r in peer)
    print(f"{n} JPEGs in {root}; best of {args.repeats}, warm cache")
    print(f"open_dataset          : {best:.3f} s (runs: {', '.join(f'{r[0]:.3f}' for r in ours)}); "
          f"stat calls on images: {ours[0][1]}")
    print(f"torchvision ImageFolder: {best_peer:.3f} s (runs: {', '.join(f'{r[0]:.3f}' for r in peer)}); "
          f"stat calls on images: {peer[0][1]}")
    print(f"ratio (open_dataset / ImageFolder): {best / best_peer:.2f}")


if __name__ == "__main__":
    main()

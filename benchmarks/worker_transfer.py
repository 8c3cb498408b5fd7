"""How fast DataLoader workers hand the ``gpu`` and ``hybrid`` decode paths' parts to the main process.

On ``extract --decode gpu`` the workers only read each JPEG's bytes, and on
``--decode hybrid`` they decode the pixels; either way they send a part of a
batch (:func:`clipcache.extract.loop._collate`) as one
:class:`~clipcache.extract.decode.PackedPayloads`. Its buffer travels as a numpy
array inside the pickle, or from ``loop.SHARED_BUFFER_BYTES`` on as a tensor in
shared memory (a file descriptor). Three collates run on the same files with the
same workers and part size, alternately, ``--repeats`` times: ``_collate`` as it
is, every buffer as a numpy array, and every buffer as a tensor. Each rate counts
from the first part received (worker start-up excluded)::

    python benchmarks/worker_transfer.py                      # CIFAR-10 test JPEGs (32 x 32)
    python benchmarks/worker_transfer.py --jpeg-size 500x375 --per-class 300
    python benchmarks/worker_transfer.py --decoded --jpeg-size 500x375 --per-class 100

With ``--decoded`` the parts hold the ``hybrid`` path's decoded pixels
(:class:`~clipcache.extract.decode.DecodedImage`, decoded once beforehand) instead
of JPEG bytes: 3 x H x W bytes an image.

Images come from ``../shared/data/cifar10-jpg.tar.gz`` as in
``benchmarks/extract_throughput.py`` (whose ``--jpeg-size`` re-encoding this reuses).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from pathlib import Path

import torch
from extract_throughput import _jpeg_size, cifar_folder, photo_folder
from torch.utils.data import DataLoader, Dataset

from clipcache.extract.decode import DecodedImage, EncodedImage
from clipcache.extract.images import load_image
from clipcache.extract.loop import _collate
from clipcache.extract.transforms import to_uint8_tensor


class JpegBytes(Dataset):
    """Item i: ``(i, EncodedImage of file i, "")``, as ``_ItemDataset`` gives a device JPEG on the gpu path."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as f:
            data = f.read()
        return i, EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), self.paths[i]), ""


class Pixels(Dataset):
    """Item i: ``(i, DecodedImage of file i, "")``, as ``_ItemDataset`` gives a decoded image on the hybrid path; the
    pixels are decoded once, beforehand, so that the workers only send them."""

    def __init__(self, paths: list[str]):
        self.images = [to_uint8_tensor(load_image(p)) for p in paths]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return i, DecodedImage(self.images[i]), ""


def as_tensor_buffer(part):
    """The peer: ``_collate``'s part with its buffer as a torch tensor (shared memory and a descriptor)."""
    return _collate(part, shared_bytes=0)


def rate(dataset, collate, workers: int, part: int) -> float:
    """Items per second of ``dataset`` through the DataLoader in parts of ``part``, counted from the first part received."""
    loader = DataLoader(dataset, batch_size=part, num_workers=workers, collate_fn=collate, prefetch_factor=8)
    parts = iter(loader)
    next(parts)
    began, n = time.perf_counter(), 0
    for items, _, _ in parts:
        n += len(items)
    return n / (time.perf_counter() - began)


def worker_arguments(description: str, per_class: int) -> argparse.ArgumentParser:
    """The options of this benchmark and of ``worker_paths.py``: the JPEGs, the workers, their parts, the repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", default="/tmp/cifar10-jpg", help="where the tarball's test folder is unpacked")
    parser.add_argument("--jpeg-size", type=_jpeg_size, metavar="WxH", help="re-encode the images as WxH JPEGs first")
    parser.add_argument("--per-class", type=int, default=per_class, help=f"images per class (default {per_class})")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--part", type=int, default=32, help="images per worker part (loop.MIN_PART_ITEMS)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def jpeg_folder(args) -> Path:
    """The CIFAR-10 test folder, or its ``--jpeg-size`` re-encoding."""
    source = cifar_folder(Path(args.cache))
    return photo_folder(source, Path(args.cache), args.jpeg_size, args.per_class) if args.jpeg_size else source


def main(argv=None) -> None:
    parser = worker_arguments(__doc__.split("\n")[0], per_class=1000)
    parser.add_argument("--decoded", action="store_true", help="send the hybrid path's decoded pixels, not JPEG bytes")
    args = parser.parse_args(argv)
    source = jpeg_folder(args)
    paths = sorted(str(p) for c in sorted(source.iterdir()) for p in sorted(c.glob("*.jpg"))[: args.per_class])
    dataset = Pixels(paths) if args.decoded else JpegBytes(paths)
    as_numpy = functools.partial(_collate, shared_bytes=float("inf"))  # every buffer inside the pickle
    runs: dict[str, list[float]] = {"_collate (clipcache)": [], "numpy buffer": [], "tensor buffer": []}
    for _ in range(args.repeats):
        runs["_collate (clipcache)"].append(rate(dataset, _collate, args.workers, args.part))
        runs["numpy buffer"].append(rate(dataset, as_numpy, args.workers, args.part))
        runs["tensor buffer"].append(rate(dataset, as_tensor_buffer, args.workers, args.part))
    what = "decoded images" if args.decoded else "JPEGs"
    print(f"{len(paths)} {what} from {source}, {args.workers} workers, parts of {args.part}, {os.cpu_count()} CPUs")
    for name, rates in runs.items():
        print(f"{name:26}: {statistics.median(rates):9.0f} items/s median (runs: {', '.join(f'{r:.0f}' for r in rates)})")
    _, a, b = (statistics.median(r) for r in runs.values())
    print(f"ratio numpy / tensor (medians): {a / b:.2f}")


if __name__ == "__main__":
    main()

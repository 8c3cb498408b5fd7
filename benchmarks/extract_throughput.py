"""End-to-end ``clipcache extract`` throughput against the model's forward-only throughput.

Both are measured in one run, on the same images, with the same backbone, batch
size, device and precision:

* forward-only: the images are decoded and preprocessed once, up front, into
  tensors (on the device); then only the batched forward pass is timed;
* end-to-end: :func:`clipcache.extract.extract` from JPEG files to a finished
  feature store (DataLoader decoding, preprocessing, host-to-device copies,
  inference, HDF5 appends), timed over its encoding loop.

The ratio end-to-end / forward-only is the share of the model's speed that the
pipeline delivers. The two are measured alternately, ``--repeats`` times each, and
the best run of each is compared (as ``timeit`` does), since other processes on
a shared machine only ever slow a run down; the ratio of medians is printed too. Goals: >= 0.85 on CPU (EfficientNet-lite0, CIFAR-10 test
JPEGs) and >= 0.8 on a GPU (ViT-B-32, 16 workers)::

    python benchmarks/extract_throughput.py                      # CPU, efficientnet-lite0
    python benchmarks/extract_throughput.py --device cuda --model ViT-B-32 --pretrained none \\
        --aux '' --workers 16 --batch-size 256 --amp bf16 --per-class 1000

Images come from the CIFAR-10 test folder of ``../shared/data/cifar10-jpg.tar.gz``
(unpacked once into ``/tmp/cifar10-jpg``), or from ``--source``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from clipcache.extract.backbones import build_backbones
from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.plan import select_samples

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def cifar_test_folder(cache: Path) -> Path:
    """Unpack the CIFAR-10 test JPEGs once into ``cache`` and return the test folder."""
    folder = cache / "cifar10-jpg" / "test"
    if not folder.is_dir():
        if not TARBALL.is_file():
            sys.exit(f"{TARBALL} not found; pass --source FOLDER")
        with tarfile.open(TARBALL) as tar:
            members = [m for m in tar if m.name.startswith("cifar10-jpg/test/")]
            tar.extractall(cache, members=members, filter="data")
    return folder


def forward_only(backbones, dataset, samples, batch_size: int, device: str, amp: str, repeats: int) -> list[float]:
    """Images/s of the batched forward pass alone, on tensors decoded beforehand."""
    inputs = []
    for backbone in backbones:
        transform = backbone.image_preprocess()
        x = torch.stack([transform(dataset.load(int(i))) for i in samples])
        inputs.append(x.to(device))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    rates = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, len(samples), batch_size):
                for backbone, x in zip(backbones, inputs, strict=True):
                    backbone.features(x[start : start + batch_size]).float().cpu()
        _sync(device)
        rates.append(len(samples) / (time.perf_counter() - began))
    return rates


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def end_to_end(config: ExtractConfig, options: RunOptions, backbones, repeats: int) -> list[float]:
    """Images/s of the extraction loop, JPEG files to a complete store."""
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            report = extract(os.path.join(tmp, f"bench{r}.h5"), config, options, backbones=backbones)
            rates.append(report.images_per_second)
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="ImageFolder of JPEGs (default: CIFAR-10 test from the shared tarball)")
    parser.add_argument("--cache", default="/tmp/cifar10-jpg", help="where the tarball's test folder is unpacked")
    parser.add_argument("--per-class", type=int, default=40, help="images per class (default 40: 400 images)")
    parser.add_argument("--model", help="open_clip model, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--aux", default="efficientnet-lite0", help="comma-separated aux specs ('' for none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="alternating measurements of each")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    source = Path(args.source) if args.source else cifar_test_folder(Path(args.cache))
    aux = tuple(a for a in args.aux.split(",") if a)
    config = ExtractConfig(
        source=str(source), model=args.model, pretrained=args.pretrained, aux=aux,
        max_per_class=args.per_class, batch_size=args.batch_size,
    )
    options = RunOptions(workers=args.workers, device=args.device, amp=args.amp, progress=False)
    backbones = [b.to(args.device) for b in build_backbones(args.model, args.pretrained, aux)]
    dataset = open_dataset(source)
    (split, samples), = select_samples(dataset, max_per_class=args.per_class).values()

    # Warm up both paths (allocator, oneDNN/cuDNN kernel choice) before timing.
    forward_only(backbones, split, samples[: args.batch_size], args.batch_size, args.device, args.amp, 1)
    fwd, e2e = [], []
    for _ in range(args.repeats):  # alternate, so that load from other processes hits both alike
        fwd += forward_only(backbones, split, samples, args.batch_size, args.device, args.amp, 1)
        e2e += end_to_end(config, options, backbones, 1)
    f, e = max(fwd), max(e2e)
    names = ", ".join(b.name for b in backbones)
    print(f"images: {len(samples)} from {source}; backbones: {names}; device {args.device}, "
          f"batch {args.batch_size}, workers {args.workers}, amp {args.amp}, torch threads {torch.get_num_threads()}")
    print(f"forward-only : {f:8.1f} img/s best (runs: {', '.join(f'{r:.1f}' for r in fwd)})")
    print(f"clipcache    : {e:8.1f} img/s best (runs: {', '.join(f'{r:.1f}' for r in e2e)})")
    print(f"ratio        : {e / f:8.3f}  (clipcache extract / forward-only, best runs)")
    print(f"ratio median : {statistics.median(e2e) / statistics.median(fwd):8.3f}  (medians; noisy on a shared machine)")


if __name__ == "__main__":
    main()

"""The device's own time per batch for the ``hybrid`` path's preprocessing, beside the forward pass it runs before.

On a GPU, with CUDA graphs, ViT-B-32's loop over 50,000 CIFAR-10 JPEGs waited for
the device 43% of its time and took 15.3 ms a batch of 256 against the graphed
forward pass's 12.8 ms (docs/benchmarks.md, "Ninth run"). The rest of the
device's work per batch is the preprocessing: on the ``hybrid`` path the copy of
the workers' decoded pixels, the resize to the model input as PIL does it
(``clipcache.extract.resample.pil_resize``: PIL's integer passes as float64 matrix
products, for the crop's pixels only), the crop and the normalisation. This times
each on the device with CUDA events, for one batch of ``--batch`` CIFAR-10 images
(32 x 32, or ``--size``), median of ``--repeats`` batches after a warm-up: the
project's ``decode_batch`` (copy, resize, crop) and ``normalize_batch``, and as the
peer the model's forward pass through a CUDA graph, as an extraction runs it::

    python benchmarks/device_preprocess.py --device cuda --model ViT-B-32

It also times the resize alone on the batch already on the device, ``pil_resize``
with each of its methods (on a GPU the default is ``triton``, Pillow's integer passes
as one fused kernel each; ``matmul`` is the float64 products), against the resize
they replaced (2026-11-26, recorded as ``like-pil``: torch's antialiased float32
resize, one pass a side, rounded in between, within a grey level of PIL's), and
prints the ratios, and ``normalize_batch`` (on a GPU a Triton kernel's lookups)
against its four torch operations. The first call of a kernel compiles it: the
warm-up batches take it.

On a CPU it times the same calls by the wall clock; the CPU path uses neither (it
resizes in the workers).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from worker_transfer import cifar_folder

from clipcache.extract import _triton, loop
from clipcache.extract.backbones import build_backbones
from clipcache.extract.decode import DecodedImage, decode_batch
from clipcache.extract.resample import pil_resize
from clipcache.extract.transforms import normalize_batch, plan_geometry, to_rgb


def _timer(device: torch.device):
    """``timed(fn, *args) -> (fn(*args), ms)``: CUDA events on a GPU, the wall clock elsewhere."""

    def timed(fn, *args):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn(*args)
            end.record()
            end.synchronize()
            return result, start.elapsed_time(end)
        began = time.perf_counter()
        result = fn(*args)
        return result, (time.perf_counter() - began) * 1e3

    return timed


def like_pil(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """The device resize of 2026-11-26 (``like-pil``), the peer: torch's antialiased float32 resize, the width first,
    rounded to uint8, then the height."""
    x = images.float()
    passes, now = [], tuple(images.shape[-2:])
    for target in ((images.shape[-2], size[1]), tuple(size)):
        if target != now:
            passes.append(now := target)
    for k, target in enumerate(passes):
        x = torch.nn.functional.interpolate(x, size=list(target), mode=interpolation, align_corners=False, antialias=True)
        x = x.add_(0.5).clamp_(0, 255)
        if k + 1 < len(passes):
            x = x.floor_()
    return x.to(torch.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/cifar10-jpg", help="where the tarball's test folder is unpacked")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", metavar="WxH", help="resize the images to WxH first (default: as stored, 32x32)")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    (backbone,) = build_backbones(args.model, "none", ())
    backbone.to(device)
    backbone.precision = "bf16" if args.amp == "bf16" else "fp32"  # applied on a CUDA device only
    pp = backbone.preprocess
    files = sorted(p for c in sorted(cifar_folder(Path(args.cache)).iterdir()) for p in sorted(c.glob("*.jpg")))
    images = []
    for path in files[: args.batch]:
        with Image.open(path) as image:
            image = to_rgb(image)
            if args.size:
                image = image.resize(tuple(int(v) for v in args.size.split("x")), Image.BICUBIC)
            images.append(DecodedImage(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())))
    errors = [""] * len(images)
    (encoder,) = loop._encoders([backbone], len(images), loop.RunOptions(device=args.device))  # graphed on a GPU
    timed = _timer(device)
    stacked = torch.stack([image.data for image in images]).to(device)
    geometry = plan_geometry(pp, int(stacked.shape[-1]), int(stacked.shape[-2]))
    top, left, size = max(geometry.top, 0), max(geometry.left, 0), geometry.size  # the window inside the image
    window = (top, left, min(size, geometry.resize_hw[0] - top), min(size, geometry.resize_hw[1] - left))
    methods = ["matmul"] + (["triton"] if device.type == "cuda" else [])  # the interpreter is for tests
    want = pil_resize(stacked.cpu(), geometry.resize_hw, pp.interpolation, window, method="matmul").to(device)
    for method in methods:
        assert torch.equal(pil_resize(stacked, geometry.resize_hw, pp.interpolation, window, method=method), want)
    assert not _triton.failed, _triton.failed
    ms = {"decode_batch (copy, resize, crop)": [], "normalize_batch": [], "forward pass (graphed on a GPU)": [],
          **{f"resize alone: pil_resize {m}": [] for m in methods}, "resize alone: like-pil (peer)": [],
          "normalize_batch torch (peer)": []}
    with torch.inference_mode():
        for r in range(args.repeats + 2):  # two warm-up batches
            ((uint8,), _), t_decode = timed(decode_batch, images, errors, [pp], device, (OSError,))
            x, t_norm = timed(normalize_batch, uint8, pp)
            _, t_forward = timed(encoder.features, x)
            t_pil = [timed(pil_resize, stacked, geometry.resize_hw, pp.interpolation, window, m)[1] for m in methods]
            _, t_peer = timed(like_pil, stacked, geometry.resize_hw, pp.interpolation)
            x_ops, t_norm_ops = timed(normalize_batch, uint8, pp, "torch")
            assert torch.equal(x_ops, x)
            if r >= 2:
                for key, t in zip(ms, (t_decode, t_norm, t_forward, *t_pil, t_peer, t_norm_ops), strict=True):
                    ms[key].append(t)
    h, w = images[0].data.shape[-2:]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, wall clock"
    print(f"{args.model}, batch {len(images)} of {w}x{h} -> {pp.image_size} px {pp.interpolation}, {where}, "
          f"amp {args.amp if device.type == 'cuda' else 'none'}; ms per batch, median of {args.repeats}:")
    for key, values in ms.items():
        print(f"  {key:34}: {statistics.median(values):8.3f}")
    pre = statistics.median(ms["decode_batch (copy, resize, crop)"]) + statistics.median(ms["normalize_batch"])
    print(f"preprocessing / forward pass: {pre / statistics.median(ms['forward pass (graphed on a GPU)']):.3f}")
    peer = statistics.median(ms["resize alone: like-pil (peer)"])
    for m in methods:
        print(f"resize: like-pil (peer) / pil_resize {m}: {peer / statistics.median(ms[f'resize alone: pil_resize {m}']):.2f}")
    ratio = statistics.median(ms["normalize_batch torch (peer)"]) / statistics.median(ms["normalize_batch"])
    print(f"normalize: torch operations (peer) / normalize_batch: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""How fast nvJPEG decodes a batch of JPEGs while the GPU computes, against an idle GPU.

On ``extract --decode gpu`` a thread decodes the next batch
(``torchvision.io.decode_jpeg(list, device="cuda")``) while the device encodes the
batch before. This measures that call alone, on the same JPEGs, in four settings:

* ``idle``: nothing else on the GPU;
* ``busy, default stream``: bf16 matrix products kept queued on the legacy default
  stream (as an extraction that computes on it keeps its forward passes queued);
* ``busy, own stream``: the same products on a stream of their own;
* each with ``--batch`` images per call (default 256 and 1024);

and the same through :class:`nvjpeg_direct.HardwareDecoder` (the same
library and hardware backend, called on a stream of the highest priority), idle
and busy, and busy once more with its stream at the default priority, and with
the library's memory taken from torch's caching allocators (which never
synchronise the device to free); then torchvision's beside smaller products.

Its rate against ``idle`` says how much the decode is slowed by the work beside it,
and the rates of the streams and batch sizes say which way round that::

    python benchmarks/nvjpeg_contention.py --jpeg-size 500x375 --per-class 200

Images come from ``../shared/data/cifar10-jpg.tar.gz`` as in
``benchmarks/extract_throughput.py``. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from pathlib import Path

import torch
from extract_throughput import _jpeg_size, cifar_folder, photo_folder
from nvjpeg_direct import HardwareDecoder


def torchvision_decode(datas: list[torch.Tensor]) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    decode_jpeg(datas, mode=ImageReadMode.RGB, device="cuda")


def decode_rate(datas: list[torch.Tensor], batch: int, decode=torchvision_decode) -> float:
    """Images per second of ``decode`` over ``datas`` in calls of ``batch`` images (each call returns once decoded)."""
    began = time.perf_counter()
    for start in range(0, len(datas), batch):
        decode(datas[start : start + batch])
    # no synchronize: decode_jpeg waits for its decoder, and a synchronize would wait for the busy stream too
    return len(datas) / (time.perf_counter() - began)


class Busy:
    """Keep bf16 matrix products queued on ``stream`` (two chunks of ``chunk`` products in flight) until stopped."""

    def __init__(self, stream, size: int = 8192, chunk: int = 8):
        self.stream, self.size, self.chunk = stream, size, chunk
        self.stop = threading.Event()
        self.products = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with torch.cuda.stream(self.stream):
            a = torch.randn(self.size, self.size, device="cuda", dtype=torch.bfloat16)
            previous = None
            while not self.stop.is_set():
                for _ in range(self.chunk):
                    a = (a @ a).clamp_(-1, 1)
                    self.products += 1
                event = torch.cuda.Event()
                event.record(self.stream)
                if previous is not None:
                    previous.synchronize()
                previous = event
            torch.cuda.synchronize()

    def __enter__(self):
        self.thread.start()
        time.sleep(0.2)  # let the queue fill
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/cifar10-jpg")
    parser.add_argument("--jpeg-size", type=_jpeg_size, metavar="WxH", help="re-encode as WxH quality-90 JPEGs")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--batch", default="256,1024", help="comma-separated images per decode_jpeg call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    folder = cifar_folder(Path(args.cache))
    if args.jpeg_size:
        folder = photo_folder(folder, Path(args.cache), args.jpeg_size, args.per_class)
    paths = [p for c in sorted(folder.iterdir()) for p in sorted(c.glob("*.jpg"))[: args.per_class]]
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    batches = [int(b) for b in args.batch.split(",")]
    decode_rate(datas[: batches[0]], batches[0])  # nvJPEG's handle and buffers
    print(f"{len(datas)} JPEGs from {folder}; {torch.cuda.get_device_name()}")
    print(f"{'images per call':>15} | {'setting':<26} | img/s best (runs)")
    settings = {  # name -> (the stream the products run on, or None for idle; the decode)
        "idle": (None, torchvision_decode),
        "busy, default stream": (torch.cuda.default_stream(), torchvision_decode),
        "busy, own stream": (torch.cuda.Stream(), torchvision_decode),
    }
    hardware = HardwareDecoder.open(torch.device("cuda"))
    if hardware is None:
        print("no nvJPEG hardware backend: the HardwareDecoder rows are left out")
    else:
        low = HardwareDecoder.open(torch.device("cuda"))
        low.stream = torch.cuda.Stream()  # the default priority, torchvision's
        settings["hardware, idle"] = (None, hardware.decode)
        settings["hardware, busy"] = (torch.cuda.default_stream(), hardware.decode)
        settings["hardware, busy, priority 0"] = (torch.cuda.default_stream(), low.decode)
        pooled = HardwareDecoder.open(torch.device("cuda"), torch_memory=True)
        settings["hardware, torch memory, busy"] = (torch.cuda.Stream(), pooled.decode)
        for decoder in (hardware, low, pooled):
            decode_rate(datas[: batches[0]], batches[0], decoder.decode)
        pooled.allocations.clear()
        decode_rate(datas, batches[0], pooled.decode)
        calls = -(-len(datas) // batches[0])
        print(f"torch memory: the library's memory calls in {calls} decode calls after the first: "
              f"{dict(pooled.allocations) or 'none'}")
    settings["busy, 4096 x 4096 products"] = (torch.cuda.Stream(), torchvision_decode)
    for batch in batches:
        for name, (stream, decode) in settings.items():
            rates = []
            for _ in range(args.repeats):
                if stream is None:
                    rates.append(decode_rate(datas, batch, decode))
                else:
                    with Busy(stream, size=4096, chunk=32) if "4096" in name else Busy(stream):
                        rates.append(decode_rate(datas, batch, decode))
            print(f"{batch:>15} | {name:<26} | {max(rates):8.0f} ({', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()

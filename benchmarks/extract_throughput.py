"""End-to-end ``clipcache extract`` throughput against the model's forward-only throughput.

Both are measured in one run, on the same images, with the same backbone, batch
size, device and precision:

* forward-only: one batch of the images is decoded and preprocessed up front
  into tensors on the device; then only the batched forward pass over as many
  batches as there are images is timed;
* end-to-end: :func:`clipcache.extract.extract` from JPEG files to a finished
  feature store (DataLoader decoding, preprocessing, host-to-device copies,
  inference, HDF5 appends), timed over its encoding loop.

The ratio end-to-end / forward-only is the share of the model's speed that the
pipeline delivers. The forward-only rate is given eager and, unless
``--no-compiled``, with the image towers compiled as ``--compile`` compiles them
(``torch.compile``, static batch shape). End-to-end is measured for each decode
path of ``--decode`` (default: ``cpu`` and, on a CUDA device, ``gpu`` (nvJPEG) and
``hybrid`` (PIL's decode in the workers, the device's resize)). Forward-only and
the paths are measured alternately, ``--repeats`` times each, and the best run of
each is compared (as ``timeit`` does), since other processes on a shared machine
only ever slow a run down; the ratio of medians is printed too. Goals: >= 0.85 on
CPU (EfficientNet-lite0, CIFAR-10 test JPEGs) and >= 0.8 on a GPU (ViT-B-32,
16 workers)::

    python benchmarks/extract_throughput.py                      # CPU, efficientnet-lite0
    python benchmarks/extract_throughput.py --device cuda --model ViT-B-32 --pretrained none \\
        --aux '' --workers 16 --batch-size 256 --amp bf16 --per-class 1000

Images come from the CIFAR-10 test folder of ``../shared/data/cifar10-jpg.tar.gz``
(unpacked once into ``/tmp/cifar10-jpg``), its train folder with ``--split train``
(5,000 images per class: longer runs, over which starting the workers weighs less), both
with ``--split all`` (two splits of one run, which one set of workers serves), or
from ``--source``. ``--jpeg-size WxH``
makes photo-sized JPEGs of them: each CIFAR image resized (bicubic) to W x H and
saved as a quality-90 JPEG, once, under ``/tmp/cifar10-jpg/cifar10-jpg-WxH``.
For the best run of each decode path it prints where the loop waited
(``ExtractReport.waits``: workers, decode thread, device, writer), how busy the
decode thread was, and the CPU time per batch of the loop's thread (in all, and launching,
joining and finishing batches), of the decode and writer threads, and of the whole
main process: threads that wait little but are seldom on a CPU take turns at the
GIL; and how much of the loop's time starting and stopping the DataLoader's
workers took (forking 16 workers costs more the more memory the main process
holds). On a CUDA device the end-to-end runs encode through CUDA graphs
(``RunOptions.cuda_graphs``, the default), and the forward-only rate through them is
printed too; ``--no-cuda-graphs`` launches eagerly. ``--null-tower`` replaces each image
tower by one that costs a fill kernel, keeping its preprocessing: the end-to-end
rate is then what the loop sustains without a model. ``--profile N`` profiles one
more run per path (cProfile; on Python 3.12 and later it counts every thread's
calls)::

    python benchmarks/extract_throughput.py --device cuda --model ViT-B-16 --pretrained none --aux '' \
        --workers 16 --batch-size 256 --amp bf16 --per-class 1000 --jpeg-size 500x375
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from clipcache._io import atomic_output
from clipcache.extract import decode, loop, resample, transforms
from clipcache.extract.backbones import Backbone, build_backbones
from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import (
    WAIT_STAGES,
    ExtractConfig,
    ExtractReport,
    RunOptions,
    _compile_image_tower,
    extract,
)
from clipcache.extract.plan import select_samples

REPO = Path(__file__).resolve().parents[1]
TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def cifar_folder(cache: Path, split: str = "test") -> Path:
    """Unpack the CIFAR-10 JPEGs of ``split`` (``test`` or ``train``) once into ``cache`` and return their folder;
    ``all``: both, and the folder that holds them (an ImageFolder with a train and a test split)."""
    if split == "all":
        for name in ("train", "test"):
            cifar_folder(cache, name)
        return cache / "cifar10-jpg"
    folder = cache / "cifar10-jpg" / split
    if not folder.is_dir():
        if not TARBALL.is_file():
            sys.exit(f"{TARBALL} not found; pass --source FOLDER")
        with tarfile.open(TARBALL) as tar:
            members = [m for m in tar if m.name.startswith(f"cifar10-jpg/{split}/")]
            tar.extractall(cache, members=members, filter="data")
    return folder


def photo_folder(cifar: Path, cache: Path, size: tuple[int, int], per_class: int) -> Path:
    """Re-encode the first ``per_class`` CIFAR-10 JPEGs of each class of the folder ``cifar`` as ``size`` (W, H)
    quality-90 JPEGs in ``cache``.

    The classes are encoded in parallel, one process per class (at most one per CPU).
    """
    folder = cache / f"cifar10-jpg-{size[0]}x{size[1]}" / cifar.name
    jobs = [(class_dir, folder / class_dir.name, size, per_class) for class_dir in sorted(p for p in cifar.iterdir() if p.is_dir())]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(_encode_class, jobs))
    return folder


def _encode_class(job) -> None:
    class_dir, out, (width, height), per_class = job
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
        target = out / path.name
        if target.exists():
            continue
        with Image.open(path) as image, atomic_output(target) as tmp:
            image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(tmp, "JPEG", quality=90)


def _jpeg_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 500x375") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return size


def compiled_forward_only(backbones, dataset, samples, batch_size: int, device: str, amp: str, repeats: int) -> list[float]:
    """Images/s of the forward pass with the image towers compiled as ``RunOptions(compile=True)`` compiles them."""
    for backbone in backbones:
        _compile_image_tower(backbone)
    try:
        forward_only(backbones, dataset, samples[:batch_size], batch_size, device, amp, 1)  # compile, untimed
        return forward_only(backbones, dataset, samples, batch_size, device, amp, repeats)
    finally:
        _uncompile(backbones)


def graphed_forward_only(backbones, dataset, samples, batch_size: int, device: str, amp: str, repeats: int) -> list[float]:
    """Images/s of the forward pass through CUDA graphs, as ``RunOptions.cuda_graphs`` encodes (capture untimed)."""
    with torch.cuda.device(device):
        encoders = [loop._GraphedFeatures(b, batch_size) for b in backbones]
    return forward_only(backbones, dataset, samples, batch_size, device, amp, repeats, encoders)


def _uncompile(backbones) -> None:
    """Undo ``_compile_image_tower``: back to each class's eager ``encode_image``."""
    for backbone in backbones:
        backbone.__dict__.pop("encode_image", None)


def forward_only(backbones, dataset, samples, batch_size: int, device: str, amp: str, repeats: int,
                 encoders=None) -> list[float]:
    """Images/s of the batched forward pass alone, on tensors decoded beforehand.

    One batch of the samples is decoded and preprocessed up front and stays on the
    device; the timed loop runs the forward pass over as many batches (the last one
    partial) as ``samples`` makes, each a slice of that batch. The model's work does
    not depend on the pixels, and decoding every sample first would take longer
    than the measurement. ``encoders`` (by default the backbones) compute the features.
    """
    inputs = []
    for backbone in backbones:
        transform = backbone.image_preprocess()
        x = torch.stack([transform(dataset.load(int(i))) for i in samples[:batch_size]])
        inputs.append(x.to(device))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    rates = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, len(samples), batch_size):
                size = min(batch_size, len(samples) - start)
                for encoder, x in zip(encoders or backbones, inputs, strict=True):
                    encoder.features(x[:size]).float().cpu()
        _sync(device)
        rates.append(len(samples) / (time.perf_counter() - began))
    return rates


class NullTower(Backbone):
    """A stand-in for ``backbone`` with its name, dimension and preprocessing whose image tower costs one fill
    kernel: a run with it measures what the loop sustains without a model (``--null-tower``)."""

    def __init__(self, backbone: Backbone):
        super().__init__(torch.nn.Identity(), {"null_tower_of": backbone.name})
        self.name, self.dim, self.preprocess = backbone.name, backbone.dim, backbone.preprocess
        self.precision = backbone.precision
        self.to(backbone.device)

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.new_ones(batch.shape[0], self.dim)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: The loop module's functions whose CPU time (in the thread that runs them) a run reports (``Run.cpu``): the
#: loop's thread in all and in three steps, the decode thread's work and the writer thread's store calls.
CPU_STEPS = {"_run_splits": "loop", "_launch_batch": "launch", "_assemble": "assemble", "_finish_batch": "finish",
             "_decode_payloads": "decode thread", "_write_batch": "writer thread"}


@dataclasses.dataclass
class Run:
    """One end-to-end run and where its threads spent their time.

    ``busy``: the seconds the decode thread (``--decode gpu`` and ``hybrid``) spent
    in ``decode_batch``, in all and in its decode_jpeg calls (nvJPEG on a GPU,
    which return once the decoder is done). ``cpu``: the CPU seconds of the threads
    in the steps of :data:`CPU_STEPS` (``loop``: the loop's thread, each split from
    start to end), and of the whole main process during the call (``process``, every
    thread, not the DataLoader workers), over ``batches`` batches. CPU time leaves out what a thread waits, for
    a stage or for the GIL, except a wait that spins (CUDA's event waits may):
    ``finish`` holds the wait for the device's features. When the process's CPU
    time is about its wall time while the loop's thread's is well below, the
    threads take turns at the GIL. ``setup``: the seconds of the whole ``extract``
    call (``call``), and of capturing CUDA graphs (``capture``, ``--cuda-graphs``),
    before the loop and outside its time; then, inside the loop's time, of starting
    the DataLoader's workers (``workers start``: creating its iterator, which forks
    them) and of stopping them (``workers stop``; on the ``gpu`` and ``hybrid`` paths
    the decode thread stops them beside the last batches, so it overlaps the loop).
    """

    report: ExtractReport | None = None
    busy: dict = dataclasses.field(default_factory=lambda: {"decode_batch": 0.0, "nvjpeg": 0.0})
    cpu: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(["process", *CPU_STEPS.values()], 0.0))
    setup: dict = dataclasses.field(
        default_factory=lambda: {"capture": 0.0, "call": 0.0, "workers start": 0.0, "workers stop": 0.0})
    batches: int = 0


def _timed(module, name: str, totals: dict, key: str, clock=time.perf_counter):
    """Patch ``module.name`` so that its calls add their seconds on ``clock`` to ``totals[key]``; return the original."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        began = clock()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += clock() - began

    setattr(module, name, timed)
    return original


def _timed_loader(totals: dict, key: str):
    """A DataLoader whose ``iter()`` (which starts the workers) adds its seconds to ``totals[key]``."""

    class TimedLoader(loop.DataLoader):
        def __iter__(self):
            began = time.perf_counter()
            try:
                return super().__iter__()
            finally:
                totals[key] += time.perf_counter() - began

    return TimedLoader


def end_to_end(config: ExtractConfig, options: RunOptions, backbones, repeats: int) -> list[Run]:
    """``repeats`` extractions, JPEG files to a complete store (rates, waits and the threads' times)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            run = Run()
            patched = {
                (loop, "decode_batch"): _timed(loop, "decode_batch", run.busy, "decode_batch"),
                (decode, "_decode_on"): _timed(decode, "_decode_on", run.busy, "nvjpeg"),
                (loop, "_encoders"): _timed(loop, "_encoders", run.setup, "capture"),
                (loop, "_stop_workers"): _timed(loop, "_stop_workers", run.setup, "workers stop"),
                (loop, "DataLoader"): loop.DataLoader,
            }
            loop.DataLoader = _timed_loader(run.setup, "workers start")
            for name, step in CPU_STEPS.items():
                patched[loop, name] = _timed(loop, name, run.cpu, step, time.thread_time)
            began, began_cpu = time.perf_counter(), time.process_time()
            try:
                run.report = extract(os.path.join(tmp, f"bench{r}.h5"), config, options, backbones=backbones)
                run.cpu["process"] = time.process_time() - began_cpu
                run.setup["call"] = time.perf_counter() - began
                run.batches = sum(-(-n // config.batch_size) for n in run.report.rows.values())
            finally:
                for (module, name), original in patched.items():
                    setattr(module, name, original)
            runs.append(run)
            _uncompile(backbones)  # options.compile compiled them in place; the forward-only runs are eager
    return runs


def _waits(run: Run, graphs: bool = False, decode: str = "cpu") -> str:
    """The loop's waits of a run as shares of its time (ExtractReport.waits), the decode thread's busy time, and
    the CPU time of the loop's thread."""
    report = run.report
    text = ", ".join(f"{stage} {report.waits[stage] / report.seconds:.0%}" for stage in WAIT_STAGES)
    if run.busy["decode_batch"]:
        text += f"; the decode thread was busy {run.busy['decode_batch'] / report.seconds:.0%} of the time"
    if run.busy["nvjpeg"]:
        text += f" (its decode_jpeg calls {run.busy['nvjpeg'] / report.seconds:.0%})"
    if run.cpu["loop"]:
        per = 1e3 / max(1, run.batches)
        steps = ", ".join(f"{step} {run.cpu[step] * per:.2f}" for step in list(CPU_STEPS.values())[1:])
        text += (f"; CPU ms per batch: the loop's thread {run.cpu['loop'] * per:.2f} ({steps}); the main process "
                 f"{run.cpu['process'] / run.setup['call']:.0%} of the whole call's {run.setup['call']:.2f} s")
    if graphs:
        text += f"; CUDA graphs captured in {run.setup['capture']:.2f} s before the loop"
    if run.setup["workers start"]:  # timed (not under --profile)
        text += (f"; of the loop's {report.seconds:.2f} s, starting the workers took {run.setup['workers start']:.2f} s "
                 f"and stopping them {run.setup['workers stop']:.2f} s"
                 f"{' (in the decode thread, beside the last batches)' if decode != 'cpu' else ''}")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="ImageFolder of JPEGs (default: CIFAR-10 test from the shared tarball)")
    parser.add_argument("--cache", default="/tmp/cifar10-jpg", help="where the tarball's images are unpacked")
    parser.add_argument("--split", default="test", choices=["test", "train", "all"],
                        help="the CIFAR-10 split (test: 1,000 images per class; train: 5,000; all: both, extracted "
                             "as two splits of one run, --per-class images per class of each; the forward-only rate "
                             "is measured on train's)")
    parser.add_argument("--jpeg-size", type=_jpeg_size, metavar="WxH",
                        help="re-encode the CIFAR-10 images as WxH quality-90 JPEGs (in --cache) and use those")
    parser.add_argument("--decode", help="comma-separated decode paths to measure end to end "
                        "(default: cpu, and gpu and hybrid on a CUDA device)")
    parser.add_argument("--compile", action="store_true", help="also compile the towers in the end-to-end runs")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled forward-only measurement")
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
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="after the measurements, profile one more end-to-end run per decode path (cProfile, "
                             "the loop's thread) and print its N costliest functions by own time")
    parser.add_argument("--part-items", type=int,
                        help="fewest images in a worker's part of a batch (clipcache.extract.loop.MIN_PART_ITEMS, "
                             f"default {loop.MIN_PART_ITEMS}); the batch size disables parts")
    parser.add_argument("--preprocess-stream", action="store_true",
                        help="on the gpu and hybrid paths, resize each batch on a CUDA stream of its own, beside the "
                             "encoding of the one before (clipcache.extract.loop.PREPROCESS_STREAM, off by default)")
    parser.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True,
                        help="on a CUDA device, resize (gpu and hybrid paths) and normalise with the Triton kernels "
                             "(clipcache.extract.resample.CUDA_METHOD, transforms.NORMALIZE_CUDA_METHOD, the "
                             "default); --no-triton uses float64 products and torch's operations: the same bytes")
    parser.add_argument("--null-tower", action="store_true",
                        help="replace each image tower by one that costs a fill kernel (same preprocessing): the "
                             "end-to-end rate is then what the loop sustains without a model")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="on a CUDA device, encode full batches end to end by replaying a CUDA graph of each tower "
                             "(RunOptions.cuda_graphs, on by default), and print the forward-only rate through them "
                             "too (the ratio stays to the eager one)")
    args = parser.parse_args(argv)
    graphs = args.cuda_graphs and args.device.startswith("cuda") and not args.compile
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part_items:
        loop.MIN_PART_ITEMS = args.part_items
    loop.PREPROCESS_STREAM = args.preprocess_stream
    resample.CUDA_METHOD = "triton" if args.triton else "matmul"
    transforms.NORMALIZE_CUDA_METHOD = "triton" if args.triton else "torch"

    source = Path(args.source) if args.source else cifar_folder(Path(args.cache), args.split)
    if args.jpeg_size and args.split == "all":
        parser.error("--jpeg-size takes one split: --split test or train")
    if args.jpeg_size:
        source = photo_folder(source, Path(args.cache), args.jpeg_size, args.per_class)
    decodes = args.decode.split(",") if args.decode else ["cpu"] + (["gpu", "hybrid"] if args.device.startswith("cuda") else [])
    aux = tuple(a for a in args.aux.split(",") if a)
    config = ExtractConfig(
        source=str(source), model=args.model, pretrained=args.pretrained, aux=aux,
        max_per_class=args.per_class, batch_size=args.batch_size,
    )
    options = {d: RunOptions(workers=args.workers, device=args.device, amp=args.amp, progress=False, decode=d,
                             compile=args.compile, cuda_graphs=args.cuda_graphs) for d in decodes}
    backbones = [b.to(args.device) for b in build_backbones(args.model, args.pretrained, aux)]
    if args.null_tower:
        backbones = [NullTower(b) for b in backbones]
    dataset = open_dataset(source)
    selected = select_samples(dataset, max_per_class=args.per_class)
    split, samples = next(iter(selected.values()))  # the forward-only images: train's, with --split all

    # Warm up both paths (allocator, oneDNN/cuDNN kernel choice) before timing.
    forward_only(backbones, split, samples[: args.batch_size], args.batch_size, args.device, args.amp, 1)
    fwd, e2e, failed = [], {d: [] for d in decodes}, {}
    for _ in range(args.repeats):  # alternate, so that load from other processes hits both alike
        fwd += forward_only(backbones, split, samples, args.batch_size, args.device, args.amp, 1)
        for d in decodes:
            if d in failed:
                continue
            try:
                e2e[d] += end_to_end(config, options[d], backbones, 1)
            except Exception as exc:  # report it, and go on measuring the other decode paths
                traceback.print_exc()
                failed[d] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    compiled = [] if args.no_compiled else compiled_forward_only(
        backbones, split, samples, args.batch_size, args.device, args.amp, args.repeats)
    graphed = []
    if graphs:
        try:
            graphed = graphed_forward_only(backbones, split, samples, args.batch_size, args.device, args.amp, args.repeats)
        except Exception:  # report it, and print the rest
            traceback.print_exc()
    f, c = max(fwd), max(compiled, default=float("nan"))
    names = ", ".join(b.name for b in backbones)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    print(f"images: {' + '.join(f'{len(s)} ({name})' for name, (_, s) in selected.items())} from {source}; backbones: {names}; device {args.device} ({where}), "
          f"batch {args.batch_size}, workers {args.workers} (parts of at least {loop.MIN_PART_ITEMS} images), "
          f"amp {args.amp}, torch threads {torch.get_num_threads()}"
          f"{', end-to-end through CUDA graphs' if graphs else ''}"
          f"{', resizing on a stream of its own' if loop.PREPROCESS_STREAM else ''}"
          f"{', no Triton kernels' if args.device.startswith('cuda') and not args.triton else ''}"
          f"{', null towers (no model: the loop alone)' if args.null_tower else ''}"
          f"{', end-to-end compiled' if args.compile else ''}")
    print(f"forward-only eager    : {f:8.1f} img/s best (runs: {', '.join(f'{r:.1f}' for r in fwd)})")
    print(f"forward-only compiled : {c:8.1f} img/s best (runs: {', '.join(f'{r:.1f}' for r in compiled) or 'skipped'})")
    if graphed:
        print(f"forward-only graphed  : {max(graphed):8.1f} img/s best (runs: {', '.join(f'{r:.1f}' for r in graphed)})")
    print(f"{'decode':>6} | {'fwd eager':>10} | {'fwd compiled':>12} | {'end-to-end':>10} | {'ratio':>6} | "
          f"{'ratio median':>12} | end-to-end runs")
    for d in decodes:
        if d in failed:
            print(f"{d:>6} | failed: {failed[d]}")
            continue
        rates = [r.report.images_per_second for r in e2e[d]]
        e = max(rates)
        median = statistics.median(rates) / statistics.median(fwd)
        print(f"{d:>6} | {f:10.1f} | {c:12.1f} | {e:10.1f} | {e / f:6.3f} | {median:12.3f} | "
              f"{', '.join(f'{r:.1f}' for r in rates)}")
    print("ratio: best end-to-end / best eager forward-only; ratio median: the same of medians (noisy on a shared machine)")
    for d in decodes:
        if d not in failed:
            print(f"{d:>6} best run, the loop's waits (share of its time): "
                  f"{_waits(max(e2e[d], key=lambda r: r.report.images_per_second), graphs, d)}")
    for d in decodes if args.profile else ():
        if d not in failed:
            profile(config, options[d], backbones, args.profile)


def profile(config: ExtractConfig, options: RunOptions, backbones, top: int) -> None:
    """Print the ``top`` functions of one end-to-end run by own time in the loop's thread (cProfile)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        report = profiler.runcall(extract, os.path.join(tmp, "profiled.h5"), config, options, backbones=backbones)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    print(f"\n## profile, decode {options.decode}: {report.images_per_second:.1f} img/s under cProfile; {_waits(Run(report))}")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-6000:])


if __name__ == "__main__":
    main()

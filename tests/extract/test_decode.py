"""The byte-decode path (``RunOptions.decode``), run on the CPU.

torchvision's ``decode_jpeg`` also decodes on the CPU, so these tests run the
``gpu`` path's code (workers read bytes, the main process decodes the batch
with ``decode_jpeg`` and resizes tensors) on a cpu device through the internal
switch ``decode._TENSOR_PATH_ON_CPU``. nvJPEG itself is tested in
tests/extract/test_decode_gpu.py, on a CUDA machine only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.errors import DatasetError, InvalidParameterError, StoreMismatchError
from clipcache.extract import decode as decode_module
from clipcache.extract.backbones import build_timm
from clipcache.extract.datasets import open_dataset
from clipcache.extract.decode import (
    DecodedImage,
    EncodedImage,
    PackedPayloads,
    decode_batch,
    device_decodable,
    resolve_decode,
    tensor_preprocess,
)
from clipcache.extract.demo import draw_shape
from clipcache.extract.images import load_image
from clipcache.extract.loop import (
    _DECODE_ERRORS,
    ExtractConfig,
    RunOptions,
    _assemble,
    _compile_image_tower,
    _ItemDataset,
    extract,
)
from clipcache.extract.plan import build_plans, select_samples
from clipcache.extract.transforms import Preprocess, eval_transform_uint8
from clipcache.feature_store import schema
from tests.extract.helpers import interrupt_append, interrupted_extract, snapshot

#: torchvision >= 0.29 deprecates its decoders (in favour of torchcodec); the tests call decode_jpeg directly.
NO_TV_DEPRECATION = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
QUIET = RunOptions(progress=False, decode="cpu")
TENSOR = RunOptions(progress=False, decode="gpu")  # with the switch on: the byte path on the cpu device
HYBRID = RunOptions(progress=False, decode="hybrid")  # PIL in the workers, the tensor resize on the (cpu) device
PP = Preprocess(64, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")


@pytest.fixture
def tensor_path_on_cpu(monkeypatch):
    monkeypatch.setattr(decode_module, "_TENSOR_PATH_ON_CPU", True)


def _jpeg(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kw)
    return buffer.getvalue()


def _jpeg_folder(image_folder, folder):
    """``image_folder``'s PNGs as JPEGs under ``folder``, so that the tensor paths decode them."""
    for png in image_folder.rglob("*.png"):
        target = folder / png.relative_to(image_folder).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_jpeg(Image.open(png).convert("RGB")))
    return folder


def _shape(i: int, size: int = 40) -> Image.Image:
    return draw_shape(("circle", "square")[i % 2], np.random.default_rng(i), size=size)


def _corrupt_scan(data: bytes) -> bytes:
    """A JPEG with a complete header and EOI whose scan holds a bogus marker: neither decoder reads it."""
    out = bytearray(data)
    mid = len(out) // 2
    for k in range(mid, mid + 200):
        out[k] = 0xFF if k % 7 == 0 else out[k] ^ 0x5A
    out[mid : mid + 2] = b"\xff\xc4"
    return bytes(out)


FILES = {  # name -> bytes maker; the decoder each one takes, and whether it is read at all
    "rgb.jpg": lambda: _jpeg(_shape(1)),
    "progressive.jpg": lambda: _jpeg(_shape(2), progressive=True),
    "gray.jpg": lambda: _jpeg(_shape(3).convert("L")),
    "cmyk.jpg": lambda: _jpeg(_shape(4).convert("CMYK")),
    "image.png": lambda: _png(_shape(5)),
    "truncated.jpg": lambda: _jpeg(_shape(6))[:400],
    "corrupt.jpg": lambda: _corrupt_scan(_jpeg(_shape(7, size=64))),
    "garbage.jpg": lambda: b"not an image at all",
}
DEVICE = {"rgb.jpg", "progressive.jpg", "corrupt.jpg"}  # what device_decodable passes on as bytes
UNREADABLE = {"truncated.jpg", "corrupt.jpg", "garbage.jpg"}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def mixed_folder(tmp_path):
    """``test/a`` holds one file of each kind in FILES; ``test/b`` holds 5 plain RGB JPEGs of other sizes."""
    root = tmp_path / "mixed"
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "b").mkdir(parents=True)
    for name, make in FILES.items():
        (root / "test" / "a" / name).write_bytes(make())
    for i in range(5):
        (root / "test" / "b" / f"{i}.jpg").write_bytes(_jpeg(_shape(10 + i, size=30 + 7 * i)))
    return root


def _config(folder, **kw) -> ExtractConfig:
    base = dict(source=str(folder), model="clipcache-tiny-vit", pretrained="none", aux=("efficientnet-lite0",),
                image_size=64, batch_size=4)
    base.update(kw)
    return ExtractConfig(**base)


# --------------------------------------------------------------------------- which path each file takes


@pytest.mark.parametrize("name", sorted(FILES))
def test_device_decodable_takes_only_complete_colour_huffman_jpegs(name):
    assert device_decodable(FILES[name]()) is (name in DEVICE)


def test_adobe_rgb_and_arithmetic_jpegs_go_to_the_cpu():
    data = _jpeg(_shape(1))
    adobe_rgb = data[:2] + b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00" + data[2:]
    adobe_ycc = data[:2] + b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01" + data[2:]
    arithmetic = data.replace(b"\xff\xc0", b"\xff\xc9", 1)
    assert (device_decodable(adobe_rgb), device_decodable(adobe_ycc), device_decodable(arithmetic)) == (False, True, False)


def test_workers_only_read_the_bytes_of_device_jpegs(mixed_folder):
    (plan,) = build_plans(select_samples(open_dataset(str(mixed_folder))), views=1, batch_size=4, shard=(0, 1))
    dataset = _ItemDataset(plan, [PP], augment=False, seed=0, decode="gpu")
    kinds = {}
    for item in range(plan.n_items):
        _, payload, error = dataset[item]
        key = plan.source.keys[plan.sample_of(item)].split("/")[-1]
        kinds[key] = "bytes" if isinstance(payload, EncodedImage) else ("error" if error else "cpu")
        if isinstance(payload, EncodedImage):
            assert payload.data.numpy().tobytes() == (mixed_folder / plan.source.keys[plan.sample_of(item)]).read_bytes()
    assert kinds == {
        "rgb.jpg": "bytes", "progressive.jpg": "bytes", "corrupt.jpg": "bytes",
        "gray.jpg": "cpu", "cmyk.jpg": "cpu", "image.png": "cpu",
        "truncated.jpg": "error", "garbage.jpg": "error",
        **{f"{i}.jpg": "bytes" for i in range(5)},
    }


# --------------------------------------------------------------------------- the batch step


def _payload(data: bytes, tmp_path):
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.jpg"
    path.write_bytes(data)
    return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), str(path))


@NO_TV_DEPRECATION
def test_decode_batch_resizes_like_pil_and_falls_back_one_at_a_time(monkeypatch, tmp_path):
    import torchvision.io

    datas = [_jpeg(_shape(i, size=30 + 5 * i)) for i in range(4)]
    real, calls = torchvision.io.decode_jpeg, []

    def flaky(data, **kw):  # the batch call fails, and so does image 2 alone: it must go to PIL
        calls.append(len(data) if isinstance(data, list) else "one")
        if isinstance(data, list) or data.numel() == len(datas[2]):
            raise RuntimeError("simulated device decoder failure")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    cpu_rows = [eval_transform_uint8(PP)(load_image(io.BytesIO(d))) for d in datas]
    (out,), errors = decode_batch([_payload(d, tmp_path) for d in datas], [""] * 4, [PP], "cpu", _DECODE_ERRORS)
    assert calls == [4, "one", "one", "one", "one"]
    assert errors == [""] * 4
    assert torch.equal(out[2], cpu_rows[2])  # the fallback is the CPU path itself
    for i in (0, 1, 3):
        tensor_row = tensor_preprocess(real(_payload(datas[i], tmp_path).data, mode=torchvision.io.ImageReadMode.RGB), PP)
        assert torch.equal(out[i], tensor_row)
        assert torch.equal(out[i], cpu_rows[i])  # libjpeg-turbo and PIL's resize, as on the cpu path


def test_decode_batch_keeps_worker_rows_and_records_what_nothing_reads(tmp_path):
    data = _jpeg(_shape(1))
    worker_row = eval_transform_uint8(PP)(_shape(5))
    payloads = [_payload(data, tmp_path), [worker_row], _payload(_corrupt_scan(_jpeg(_shape(7, size=64))), tmp_path), [torch.zeros_like(worker_row)]]
    (out,), errors = decode_batch(payloads, ["", "", "", "OSError: worker failed"], [PP], "cpu", _DECODE_ERRORS)
    assert torch.equal(out[1], worker_row)
    assert errors[0] == errors[1] == "" and errors[3] == "OSError: worker failed"
    assert errors[2].startswith("OSError: broken data stream")
    assert int(out[2].abs().sum()) == 0 and int(out[3].abs().sum()) == 0


def test_packed_payloads_cross_as_one_buffer_and_unpack_to_the_same_payloads(tmp_path):
    datas = [_jpeg(_shape(1)), _jpeg(_shape(2), progressive=True)]
    row = eval_transform_uint8(PP)(_shape(5))
    payloads = [_payload(datas[0], tmp_path), [row], _payload(datas[1], tmp_path)]
    packed = PackedPayloads.pack(payloads)
    assert isinstance(packed.buffer, np.ndarray) and packed.buffer.tobytes() == datas[0] + datas[1]
    back = packed.unpack()
    assert [p.path for p in (back[0], back[2])] == [payloads[0].path, payloads[2].path]
    assert [p.data.numpy().tobytes() for p in (back[0], back[2])] == datas
    assert back[1][0] is row
    assert PackedPayloads.pack([[row]]).buffer.size == 0


def test_assemble_joins_the_parts_of_a_batch_in_order(tmp_path):
    rows = [eval_transform_uint8(PP)(_shape(i)) for i in range(4)]
    data = _jpeg(_shape(9))
    cpu_part = (np.array([0, 1]), [torch.stack(rows[:2])], ["", "OSError: x"])
    cpu_part2 = (np.array([2, 3]), [torch.stack(rows[2:])], ["", ""])
    items, chunks, errors, payloads = _assemble([cpu_part, cpu_part2])
    assert not payloads and items.tolist() == [0, 1, 2, 3] and errors == ["", "OSError: x", "", ""]
    assert len(chunks) == 1 and torch.equal(torch.cat(chunks[0]), torch.stack(rows))
    byte_part = (np.array([4, 5]), PackedPayloads.pack([_payload(data, tmp_path), [rows[3]]]), ["", ""])
    items, mixed, errors, payloads = _assemble([cpu_part, byte_part])
    assert payloads and items.tolist() == [0, 1, 4, 5] and errors == ["", "OSError: x", "", ""]
    assert [torch.equal(mixed[i][0], rows[i]) for i in (0, 1)] == [True, True]  # a CPU part's rows, one per item
    assert mixed[2].data.numpy().tobytes() == data and torch.equal(mixed[3][0], rows[3])


def test_decode_thread_decodes_one_batch_ahead_and_keeps_the_batch_order(tmp_path, monkeypatch):
    """On the byte path a thread decodes batch k + 1 before batch k is yielded; CPU-path batches keep their place."""
    import threading

    from clipcache.extract import loop

    events, second = [], threading.Event()

    def fake_decode(payloads, errors, preprocesses, device, decode_errors):
        events.append(("decoded", len(payloads), threading.current_thread().name))
        if len(payloads) == 2:
            second.set()
        return [torch.full((len(payloads), 3, 2, 2), len(payloads), dtype=torch.uint8)], list(errors)

    monkeypatch.setattr(loop, "decode_batch", fake_decode)
    data = _jpeg(_shape(1))

    def byte_part(n):
        return np.arange(n), PackedPayloads.pack([_payload(data, tmp_path)] * n), [""] * n

    cpu_part = (np.arange(5), [torch.zeros(5, 3, 2, 2, dtype=torch.uint8)], [""] * 5)
    parts = iter([byte_part(1), byte_part(2), cpu_part, byte_part(3)])
    waits = dict.fromkeys(loop.WAIT_STAGES, 0.0)
    batches = loop._decoded_batches(parts, [[0]] * 4, [PP], torch.device("cpu"), "gpu", waits)
    got = []
    for items, tensors, _ in batches:
        if not got:  # the generator is suspended here: only a decode submitted before this yield can run now
            assert second.wait(timeout=30), "the second batch was not decoded ahead of the first"
        got.append((len(items), int(tensors[0][0].flatten()[0]) if len(items) != 5 else 0))
    assert got == [(1, 1), (2, 2), (5, 0), (3, 3)]
    assert [e[1] for e in events] == [1, 2, 3] and {e[2] for e in events} == {"clipcache-decode_0"}
    assert not any(t.name.startswith("clipcache-decode") for t in threading.enumerate())


def test_closing_the_batches_early_stops_the_decode_thread(tmp_path, monkeypatch):
    """A run that stops early (a strict run's unreadable image, an interrupt) leaves no decode thread behind."""
    import threading

    from clipcache.extract import loop

    monkeypatch.setattr(loop, "decode_batch", lambda p, e, *a: ([torch.zeros((len(p), 3, 2, 2), dtype=torch.uint8)], list(e)))
    data = _jpeg(_shape(1))
    parts = iter([(np.arange(1), PackedPayloads.pack([_payload(data, tmp_path)]), [""]) for _ in range(4)])
    batches = loop._decoded_batches(parts, [[0]] * 4, [PP], torch.device("cpu"), "gpu", dict.fromkeys(loop.WAIT_STAGES, 0.0))
    next(batches)  # batch 1's decode is submitted
    assert any(t.name.startswith("clipcache-decode") for t in threading.enumerate())
    batches.close()
    assert not any(t.name.startswith("clipcache-decode") for t in threading.enumerate())


def test_decode_path_cpu_yields_each_batch_as_it_is_fetched():
    from clipcache.extract import loop

    fetched = []

    def parts():
        for i in range(3):
            fetched.append(i)
            yield np.array([i]), [torch.zeros(1, 3, 2, 2, dtype=torch.uint8)], [""]

    batches = loop._decoded_batches(parts(), [[0]] * 3, [PP], torch.device("cpu"), "cpu", dict.fromkeys(loop.WAIT_STAGES, 0.0))
    for i, (items, _, _) in enumerate(batches):
        assert items.tolist() == [i] and fetched == list(range(i + 1))


@pytest.mark.parametrize(("n", "workers", "sizes"), [(13, 2, [7, 6]), (13, 1, [13]), (3, 4, [1, 1, 1]), (13, 0, [13])])
def test_parts_split_a_batch_in_order_one_per_worker(monkeypatch, n, workers, sizes):
    from clipcache.extract import loop

    monkeypatch.setattr(loop, "MIN_PART_ITEMS", 1)
    parts = loop._parts(list(range(10, 10 + n)), workers)
    assert [len(p) for p in parts] == sizes and sum(parts, []) == list(range(10, 10 + n))


def test_parts_keep_at_least_min_part_items():
    from clipcache.extract import loop

    assert loop.MIN_PART_ITEMS == 32
    assert [len(p) for p in loop._parts(list(range(256)), 16)] == [32] * 8
    assert [len(p) for p in loop._parts(list(range(70)), 16)] == [35, 35]  # 2 parts of >= 32
    assert [len(p) for p in loop._parts(list(range(31)), 16)] == [31]


@pytest.mark.parametrize("options", [QUIET, TENSOR, HYBRID], ids=["cpu", "tensor-path", "hybrid"])
def test_workers_decoding_parts_of_batches_give_the_same_store(mixed_folder, tmp_path, tensor_path_on_cpu, monkeypatch, options):
    """Batches split into parts among workers (and joined again) store exactly what one process stores."""
    from clipcache.extract import loop

    monkeypatch.setattr(loop, "MIN_PART_ITEMS", 2)
    config = _config(mixed_folder, batch_size=13)
    extract(tmp_path / "one.h5", config, dataclasses.replace(options, workers=0))
    extract(tmp_path / "parts.h5", config, dataclasses.replace(options, workers=2))  # parts of 7 and 6
    assert snapshot(tmp_path / "one.h5") == snapshot(tmp_path / "parts.h5")


# --------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("path", ["gpu", "hybrid"], ids=["tensor-path", "hybrid"])
def test_tensor_and_hybrid_paths_match_the_cpu_path_and_skip_the_same_files(mixed_folder, tmp_path, tensor_path_on_cpu, path):
    """Both read what the CPU path reads and skip what it skips. The tensor path hands grayscale, CMYK and PNG files to
    the CPU path (the same bytes); the hybrid path decodes them with PIL and resizes them as the rest."""
    extract(tmp_path / "cpu.h5", _config(mixed_folder), QUIET)
    extract(tmp_path / "other.h5", _config(mixed_folder), RunOptions(progress=False, decode=path))
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "other.h5") as b:
        assert list(a.ids("test")) == list(b.ids("test"))
        assert a.skipped("test") == b.skipped("test")
        assert {sid.split("/")[-1] for sid, _, _ in b.skipped("test")} == UNREADABLE
        for name in ("clip", "efficientnet-lite0"):
            assert schema.decode_of(a.feature_sets[name].provenance) == "cpu"
            assert b.feature_sets[name].provenance[schema.DECODE] == path
            fa, fb = a.features("test", name), b.features("test", name)
            for row, sid in enumerate(a.ids("test")):
                if path == "gpu" and sid.split("/")[-1] in ("gray.jpg", "cmyk.jpg", "image.png"):  # the CPU fallback
                    assert fa[row].tobytes() == fb[row].tobytes()
            cosine = (fa * fb).sum(1)  # both L2-normalised
            assert cosine.min() > 0.999, (name, cosine.min())


def test_hybrid_resizes_images_above_the_pixel_cap_on_the_cpu_path(mixed_folder, tmp_path, monkeypatch):
    """An image of more than HYBRID_MAX_PIXELS times the input's pixels is resized by its worker, smaller ones travel
    decoded and are resized on the device; both give the cpu path's rows, byte for byte (PIL's resize either way)."""
    from clipcache.extract import loop

    monkeypatch.setattr(loop, "HYBRID_MAX_PIXELS", 0.5)  # 0.5 * 64 ** 2 = 2,048 pixels: test/b's 51 and 58 px go over
    plan, = build_plans(select_samples(open_dataset(mixed_folder)), views=1, batch_size=4, shard=(0, 1))
    dataset = _ItemDataset(plan, [PP], augment=False, seed=0, decode="hybrid")
    kinds = {plan.keys_of(np.array([i]))[0]: type(dataset[i][1]).__name__ for i in range(plan.n_items)}
    assert kinds["test/b/3.jpg"] == kinds["test/b/4.jpg"] == "list"  # 51 x 51 and 58 x 58: the cpu path's rows
    assert kinds["test/b/2.jpg"] == kinds["test/a/rgb.jpg"] == "DecodedImage"  # 44 x 44 and 40 x 40
    config = _config(mixed_folder)
    extract(tmp_path / "cpu.h5", config, QUIET)
    extract(tmp_path / "hybrid.h5", config, HYBRID)
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "hybrid.h5") as b:
        rows = {sid: row for row, sid in enumerate(a.ids("test"))}
        fa, fb = a.features("test", "efficientnet-lite0"), b.features("test", "efficientnet-lite0")
        for sid in ("test/b/3.jpg", "test/b/4.jpg", "test/b/2.jpg", "test/a/rgb.jpg"):
            assert fa[rows[sid]].tobytes() == fb[rows[sid]].tobytes()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_hybrid_run_equals_an_uninterrupted_one(mixed_folder, tmp_path, workers):
    options = dataclasses.replace(HYBRID, workers=workers)
    extract(tmp_path / "whole.h5", _config(mixed_folder), options)
    interrupted_extract(tmp_path / "s.h5", _config(mixed_folder), options)
    extract(tmp_path / "s.h5", _config(mixed_folder), options, resume=True)
    assert snapshot(tmp_path / "s.h5") == snapshot(tmp_path / "whole.h5")


def test_the_workers_stop_in_the_decode_thread_after_the_last_part_and_before_the_run_returns(
    mixed_folder, tmp_path, monkeypatch
):
    """On the hybrid path, once every part is fetched the decode thread stops the workers while the loop's thread
    finishes the last batches; every worker has exited when extract returns, and the store is the serial run's."""
    import multiprocessing
    import threading

    from clipcache.extract import loop

    real, stops = loop._stop_workers, []

    def stop(parts):
        stops.append((threading.current_thread().name, hasattr(parts, "_shutdown_workers")))
        real(parts)

    monkeypatch.setattr(loop, "_stop_workers", stop)
    extract(tmp_path / "workers.h5", _config(mixed_folder), dataclasses.replace(HYBRID, workers=2))
    assert multiprocessing.active_children() == []
    # the decode thread's stop, then the loop's own on its way out (which finds the workers stopped)
    assert [(name.split("_")[0], workers) for name, workers in stops] == [("clipcache-decode", True), ("MainThread", True)]
    monkeypatch.undo()
    extract(tmp_path / "serial.h5", _config(mixed_folder), HYBRID)
    assert snapshot(tmp_path / "workers.h5") == snapshot(tmp_path / "serial.h5")


def test_decode_batch_resizes_decoded_images_on_the_device_by_size(tmp_path):
    """DecodedImage payloads of two sizes, a worker's CPU-path row and a failed item: each row as the tensor path makes
    it from the same pixels."""
    from clipcache.extract.transforms import to_uint8_tensor

    images = [to_uint8_tensor(_shape(i, size=size)) for i, size in ((1, 40), (2, 23), (3, 40))]
    worker_row = eval_transform_uint8(PP)(_shape(5))
    payloads = [DecodedImage(images[0]), DecodedImage(images[1]), [worker_row], DecodedImage(images[2]),
                [torch.zeros_like(worker_row)]]
    (out,), errors = decode_batch(payloads, ["", "", "", "", "OSError: x"], [PP], "cpu", _DECODE_ERRORS)
    assert errors == ["", "", "", "", "OSError: x"]
    for row, image in zip((0, 1, 3), images, strict=True):
        assert torch.equal(out[row], tensor_preprocess(image, PP))
    assert torch.equal(out[2], worker_row) and int(out[4].abs().sum()) == 0


def test_decode_batch_of_one_image_size_returns_the_resize_itself_with_each_row_as_the_tensor_path_makes_it():
    """Every item one size, in order (CIFAR's thumbnails): no zeroed batch and no scatter into it, for two
    preprocessings (one that resizes, one that only crops); each row equals the tensor path's, and the failed-row
    path of the same images (one item a failed worker row) gives the same rows elsewhere."""
    from clipcache.extract.transforms import to_uint8_tensor

    images = [to_uint8_tensor(_shape(i, size=40)) for i in range(3)]
    crop = Preprocess(32, 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    (big, small), errors = decode_batch([DecodedImage(im) for im in images], [""] * 3, [PP, crop], "cpu", _DECODE_ERRORS)
    assert errors == [""] * 3 and big.shape == (3, 3, 64, 64) and small.shape == (3, 3, 32, 32)
    for row, image in enumerate(images):
        assert torch.equal(big[row], tensor_preprocess(image, PP)) and torch.equal(small[row], tensor_preprocess(image, crop))
    failed = [torch.zeros((3, 64, 64), dtype=torch.uint8), torch.zeros((3, 32, 32), dtype=torch.uint8)]
    payloads = [DecodedImage(images[0]), failed, DecodedImage(images[2])]
    (big2, small2), _ = decode_batch(payloads, ["", "OSError: x", ""], [PP, crop], "cpu", _DECODE_ERRORS)
    assert torch.equal(big2[[0, 2]], big[[0, 2]]) and torch.equal(small2[[0, 2]], small[[0, 2]])
    assert int(big2[1].abs().sum()) == 0


def test_packed_payloads_carry_decoded_images_beside_jpeg_bytes_and_rows(tmp_path):
    from clipcache.extract.transforms import to_uint8_tensor

    image = to_uint8_tensor(_shape(1, size=17))
    data = _jpeg(_shape(2))
    row = eval_transform_uint8(PP)(_shape(5))
    back = PackedPayloads.pack([DecodedImage(image), _payload(data, tmp_path), [row]]).unpack()
    assert isinstance(back[0], DecodedImage) and torch.equal(back[0].data, image)
    assert back[1].data.numpy().tobytes() == data and back[2][0] is row


def test_unpack_cuts_runs_of_alike_payloads_into_views_of_the_buffer(tmp_path):
    """Runs of JPEGs, and of decoded images of one shape, are cut in one call each; every payload comes back equal,
    in order, as a view of the buffer."""
    from clipcache.extract.transforms import to_uint8_tensor

    datas = [_jpeg(_shape(i)) for i in range(3)]
    small = [to_uint8_tensor(_shape(i, size=17)) for i in range(3)]
    other = to_uint8_tensor(_shape(9, size=23))
    row = [eval_transform_uint8(PP)(_shape(5))]
    payloads = [_payload(datas[0], tmp_path), DecodedImage(small[0]), DecodedImage(small[1]), DecodedImage(other),
                row, _payload(datas[1], tmp_path), _payload(datas[2], tmp_path), DecodedImage(small[2])]
    packed = PackedPayloads.pack(payloads)
    back = packed.unpack()
    assert len(back) == len(payloads) and back[4] is row
    for want, got in zip(payloads, back, strict=True):
        if isinstance(want, EncodedImage):
            assert isinstance(got, EncodedImage) and got.path == want.path
            assert got.data.numpy().tobytes() == want.data.numpy().tobytes()
        elif isinstance(want, DecodedImage):
            assert isinstance(got, DecodedImage) and torch.equal(got.data, want.data)
        if not isinstance(want, list):
            assert np.shares_memory(got.data.numpy(), packed.buffer)


def test_large_packed_payloads_travel_in_shared_memory_and_unpack_the_same(tmp_path):
    from clipcache.extract.transforms import to_uint8_tensor

    image = to_uint8_tensor(_shape(1, size=17))
    data = _jpeg(_shape(2))
    payloads = [DecodedImage(image), _payload(data, tmp_path)]
    size = image.numel() + len(data)
    small, large = PackedPayloads.pack(payloads, size + 1), PackedPayloads.pack(payloads, size)
    assert isinstance(small.buffer, np.ndarray)
    assert isinstance(large.buffer, torch.Tensor) and large.buffer.is_shared() and large.buffer.numel() == size
    back = large.unpack()
    assert torch.equal(back[0].data, image) and back[1].data.numpy().tobytes() == data


@pytest.mark.parametrize("path", ["gpu", "hybrid"])
def test_parts_sent_in_shared_memory_store_what_parts_in_the_pickle_store(mixed_folder, tmp_path, monkeypatch, path,
                                                                         tensor_path_on_cpu):
    from clipcache.extract import loop

    options = dataclasses.replace(TENSOR if path == "gpu" else HYBRID, workers=2)
    monkeypatch.setattr(loop, "SHARED_BUFFER_BYTES", float("inf"))
    extract(tmp_path / "pickle.h5", _config(mixed_folder), options)
    monkeypatch.setattr(loop, "SHARED_BUFFER_BYTES", 0)
    extract(tmp_path / "shared.h5", _config(mixed_folder), options)
    assert snapshot(tmp_path / "shared.h5") == snapshot(tmp_path / "pickle.h5")


def test_resolve_decode_hybrid_runs_on_any_device_but_not_for_augmented_views_or_box():
    box = Preprocess(64, 64, (0.5,) * 3, (0.5,) * 3, "box")
    assert resolve_decode("hybrid", "cpu", [PP], augment=False) == "hybrid"
    assert resolve_decode("auto", "cpu", [PP], augment=False, image_pixels=16) == "cpu"  # auto takes it on CUDA only
    with pytest.raises(InvalidParameterError, match="decode 'hybrid' cannot run because augmented views") as err:
        resolve_decode("hybrid", "cpu", [PP], augment=True)
    assert err.value.param == "decode"
    with pytest.raises(InvalidParameterError, match="box interpolation"):
        resolve_decode("hybrid", "cpu", [box], augment=False)


def test_strict_makes_a_file_neither_path_reads_fatal(mixed_folder, tmp_path, tensor_path_on_cpu):
    for name in ("truncated.jpg", "garbage.jpg"):
        (mixed_folder / "test" / "a" / name).unlink()
    with pytest.raises(DatasetError, match="corrupt.jpg: cannot be read"):
        extract(tmp_path / "s.h5", _config(mixed_folder), RunOptions(progress=False, decode="gpu", strict=True))


def test_decode_cpu_equals_the_default_on_cpu(image_folder, tmp_path):
    extract(tmp_path / "default.h5", _config(image_folder), RunOptions(progress=False))
    extract(tmp_path / "cpu.h5", _config(image_folder), QUIET)
    assert snapshot(tmp_path / "default.h5") == snapshot(tmp_path / "cpu.h5")
    with FeatureStore(tmp_path / "default.h5") as store:
        assert {store.feature_sets[n].provenance[schema.DECODE] for n in store.feature_sets} == {"cpu"}


# --------------------------------------------------------------------------- choosing the path


def test_resolve_decode_on_cpu():
    assert resolve_decode("auto", "cpu", [PP], augment=False) == "cpu"
    assert resolve_decode("cpu", "cpu", [PP], augment=False) == "cpu"
    with pytest.raises(InvalidParameterError, match="not a visible CUDA GPU") as err:
        resolve_decode("gpu", "cpu", [PP], augment=False)
    assert err.value.param == "decode" and "\n" not in str(err.value) and not str(err.value).endswith(".")
    with pytest.raises(InvalidParameterError, match="'nvjpeg' is not one of auto, cpu, gpu, hybrid"):
        resolve_decode("nvjpeg", "cpu", [PP], augment=False)


def test_resolve_decode_where_the_tensor_path_cannot_run(tensor_path_on_cpu):
    box = Preprocess(64, 64, (0.5,) * 3, (0.5,) * 3, "box")
    assert resolve_decode("auto", "cpu", [PP], augment=False) == "gpu"
    assert resolve_decode("auto", "cpu", [PP, box], augment=False) == "cpu"
    assert resolve_decode("auto", "cpu", [PP], augment=True) == "cpu"
    with pytest.raises(InvalidParameterError, match="box interpolation"):
        resolve_decode("gpu", "cpu", [box], augment=False)
    with pytest.raises(InvalidParameterError, match="augmented views"):
        resolve_decode("gpu", "cpu", [PP], augment=True)


def test_auto_takes_hybrid_for_images_no_larger_than_the_model_input(tensor_path_on_cpu):
    """PP is 64 px: images of at most 64 x 64 pixels are enlarged, and auto decodes them on the hybrid path."""
    large = Preprocess(96, 96, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert resolve_decode("auto", "cpu", [PP], augment=False, image_pixels=64 * 64) == "hybrid"
    assert resolve_decode("auto", "cpu", [PP], augment=False, image_pixels=64 * 64 + 1) == "gpu"
    assert resolve_decode("auto", "cpu", [PP, large], augment=False, image_pixels=90 * 90) == "hybrid"  # the largest
    assert resolve_decode("auto", "cpu", [PP], augment=False, image_pixels=None) == "gpu"  # sizes unknown
    assert resolve_decode("gpu", "cpu", [PP], augment=False, image_pixels=16) == "gpu"  # an explicit path stays
    assert resolve_decode("auto", "cpu", [PP], augment=True, image_pixels=16) == "cpu"


@pytest.mark.parametrize(("aux", "path"), [(("efficientnet-lite0",), "hybrid"), ((), "gpu")])
def test_auto_extracts_thumbnails_on_the_hybrid_path(image_folder, tmp_path, tensor_path_on_cpu, aux, path):
    """Where auto decodes on the device (here the tensor path on the CPU), 40 x 40 JPEGs go to the hybrid path when the
    largest model input is EfficientNet-lite0's 224 px, and to the gpu path for the tiny ViT's 32 px alone; the store
    records which."""
    folder = _jpeg_folder(image_folder, tmp_path / "jpegs")
    extract(tmp_path / "s.h5", _config(folder, aux=aux), RunOptions(progress=False))
    with FeatureStore(tmp_path / "s.h5") as store:
        assert {schema.decode_of(info.provenance) for info in store.feature_sets.values()} == {path}


def test_typical_pixels_is_the_median_of_headers_spread_over_the_first_split(tmp_path):
    from clipcache.extract.loop import typical_pixels

    root = tmp_path / "sizes"
    sizes = [(10, 10), (20, 10), (30, 30), (40, 10), (500, 375)]  # pixels 100, 200, 900, 400, 187500
    for cls, (w, h) in zip("abcde", sizes, strict=True):
        (root / "test" / cls).mkdir(parents=True)
        Image.new("RGB", (w, h), (9, 9, 9)).save(root / "test" / cls / "x.jpg")
    (root / "test" / "e" / "y.jpg").write_bytes(b"not an image")  # skipped
    plans = build_plans(select_samples(open_dataset(root)), views=1, batch_size=4, shard=(0, 1))
    assert typical_pixels(plans) == 400.0  # median of 100, 200, 900, 400, 187500
    assert typical_pixels(plans, n=2) == 100.0  # the first and the last item, which does not read
    for shard in ((0, 2), (1, 2)):  # every rank samples the whole split
        assert typical_pixels(build_plans(select_samples(open_dataset(root)), views=1, batch_size=4, shard=shard)) == 400.0
    empty = build_plans(select_samples(open_dataset(root), max_per_class=0), views=1, batch_size=4, shard=(0, 1))
    assert typical_pixels(empty) is None


def test_decode_gpu_without_cuda_is_refused_before_any_work(image_folder, tmp_path):
    with pytest.raises(InvalidParameterError) as err:
        extract(tmp_path / "s.h5", _config(image_folder), RunOptions(progress=False, decode="gpu"))
    assert err.value.param == "decode"
    assert not (tmp_path / "s.h5").exists()


def test_cli_decode_gpu_without_cuda_is_a_one_line_error(image_folder, tmp_path):
    result = CliRunner().invoke(cli, ["extract", str(image_folder), str(tmp_path / "s.h5"), "--aux", "efficientnet-lite0",
                                      "--device", "cpu", "--decode", "gpu"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "decode 'gpu' cannot run" in lines[0] and "--decode" in lines[0]


# --------------------------------------------------------------------------- provenance and identity


def test_schema_reads_a_missing_decode_as_cpu_and_keeps_old_identities():
    prov = {"backbone": "timm", "model": "m", "preprocess": PP.to_dict()}
    assert schema.decode_of(prov) == "cpu"
    old = schema.identity(prov, 8, "float32", True)
    assert schema.identity({**prov, schema.DECODE: "cpu"}, 8, "float32", True) == old
    assert schema.identity({**prov, schema.DECODE: "gpu"}, 8, "float32", True) == {**old, schema.DECODE: "gpu"}


@pytest.mark.parametrize(("first", "then"), [("cpu", "gpu"), ("gpu", "cpu"), ("hybrid", "cpu"), ("gpu", "hybrid")])
def test_resume_on_the_other_decode_path_is_refused(image_folder, tmp_path, tensor_path_on_cpu, first, then):
    folder = _jpeg_folder(image_folder, tmp_path / "jpegs")
    path = tmp_path / "s.h5"
    interrupted_extract(path, _config(folder), RunOptions(progress=False, decode=first))
    with pytest.raises(StoreMismatchError, match=f"decoded on the {first} path, but this run decodes on the {then} path") as err:
        extract(path, _config(folder), RunOptions(progress=False, decode=then), resume=True)
    assert err.value.param == "decode"
    extract(path, _config(folder), RunOptions(progress=False, decode=first), resume=True)  # the recorded path resumes
    with FeatureStore(path) as store:
        assert store.is_complete("train") and store.is_complete("test")


def test_the_device_resize_is_recorded_on_the_tensor_paths_and_part_of_their_identity(tmp_path):
    prov = {"backbone": "timm", "model": "m", "preprocess": PP.to_dict()}
    earlier = {**prov, schema.DECODE: "hybrid"}  # a hybrid feature set of a release before the key
    like_pil = {**earlier, schema.DEVICE_RESIZE: "like-pil"}  # the release of 2026-11-26
    now = {**earlier, schema.DEVICE_RESIZE: schema.DEVICE_RESIZE_PIL}
    assert schema.device_resize_of(earlier) is None and schema.device_resize_of(now) == "pil"
    assert schema.device_resize_of({**prov, schema.DEVICE_RESIZE: "pil"}) is None  # the cpu path has none
    assert schema.identity(earlier, 8, "float32", True) == {**schema.identity(prov, 8, "float32", True), schema.DECODE: "hybrid"}
    assert schema.identity(now, 8, "float32", True) == {**schema.identity(earlier, 8, "float32", True), "device_resize": "pil"}
    for before in (earlier, like_pil):
        with FeatureStore(tmp_path / "s.h5", "w") as store:
            store.add_feature_set("f", 8, provenance=before)
            with pytest.raises(StoreMismatchError, match="device_resize"):
                store.add_feature_set("f", 8, provenance=now)


@pytest.mark.parametrize("recorded", [None, "like-pil"], ids=["no-key", "like-pil"])
@pytest.mark.parametrize("path", ["hybrid", "gpu"])
def test_resuming_an_earlier_release_s_tensor_path_features_is_refused(image_folder, tmp_path, tensor_path_on_cpu, path, recorded):
    """A store whose hybrid (or gpu) feature sets record another device resize, or none (an earlier release's one-pass
    resize), is not resumed into; a new store records ``pil``, and a cpu-path one records nothing."""
    folder = _jpeg_folder(image_folder, tmp_path / "jpegs")
    old = tmp_path / "old.h5"
    interrupted_extract(old, _config(folder), RunOptions(progress=False, decode="hybrid"))
    with h5py.File(old, "r+") as h5:  # what an earlier release wrote
        for name in h5["feature_sets"]:
            attrs = h5["feature_sets"][name].attrs
            prov = json.loads(attrs["provenance"])
            assert prov.pop(schema.DEVICE_RESIZE) == "pil"
            attrs["provenance"] = json.dumps({**prov, schema.DECODE: path, **({schema.DEVICE_RESIZE: recorded} if recorded else {})})
    with pytest.raises(StoreMismatchError) as err:
        extract(old, _config(folder), RunOptions(progress=False, decode=path), resume=True)
    by = "with the device resize 'like-pil'" if recorded else "by a release before 2026-11-26"
    assert str(err.value) == (
        f"{old}: feature set 'clip' was made on the {path} path {by}, which differs from this release's ('pil', PIL's "
        "byte for byte) by a grey level or more; the two are never mixed under one name, so extract into a new store"
    )
    extract(tmp_path / "cpu.h5", _config(folder), RunOptions(progress=False, decode="cpu"))
    with FeatureStore(tmp_path / "cpu.h5") as store:
        assert all(schema.DEVICE_RESIZE not in info.provenance for info in store.feature_sets.values())


def test_feature_sets_of_two_decode_paths_do_not_mix_in_a_store(tmp_path):
    prov = {"backbone": "timm", "model": "m", "preprocess": PP.to_dict()}
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.add_feature_set("f", 8, provenance=prov)  # no key: an older store's cpu features
        with pytest.raises(StoreMismatchError, match="decode"):
            store.add_feature_set("f", 8, provenance={**prov, schema.DECODE: "gpu"})
        with pytest.raises(StoreMismatchError, match="compiled"):
            store.add_feature_set("f", 8, provenance={**prov, schema.COMPILED: True})
        store.add_feature_set("f", 8, provenance={**prov, schema.DECODE: "cpu", schema.COMPILED: False})


# --------------------------------------------------------------------------- compile


def test_compile_pads_partial_batches_to_one_static_shape(image_folder, tmp_path, monkeypatch):
    shapes = []

    def fake_compile(fn, **kw):  # the eager function, recording the shapes the compiled graph would see
        assert kw == {"dynamic": False}

        def run(batch):
            shapes.append(tuple(batch.shape))
            return fn(batch)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    config = _config(image_folder, batch_size=5, splits=("train",))  # 12 images: batches of 5, 5, 2
    extract(tmp_path / "eager.h5", config, QUIET)
    extract(tmp_path / "compiled.h5", config, RunOptions(progress=False, decode="cpu", compile=True))
    assert len(shapes) == 6 and {s[0] for s in shapes} == {5}  # 3 batches x 2 backbones, the last one padded
    backbone = build_timm("efficientnet-lite0", image_size=64)
    _compile_image_tower(backbone)
    once = backbone.encode_image
    _compile_image_tower(backbone)
    assert backbone.encode_image is once  # compiling twice does not wrap the compiled tower again
    with FeatureStore(tmp_path / "eager.h5") as a, FeatureStore(tmp_path / "compiled.h5") as b:
        for name in a.feature_sets:
            np.testing.assert_allclose(a.features("train", name), b.features("train", name), atol=1e-5)


def _eager_compile(monkeypatch):
    """``torch.compile`` as the identity: the compiled path's bookkeeping without a real compile."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)


def test_compiled_is_recorded_in_the_provenance_and_the_identity(image_folder, tmp_path, monkeypatch):
    _eager_compile(monkeypatch)
    config = _config(image_folder, splits=("test",))
    extract(tmp_path / "eager.h5", config, QUIET)
    extract(tmp_path / "compiled.h5", config, RunOptions(progress=False, decode="cpu", compile=True))
    with FeatureStore(tmp_path / "eager.h5") as a, FeatureStore(tmp_path / "compiled.h5") as b:
        for name in a.feature_sets:
            assert a.feature_sets[name].provenance[schema.COMPILED] is False
            assert b.feature_sets[name].provenance[schema.COMPILED] is True
            assert b.feature_sets[name].identity() == {**a.feature_sets[name].identity(), schema.COMPILED: True}
    prov = {"backbone": "timm", "model": "m", "preprocess": PP.to_dict()}
    old = schema.identity(prov, 8, "float32", True)  # a provenance without the key: eager, and its identity unchanged
    assert schema.identity({**prov, schema.COMPILED: False}, 8, "float32", True) == old
    assert not schema.compiled_of(prov)


@pytest.mark.parametrize(("first", "then", "words"), [(False, True, "eager image tower, but this run's is compiled"),
                                                      (True, False, "compiled image tower, but this run's is eager")])
def test_resume_with_the_other_compile_is_refused(image_folder, tmp_path, monkeypatch, first, then, words):
    _eager_compile(monkeypatch)
    config = _config(image_folder, splits=("train",))
    interrupted_extract(tmp_path / "s.h5", config, RunOptions(progress=False, decode="cpu", compile=first))
    before = snapshot(tmp_path / "s.h5")
    with pytest.raises(StoreMismatchError, match=words) as err:
        extract(tmp_path / "s.h5", config, RunOptions(progress=False, decode="cpu", compile=then), resume=True)
    assert err.value.param == "compile" and "\n" not in str(err.value)
    assert snapshot(tmp_path / "s.h5") == before
    extract(tmp_path / "s.h5", config, RunOptions(progress=False, decode="cpu", compile=first), resume=True)  # the same: goes on


def test_cli_names_the_compile_flag_when_a_resume_differs(image_folder, tmp_path, monkeypatch):
    _eager_compile(monkeypatch)
    store = tmp_path / "s.h5"
    args = ["extract", str(image_folder), str(store), "--aux", "efficientnet-lite0", "--image-size", "64", "--device", "cpu",
            "--split", "test", "--batch-size", "2"]
    interrupt_append(monkeypatch, at=2)
    assert CliRunner().invoke(cli, args).exit_code == 130  # interrupted after one batch
    monkeypatch.undo()
    _eager_compile(monkeypatch)
    result = CliRunner().invoke(cli, [*args, "--resume", "--compile"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "compile=False" in lines[0] and lines[0].endswith("(--compile)")


def test_cli_extracts_on_the_hybrid_path_and_info_names_it(image_folder, tmp_path):
    path = tmp_path / "s.h5"
    result = CliRunner().invoke(cli, ["extract", str(image_folder), str(path), "--aux", "efficientnet-lite0",
                                      "--image-size", "64", "--device", "cpu", "--decode", "hybrid", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = CliRunner().invoke(cli, ["info", str(path)]).output
    assert "decoded on the hybrid path; eager image tower" in out
    extract(tmp_path / "cpu.h5", _config(image_folder, model=None), QUIET)
    with FeatureStore(path) as a, FeatureStore(tmp_path / "cpu.h5") as b:
        assert a.n_rows("train") == b.n_rows("train") > 0 and list(a.ids("test")) == list(b.ids("test"))


def test_info_shows_the_decode_path_and_the_tower(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore(path, "w") as store:
        store.add_feature_set("a", 4, provenance={"model": "m", schema.DECODE: "gpu", schema.COMPILED: True})
        store.add_feature_set("b", 4, provenance={"model": "m", schema.DECODE: "cpu", schema.COMPILED: False})
        store.add_feature_set("old", 4, provenance={"model": "o"})
    out = CliRunner().invoke(cli, ["info", str(path)]).output.splitlines()
    assert out[out.index("  a: dim 4, float32, L2-normalised; model=m") + 2] == "    decoded on the gpu path; compiled image tower"
    assert out[out.index("  b: dim 4, float32, L2-normalised; model=m") + 2] == "    decoded on the cpu path; eager image tower"
    assert not out[out.index("  old: dim 4, float32, L2-normalised; model=o") + 2].startswith("    decoded")


# --------------------------------------------------------------------------- the shared CIFAR-10 JPEGs

CIFAR_PER_CLASS = 30


@pytest.fixture
def cifar_jpegs(shared_data, tmp_path):
    """The first CIFAR_PER_CLASS test JPEGs of each CIFAR-10 class, from the shared tarball."""
    with tarfile.open(shared_data / "cifar10-jpg.tar.gz") as tar:
        members = [m for m in tar if m.name.startswith("cifar10-jpg/test/") and m.name.endswith(".jpg")
                   and int(m.name[-8:-4]) < CIFAR_PER_CLASS]
        tar.extractall(tmp_path, members=members, filter="data")
    assert len(members) == 10 * CIFAR_PER_CLASS
    return tmp_path / "cifar10-jpg"


@pytest.mark.data
@NO_TV_DEPRECATION
@pytest.mark.parametrize(
    "pp",
    [
        Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bicubic"),  # open_clip ViT
        Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3, "bicubic"),  # timm crop 0.875
        Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bilinear", "longest", 0),
    ],
    ids=["clip", "timm", "longest-bilinear"],
)
def test_tensor_path_pixels_equal_pil_s_on_cifar(cifar_jpegs, pp):
    """torchvision's CPU decoder (libjpeg-turbo, as PIL's) and the device resize (PIL's): the cpu path's bytes."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for path in sorted(cifar_jpegs.rglob("*.jpg")):
        pil = eval_transform_uint8(pp)(load_image(path))
        tensor = tensor_preprocess(decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8),
                                               mode=ImageReadMode.RGB), pp)
        assert torch.equal(tensor, pil), path


@pytest.mark.data
@pytest.mark.parametrize("pp", [Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")], ids=["clip"])
def test_hybrid_pixels_equal_pil_s_on_cifar(cifar_jpegs, pp):
    """The hybrid path's pixels: PIL's decode, the device resize (PIL's)."""
    from clipcache.extract.transforms import to_uint8_tensor

    for path in sorted(cifar_jpegs.rglob("*.jpg")):
        image = load_image(path)
        assert torch.equal(tensor_preprocess(to_uint8_tensor(image), pp), eval_transform_uint8(pp)(image)), path


@pytest.mark.data
@pytest.mark.parametrize("path", ["tensor", "hybrid"])
def test_tensor_path_features_on_cifar(cifar_jpegs, tmp_path, tensor_path_on_cpu, path):
    """EfficientNet-lite0's features of both paths on the CPU are the cpu path's, byte for byte."""
    config = ExtractConfig(source=str(cifar_jpegs), aux=("efficientnet-lite0",), max_per_class=10, batch_size=50)
    extract(tmp_path / "cpu.h5", config, QUIET)
    extract(tmp_path / "tensor.h5", config, TENSOR if path == "tensor" else HYBRID)
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "tensor.h5") as b:
        assert list(a.ids("test")) == list(b.ids("test")) and a.n_rows("test") == 100
        assert a.features("test", "efficientnet-lite0").tobytes() == b.features("test", "efficientnet-lite0").tobytes()


def test_auto_resumes_and_adds_on_the_recorded_path(image_folder, tmp_path, tensor_path_on_cpu):
    """Where auto would take the tensor path, a store recorded on the CPU path resumes (and takes splits) on it."""
    folder = _jpeg_folder(image_folder, tmp_path / "jpegs")
    whole, path = tmp_path / "whole.h5", tmp_path / "s.h5"
    extract(whole, _config(folder), RunOptions(progress=False, decode="cpu"))
    interrupted_extract(path, _config(folder), RunOptions(progress=False, decode="cpu"))
    assert decode_module.resolve_decode("auto", "cpu", [], augment=False) == "gpu"  # what a fresh run would take
    extract(path, _config(folder), RunOptions(progress=False), resume=True)
    assert snapshot(path) == snapshot(whole)
    with FeatureStore(path) as store:
        assert {schema.decode_of(info.provenance) for info in store.feature_sets.values()} == {"cpu"}

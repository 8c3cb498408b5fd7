"""Decoding with nvJPEG on a CUDA GPU (``RunOptions.decode="gpu"``); skipped without CUDA.

The bounds are set from the first run on a GPU (one NVIDIA H200, torch 2.11,
torchvision 0.26; see docs/extraction.md, "How far apart the two paths are").
nvJPEG's chroma upsampling is not libjpeg-turbo's, so on CIFAR-10's 32 x 32
JPEGs, enlarged 7 times, its pixels differ from PIL's by up to 72 grey levels
(median 11 per image), and EfficientNet-lite0's features by a cosine as low as
0.851. Run with ``python -m pytest tests/extract/test_decode_gpu.py -s`` on a
CUDA machine (``-m data`` selects the CIFAR-10 ones).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipcache import FeatureStore
from clipcache.extract.decode import resolve_decode, tensor_preprocess
from clipcache.extract.images import load_image
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.transforms import Preprocess, eval_transform_uint8
from clipcache.feature_store import schema
from tests.extract import test_decode
from tests.extract.test_decode import CIFAR_PER_CLASS, NO_TV_DEPRECATION, UNREADABLE, _config

mixed_folder, cifar_jpegs = test_decode.mixed_folder, test_decode.cifar_jpegs  # the CPU tests' fixtures
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: nvJPEG + GPU resize against PIL on 300 CIFAR-10 JPEGs, measured on an H200: max 72, median per image 11.
NVJPEG_MAX_PIXEL_DIFFERENCE, NVJPEG_MEDIAN_PIXEL_DIFFERENCE = 80, 12
#: EfficientNet-lite0 features (fp32) of those images, nvJPEG against PIL, measured: cosine min 0.851, mean 0.976.
NVJPEG_MIN_COSINE, NVJPEG_MEAN_COSINE = 0.84, 0.97


def test_auto_decodes_on_the_gpu_and_the_gpu_path_records_it(mixed_folder, tmp_path):
    """auto: hybrid for these thumbnails (no larger than the largest model input, EfficientNet-lite0's 224 px), gpu
    where the sizes are unknown or larger."""
    pp = Preprocess(64, 64, (0.5,) * 3, (0.5,) * 3)
    assert resolve_decode("auto", "cuda", [pp], augment=False) == "gpu"
    assert resolve_decode("auto", "cuda", [pp], augment=False, image_pixels=500 * 375) == "gpu"
    extract(tmp_path / "auto.h5", _config(mixed_folder), RunOptions(progress=False, device="cuda"))
    extract(tmp_path / "gpu.h5", _config(mixed_folder), RunOptions(progress=False, device="cuda", decode="gpu"))
    extract(tmp_path / "cpu.h5", _config(mixed_folder), RunOptions(progress=False, device="cuda", decode="cpu"))
    with FeatureStore(tmp_path / "auto.h5") as a:
        assert {a.feature_sets[n].provenance[schema.DECODE] for n in a.feature_sets} == {"hybrid"}
    with FeatureStore(tmp_path / "gpu.h5") as g, FeatureStore(tmp_path / "cpu.h5") as c:
        assert {g.feature_sets[n].provenance[schema.DECODE] for n in g.feature_sets} == {"gpu"}
        # nvJPEG decodes the JPEG whose scan is corrupt (measured on an H200), where PIL refuses it
        assert sorted(g.ids("test")) == sorted([*c.ids("test"), "test/a/corrupt.jpg"])
        assert {sid.split("/")[-1] for sid, _, _ in g.skipped("test")} == UNREADABLE - {"corrupt.jpg"}
        gpu_rows = {sid: row for row, sid in enumerate(g.ids("test"))}
        for name in g.feature_sets:
            gf, cf = g.features("test", name), c.features("test", name)
            for row, sid in enumerate(c.ids("test")):
                if sid.split("/")[-1] in ("gray.jpg", "cmyk.jpg", "image.png"):  # decoded by the CPU path in both runs
                    assert float(gf[gpu_rows[sid]] @ cf[row]) > 0.9999, (name, sid)


@pytest.mark.data
@NO_TV_DEPRECATION
def test_nvjpeg_pixels_against_pil_on_cifar(cifar_jpegs):
    from torchvision.io import ImageReadMode, decode_jpeg

    pp = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    paths = sorted(cifar_jpegs.rglob("*.jpg"))
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device="cuda")
    diffs = []
    for path, image in zip(paths, decoded, strict=True):
        pil = eval_transform_uint8(pp)(load_image(path))
        diffs.append(int((tensor_preprocess(image, pp).cpu().int() - pil.int()).abs().max()))
    print(f"nvJPEG + GPU resize against PIL, {len(paths)} CIFAR-10 JPEGs: max pixel difference {max(diffs)}, "
          f"median per image {int(np.median(diffs))}")
    assert max(diffs) <= NVJPEG_MAX_PIXEL_DIFFERENCE and np.median(diffs) <= NVJPEG_MEDIAN_PIXEL_DIFFERENCE


@pytest.mark.data
@NO_TV_DEPRECATION
def test_decoding_while_the_stream_still_writes_freed_blocks_is_exact(cifar_jpegs):
    """The images nvJPEG writes never share memory with work still queued on the caller's stream.

    Blocks of the decoded images' sizes are handed back to the caller's stream's
    pool while kernels queued behind long matmuls still write 7s into them. Had
    nvJPEG's outputs been allocated from that pool (as torchvision does, on the
    current stream), the queued fills would overwrite the decoded pixels.
    """
    from clipcache.extract.decode import _decode_many

    device = torch.device("cuda")
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted(cifar_jpegs.rglob("*.jpg"))[:64]]
    reference = [image.cpu() for image in _decode_many(datas, device)]
    torch.cuda.synchronize()
    for _ in range(3):
        decoys = [torch.empty(r.shape, dtype=torch.uint8, device=device) for r in reference]
        busy = torch.randn(4096, 4096, device=device)
        for _ in range(10):
            busy = busy @ busy
        for decoy in decoys:
            decoy.fill_(7)
        del decoys
        decoded = _decode_many(datas, device)
        torch.cuda.synchronize()
        assert all(torch.equal(got.cpu(), want) for got, want in zip(decoded, reference, strict=True))


@pytest.mark.data
def test_nvjpeg_features_on_cifar(cifar_jpegs, tmp_path):
    config = ExtractConfig(source=str(cifar_jpegs), aux=("efficientnet-lite0",), batch_size=100)
    extract(tmp_path / "cpu.h5", config, RunOptions(progress=False, device="cuda", decode="cpu", amp="fp32"))
    extract(tmp_path / "gpu.h5", config, RunOptions(progress=False, device="cuda", decode="gpu", amp="fp32"))
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "gpu.h5") as b:
        assert a.n_rows("test") == 10 * CIFAR_PER_CLASS
        cosine = (a.features("test", "efficientnet-lite0") * b.features("test", "efficientnet-lite0")).sum(1)
    print(f"efficientnet-lite0 fp32, nvJPEG against PIL decode: cosine min {cosine.min():.6f} mean {cosine.mean():.6f}")
    # several batches: a decode that overwrote the batch still being encoded gave a minimum of 0.39, and NaN
    assert cosine.min() > NVJPEG_MIN_COSINE and cosine.mean() > NVJPEG_MEAN_COSINE


@pytest.mark.data
def test_hybrid_on_the_gpu_stays_with_the_cpu_path_on_cifar(cifar_jpegs, tmp_path):
    """PIL's decode and the GPU's resize: PIL's pixels, byte for byte, and features within 1e-4 of the cpu path's
    (nvJPEG's chroma, on these 32 x 32 JPEGs, gives cosines down to 0.85)."""
    from clipcache.extract.transforms import to_uint8_tensor

    pp = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    largest = 0
    for path in sorted(cifar_jpegs.rglob("*.jpg")):
        image = load_image(path)
        gpu = tensor_preprocess(to_uint8_tensor(image).cuda(), pp).cpu()
        largest = max(largest, int((gpu.int() - eval_transform_uint8(pp)(image).int()).abs().max()))
    config = ExtractConfig(source=str(cifar_jpegs), aux=("efficientnet-lite0",), batch_size=100)
    extract(tmp_path / "cpu.h5", config, RunOptions(progress=False, device="cuda", decode="cpu", amp="fp32"))
    extract(tmp_path / "hybrid.h5", config, RunOptions(progress=False, device="cuda", decode="hybrid", amp="fp32", workers=2))
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "hybrid.h5") as b:
        assert list(a.ids("test")) == list(b.ids("test")) and a.n_rows("test") == 10 * CIFAR_PER_CLASS
        assert {b.feature_sets[n].provenance[schema.DECODE] for n in b.feature_sets} == {"hybrid"}
        cosine = (a.features("test", "efficientnet-lite0") * b.features("test", "efficientnet-lite0")).sum(1)
    print(f"hybrid on the GPU against PIL: largest pixel difference {largest}; efficientnet-lite0 fp32 cosine min "
          f"{cosine.min():.6f} mean {cosine.mean():.6f}")
    # measured on an H200 with torchvision's float resize (no rounding between the passes): 12 levels, cosine min
    # 0.988; with the float32 passes of 2026-11-26, 2 levels and 1.000000
    assert largest == 0 and cosine.min() > 0.9999


@pytest.mark.parametrize(("method", "tf32"), [("triton", False), ("matmul", False), ("matmul", True)])
@pytest.mark.parametrize(("size", "target", "window"), [((32, 32), (224, 224), None), ((375, 500), (224, 298), (0, 37, 224, 224)),
                                                        ((1000, 100), (100, 50), None)])
def test_pil_resize_on_cuda_equals_the_cpu_s_bytes(size, target, window, method, tf32):
    """The Triton kernel (int32 sums) and the float64 products are exact on the GPU as on the CPU, whatever cuBLAS
    sums first and whether TF32 is allowed (it only ever touches float32); the kernel compiles and runs."""
    from clipcache.extract import _triton, resample

    images = torch.from_numpy(np.random.default_rng(size[1]).integers(0, 256, (64, 3, *size), dtype=np.uint8))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        gpu = resample.pil_resize(images.cuda(), target, "bicubic", window, method=method).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert not _triton.failed, _triton.failed
    assert torch.equal(gpu, resample.pil_resize(images, target, "bicubic", window))


def test_normalize_batch_s_kernel_on_cuda_gives_the_torch_operations_bytes():
    """The lookup kernel returns the CUDA torch operations' float32 bytes (which divide by 255 as a product by its
    reciprocal: not the CPU's bytes, so the table is made on the device)."""
    from clipcache.extract import _triton
    from clipcache.extract.transforms import Preprocess, normalize_batch

    pp = Preprocess(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "bicubic")
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 3, 224, 224), dtype=np.uint8)).cuda()
    got = normalize_batch(batch, pp, method="triton")
    assert not _triton.failed, _triton.failed
    assert torch.equal(got.view(torch.int32), normalize_batch(batch, pp, method="torch").view(torch.int32))


def test_compile_on_cuda_matches_eager(mixed_folder, tmp_path):
    config = _config(mixed_folder, aux=(), batch_size=4)
    extract(tmp_path / "eager.h5", config, RunOptions(progress=False, device="cuda", amp="fp32"))
    extract(tmp_path / "compiled.h5", config, RunOptions(progress=False, device="cuda", amp="fp32", compile=True))
    with FeatureStore(tmp_path / "eager.h5") as a, FeatureStore(tmp_path / "compiled.h5") as b:
        cosine = (a.features("test", "clip") * b.features("test", "clip")).sum(1)
    print(f"compiled against eager, fp32: cosine min {cosine.min():.7f}")
    assert cosine.min() > 0.99  # measured on an H200: 0.9946 for one image of this random-weight tiny ViT, 1.0 for the rest


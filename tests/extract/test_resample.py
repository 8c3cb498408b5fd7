"""PIL's 8-bit resize on tensors (clipcache.extract.resample): equal to the installed Pillow's, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipcache.extract import resample
from clipcache.extract.resample import pil_resize, pil_weights, vertical_first

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}

# (input height, width) -> (output height, width): enlarged (CIFAR's thumbnails), shrunk (photos, both
# orientations, a factor of 7 with long filters), one side only, to one pixel, from one pixel, the same size, and
# shrunk much more in height than in width, which Pillow 13 resizes height first.
SIZES = [
    ((32, 32), (224, 224)),
    ((375, 500), (224, 298)),
    ((500, 375), (298, 224)),
    ((1500, 2000), (224, 298)),
    ((37, 53), (224, 321)),
    ((300, 20), (300, 9)),
    ((20, 300), (9, 300)),
    ((5, 3), (1, 1)),
    ((1, 1), (7, 9)),
    ((40, 40), (40, 40)),
    ((1000, 100), (100, 50)),
    ((1000, 30), (100, 7)),
    ((100, 1000), (50, 100)),
]


def _noise(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform noise: every pixel next to a sharp edge, so each pass overshoots and the clipping and rounding matter."""
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _pil(pixels: np.ndarray, target: tuple[int, int], interpolation: str) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(p).resize(target[::-1], FILTERS[interpolation])) for p in pixels])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("size", "target"), SIZES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in SIZES])
def test_pil_resize_equals_pil_byte_for_byte_on_noise(interpolation, size, target):
    pixels = _noise(3, size, seed=size[0] * 7 + target[1])
    got = pil_resize(torch.from_numpy(pixels).permute(0, 3, 1, 2), target, interpolation)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, 3, *target)
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), _pil(pixels, target, interpolation))


@pytest.mark.parametrize(("size", "target", "window"), [
    ((375, 500), (224, 298), (0, 37, 224, 224)),  # a centre crop of a landscape photo
    ((500, 375), (298, 224), (37, 0, 224, 224)),  # of a portrait one
    ((1000, 100), (100, 50), (10, 5, 3, 40)),  # height first
    ((300, 20), (300, 9), (100, 2, 50, 5)),  # one pass: the other side's lines are cut, not resized
    ((40, 40), (40, 40), (1, 2, 3, 4)),  # none
])
def test_a_window_is_the_same_part_of_the_whole_resize(size, target, window):
    pixels = _noise(2, size, seed=size[1])
    top, left, height, width = window
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    whole = pil_resize(images, target, "bicubic")
    part = pil_resize(images, target, "bicubic", window)
    assert torch.equal(part, whole[..., top : top + height, left : left + width])
    np.testing.assert_array_equal(part.permute(0, 2, 3, 1).numpy(), _pil(pixels, target, "bicubic")[:, top : top + height, left : left + width])


def test_a_large_batch_is_resized_in_chunks_with_the_same_bytes(monkeypatch):
    images = torch.from_numpy(_noise(7, (30, 40), seed=3)).permute(0, 3, 1, 2)
    whole = pil_resize(images, (60, 80), "bicubic")
    monkeypatch.setattr(resample, "CHUNK_BYTES", 1)  # one image a chunk
    assert torch.equal(pil_resize(images, (60, 80), "bicubic"), whole)
    assert torch.equal(pil_resize(images[0], (60, 80), "bicubic"), whole[0])  # (C, H, W) in, (C, H, W) out


def test_the_pass_order_decides_the_bytes_of_a_tall_shrink(monkeypatch):
    """Guards the test above against a mirror that never reaches the order: on this input the two orders differ."""
    pixels = _noise(2, (1000, 100), seed=5)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    assert vertical_first((1000, 100), (100, 50)) is (int(Image.__version__.split(".")[0]) >= 13)
    assert not vertical_first((100, 1000), (50, 100)) and not vertical_first((32, 32), (224, 224))
    ours = pil_resize(images, (100, 50), "bicubic")
    monkeypatch.setattr(resample, "vertical_first", lambda *_: not vertical_first((1000, 100), (100, 50)))
    assert not torch.equal(pil_resize(images, (100, 50), "bicubic"), ours)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("n_in", "n_out"), [(32, 224), (500, 298), (375, 224), (7, 3), (2000, 224)])
def test_pil_weights_are_integers_summing_to_about_two_to_the_22(interpolation, n_in, n_out):
    """Each output's weights are Pillow's rounded fixed-point integers: they sum to 2**22 within the rounding of
    each (half a unit each), and each lies within its filter's reach of the output's centre."""
    w = pil_weights(n_in, n_out, interpolation)
    assert w.shape == (n_out, n_in) and np.array_equal(w, np.round(w))
    nonzero = np.count_nonzero(w, axis=1)
    assert np.all(np.abs(w.sum(1) - 2**22) <= nonzero / 2 + 1)
    scale = max(n_in / n_out, 1.0)
    reach = {"bicubic": 2.0, "bilinear": 1.0}[interpolation] * scale
    centres = (np.arange(n_out) + 0.5) * n_in / n_out
    cols = np.arange(n_in) + 0.5
    assert np.all((w == 0) | (np.abs(cols[None, :] - centres[:, None]) < reach + 1))


def test_bad_arguments_name_what_is_wrong():
    images = torch.zeros((1, 3, 10, 10), dtype=torch.uint8)
    with pytest.raises(ValueError, match="window"):
        pil_resize(images, (20, 20), "bicubic", (15, 0, 10, 10))
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        pil_resize(images, (20, 20), "lanczos")


def _precompute_coeffs(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's precompute_coeffs and normalize_coeffs_8bpc, transcribed line by line (scalar doubles)."""
    import math

    def bicubic(x):
        a = -0.5
        x = -x if x < 0.0 else x
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    def bilinear(x):
        x = -x if x < 0.0 else x
        return 1.0 - x if x < 1.0 else 0.0

    filt, support = {"bicubic": (bicubic, 2.0), "bilinear": (bilinear, 1.0)}[interpolation]
    scale = filterscale = float(in_size) / out_size
    filterscale = max(filterscale, 1.0)
    support = support * filterscale
    out = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [filt((x + xmin - center + 0.5) * (1.0 / filterscale)) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        k = [w / ww if ww != 0.0 else w for w in k]
        for x, w in enumerate(k):
            out[xx, xmin + x] = math.trunc(-0.5 + w * (1 << 22)) if w < 0 else math.trunc(0.5 + w * (1 << 22))
    return out


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pil_weights_equal_pillow_s_c_code_transcribed(interpolation):
    rng = np.random.default_rng(11)
    pairs = [(32, 224), (500, 298), (375, 224), (2000, 224), (1, 5), (5, 1)]
    pairs += [tuple(int(v) for v in rng.integers(1, 700, 2)) for _ in range(150)]
    for n_in, n_out in pairs:
        np.testing.assert_array_equal(pil_weights(n_in, n_out, interpolation), _precompute_coeffs(n_in, n_out, interpolation),
                                      err_msg=f"{n_in} -> {n_out}")


def test_the_cached_weights_cannot_be_written():
    with pytest.raises(ValueError, match="read-only"):
        pil_weights(32, 224, "bicubic")[0, 0] = 1.0


# Small sizes: Triton's interpreter runs each program of the kernel in numpy.
KERNEL_CASES = [
    ((8, 6), (37, 29), None),  # enlarged
    ((40, 52), (17, 23), None),  # shrunk
    ((90, 12), (9, 10), None),  # shrunk much more in height: height first with Pillow 13
    ((30, 20), (30, 9), (3, 2, 20, 5)),  # one pass, a window
    ((33, 47), (21, 60), (4, 7, 10, 40)),  # a window of both passes
]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("size", "target", "window"), KERNEL_CASES, ids=[f"{a}-{b}" for a, b, _ in KERNEL_CASES])
def test_the_triton_kernel_gives_pillow_s_bytes(interpolation, size, target, window):
    """The GPU's Triton kernel (Pillow's int32 sums, run here by Triton's interpreter) equals Pillow and the
    float64 products; it reads the cut spans of the planes as strided views."""
    pytest.importorskip("triton")
    pixels = _noise(2, size, seed=size[0] + target[1])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    got = pil_resize(images, target, interpolation, window, method="interpret")
    assert torch.equal(got, pil_resize(images, target, interpolation, window, method="matmul"))
    top, left, height, width = window or (0, 0, *target)
    want = _pil(pixels, target, interpolation)[:, top : top + height, left : left + width]
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), want)


@pytest.mark.parametrize("method", ["matmul", "interpret"])
def test_an_empty_batch_resizes_to_an_empty_batch(method):
    if method == "interpret":
        pytest.importorskip("triton")
    got = pil_resize(torch.zeros((0, 3, 6, 5), dtype=torch.uint8), (4, 9), "bicubic", (1, 2, 3, 4), method=method)
    assert got.shape == (0, 3, 3, 4) and got.dtype == torch.uint8


def test_the_kernel_splits_more_planes_than_a_grid_takes(monkeypatch):
    pytest.importorskip("triton")
    from clipcache.extract import _triton

    images = torch.from_numpy(_noise(3, (6, 5), seed=3)).permute(0, 3, 1, 2).contiguous()
    want = pil_resize(images, (4, 9), "bicubic", method="matmul")
    monkeypatch.setattr(_triton, "MAX_PLANES", 2)  # 9 planes: five launches a pass
    assert torch.equal(pil_resize(images, (4, 9), "bicubic", method="interpret"), want)


def test_a_kernel_that_fails_falls_back_to_the_products_once_with_a_warning(monkeypatch, caplog):
    """On a CUDA device the kernel is the default; if it cannot run (no compiler), the process warns once and
    resizes with the float64 products from then on. Here CPU tensors stand in for a GPU's."""
    from clipcache.extract import _triton

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no ptxas\nsecond line")

    monkeypatch.setattr(_triton, "resample_pass", broken)
    monkeypatch.setattr(_triton, "failed", {})
    images = torch.from_numpy(_noise(1, (6, 5), seed=4)).permute(0, 3, 1, 2)
    want = pil_resize(images, (4, 9), "bicubic")
    with caplog.at_level("WARNING", logger="clipcache.extract._triton"):
        assert torch.equal(pil_resize(images, (4, 9), "bicubic", method="triton"), want)
        assert torch.equal(pil_resize(images, (4, 9), "bicubic", method="triton"), want)
    assert len(calls) == 1 and _triton.failed == {"pil_resize": "RuntimeError: no ptxas"}
    assert [r.getMessage() for r in caplog.records] == [
        "pil_resize: the Triton kernel failed (RuntimeError: no ptxas); using torch's operations instead"]
    with pytest.raises(RuntimeError, match="no ptxas"):  # the tests' interpreter never hides a failure
        pil_resize(images, (4, 9), "bicubic", method="interpret")


def test_the_kernels_compile_for_an_h100_without_one():
    """Triton compiles both kernels to an sm_90 binary here (its bundled ptxas), as the GPU path's first batch does
    there: a kernel that the interpreter runs but the compiler refuses fails here, not on a lent GPU."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from clipcache.extract import _triton

    pointers = {"src": "*u8", "dst": "*u8"}
    signatures = {
        "resample": ({**pointers, "xmin_ptr": "*i32", "k_ptr": "*i32", "ksize": "i32", "lines": "i32", "out_len": "i32",
                      **dict.fromkeys(["s_plane", "s_line", "s_along", "d_plane", "d_line", "d_along"], "i64"),
                      "BLOCK_L": "constexpr", "BLOCK_O": "constexpr", "LINES_LAST": "constexpr"},
                     {"BLOCK_L": _triton.BLOCK_LINES, "BLOCK_O": _triton.BLOCK_OUT}),
        "normalize": ({**pointers, "table_ptr": "*fp32", "pixels": "i32", "channels": "i32", "BLOCK": "constexpr"},
                      {"BLOCK": _triton.BLOCK_PIXELS}),
    }
    variants = [("resample", {"LINES_LAST": False}), ("resample", {"LINES_LAST": True}), ("normalize", {})]
    for name, more in variants:
        signature, constants = signatures[name]
        source = ASTSource(fn=getattr(_triton.kernels(), name), signature=signature, constexprs={**constants, **more})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"] and ".entry _" + name in compiled.asm["ptx"], (name, more)

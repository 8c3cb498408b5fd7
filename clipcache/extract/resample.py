"""PIL's 8-bit resize on tensors, bit for bit, on any device (the ``gpu`` and ``hybrid`` paths' resize).

Pillow resizes an 8-bit image in two separable passes (``src/libImaging/Resample.c``). For
each output pixel of a pass it takes a window of input pixels and integer weights: the
filter's double-precision weights, normalised to sum to one, times 2**22, rounded half
away from zero (``PRECISION_BITS`` = 22). The pass's value is ``2**21 + sum(pixel *
weight)`` in int32, shifted right by 22 bits and clipped to 0..255, so the second pass
reads the first's rounded uint8 pixels.

:func:`pil_resize` computes the same integers as matrix products in float64: a pixel
times a weight is below 2**31 and every partial sum of a pass below 2**53, so each
product and sum is exact whatever order the device sums in, and so is the scaling by
2**-22. The result equals Pillow's byte for byte (the tests compare them on noise and on
CIFAR-10's JPEGs), including the pass order, which Pillow 13 changed for images shrunk
much more in height than in width (:func:`vertical_first`).

On a CUDA device each pass is instead one Triton kernel that adds Pillow's int32 sums
themselves (:mod:`clipcache.extract._triton`, :data:`CUDA_METHOD`): one byte
read and written a pixel, where the products write eight and go over them again. The
bytes are the same.

Only the pixels of a window of the resized image are computed, so a centre crop costs
no work for the pixels it cuts away.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import __version__ as _PIL_VERSION

__all__ = ["CUDA_METHOD", "METHODS", "PIL_INTERPOLATIONS", "pil_resize", "pil_weights", "vertical_first"]

#: Pillow's fixed-point precision of its 8-bit resize (``PRECISION_BITS``).
PRECISION_BITS = 22

#: The bytes of float64 work that :func:`pil_resize` gives one chunk of images (it resizes a larger batch in chunks).
CHUNK_BYTES = 1 << 29


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's bicubic_filter, its operations in its order
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


#: Pillow's filters that :func:`pil_resize` applies: name -> (support, filter).
_FILTERS = {"bilinear": (1.0, _bilinear), "bicubic": (2.0, _bicubic)}
PIL_INTERPOLATIONS = tuple(_FILTERS)
"""The interpolations :func:`pil_resize` applies as Pillow does."""

# Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the width.
_PIL_13 = int(_PIL_VERSION.split(".")[0]) >= 13


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether the installed Pillow resizes ``in_hw`` to ``out_hw`` height first (``ImagingResampleInner``)."""
    shrink_h, shrink_w = in_hw[0] - out_hw[0], in_hw[1] - out_hw[1]
    return _PIL_13 and shrink_h > 0 and shrink_h > 2 * shrink_w


@functools.lru_cache(maxsize=256)
def _pil_coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's integer weights of one pass as ``(xmin, k)``: output ``i`` reads inputs ``xmin[i] + t`` with
    weight ``k[i, t]`` (float64 integers, zero past the window; ``k`` has ``ksize`` columns).

    Mirrors ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` operation by operation in
    double precision (the sum of a window's weights sequentially, as the C loop adds them).
    """
    support1, filt = _FILTERS[interpolation]
    scale = filterscale = float(in_size) / out_size
    if filterscale < 1.0:
        filterscale = 1.0
    support = support1 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates toward zero
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    inside = taps[None, :] < count[:, None]
    w = np.where(inside, filt((taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # sequential, as the C loop's ww
    w = np.divide(w, total, out=w.copy(), where=total != 0.0)
    scaled = w * (1 << PRECISION_BITS)
    k = np.where(inside, np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)), 0.0)
    xmin.flags.writeable = k.flags.writeable = False  # cached and shared
    return xmin, k


@functools.lru_cache(maxsize=256)
def pil_weights(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's integer weights of one pass, as a dense (out_size, in_size) float64 matrix.

    The matrix holds the integers (at most 2**23 in magnitude) themselves; zero outside
    each output's window (:func:`_pil_coefficients` places them).
    """
    xmin, k = _pil_coefficients(in_size, out_size, interpolation)
    dense = np.zeros((out_size, in_size + k.shape[1]), dtype=np.float64)
    np.put_along_axis(dense, xmin[:, None] + np.arange(k.shape[1])[None, :], k, axis=1)
    weights = dense[:, :in_size]
    weights.flags.writeable = False  # cached and shared: a caller's write would change every later resize
    return weights


def _span(in_size: int, out_size: int, interpolation: str, start: int, stop: int) -> tuple[int, int]:
    """The input pixels (``lo``, ``hi``) that outputs ``start:stop`` of a pass read with a non-zero weight."""
    used = np.flatnonzero(pil_weights(in_size, out_size, interpolation)[start:stop].any(axis=0))
    return (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)


def _to_device(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached host array on ``device``, copied from pinned memory without waiting on a GPU."""
    with torch.inference_mode(False):
        host = torch.from_numpy(np.array(array)).to(dtype)  # a copy: the cached arrays are read-only
        if device.type == "cuda":
            host = host.pin_memory()
        return host.to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def _pass_matrix(in_size: int, out_size: int, interpolation: str, start: int, stop: int, device: torch.device):
    """Rows ``start:stop`` of :func:`pil_weights` times 2**-22 (exact) on ``device``, cut to the input pixels
    they read, and those pixels' span (``lo``, ``hi``). Made once."""
    lo, hi = _span(in_size, out_size, interpolation, start, stop)
    rows = pil_weights(in_size, out_size, interpolation)[start:stop, lo:hi]
    return _to_device(rows / (1 << PRECISION_BITS), torch.float64, device), lo, hi


@functools.lru_cache(maxsize=64)
def _pass_taps(in_size: int, out_size: int, interpolation: str, start: int, stop: int, device: torch.device):
    """Outputs ``start:stop`` of a pass as the kernel takes them: each one's first input, counted from ``lo``
    (int32), and its weights (int32, (n, ksize)) on ``device``, with the span (``lo``, ``hi``). Made once."""
    lo, hi = _span(in_size, out_size, interpolation, start, stop)
    xmin, k = _pil_coefficients(in_size, out_size, interpolation)
    k = k[start:stop]
    taps = int(np.flatnonzero(k.any(axis=0))[-1]) + 1  # Pillow's last tap has no weight: the kernel skips it
    return (_to_device(xmin[start:stop] - lo, torch.int32, device), _to_device(k[:, :taps], torch.int32, device),
            lo, hi)


#: How :func:`pil_resize` computes on a CUDA device: ``"triton"``, Pillow's integer passes as one fused Triton
#: kernel each (:mod:`clipcache.extract._triton`), or ``"matmul"``, float64 matrix products. Both give Pillow's
#: bytes. If the kernel cannot run (no compiler, say), the process warns once and uses ``"matmul"`` instead.
CUDA_METHOD = "triton"
#: The methods :func:`pil_resize` takes: ``"interpret"`` is the Triton kernel in Triton's interpreter (tests).
METHODS = ("matmul", "triton", "interpret")


def pil_resize(
    images: torch.Tensor,
    size: tuple[int, int],
    interpolation: str,
    window: tuple[int, int, int, int] | None = None,
    method: str | None = None,
) -> torch.Tensor:
    """Resize uint8 images as Pillow's ``Image.resize`` does, bit for bit, on their device.

    Parameters
    ----------
    images : torch.Tensor, uint8, shape (..., C, H, W)
    size : (height, width)
        The resized image's size.
    interpolation : {"bilinear", "bicubic"}
    window : (top, left, height, width), optional
        The part of the resized image to compute (within it); the whole image by default.
    method : {"matmul", "triton", "interpret"}, optional
        How to compute it (:data:`METHODS`); by default :data:`CUDA_METHOD` on a CUDA device and ``"matmul"``
        elsewhere. The bytes are the same.

    Returns
    -------
    torch.Tensor, uint8, shape (..., C, window height, window width), same device
    """
    shape = images.shape
    in_hw = (int(shape[-2]), int(shape[-1]))
    top, left, height, width = window if window is not None else (0, 0, *size)
    if not (0 <= top and 0 <= left and top + height <= size[0] and left + width <= size[1] and height > 0 and width > 0):
        raise ValueError(f"window {window} is not inside the resized image of size {tuple(size)}")
    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {list(_FILTERS)}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {list(METHODS)}")
    x = images.reshape(-1, *shape[-2:])  # planes
    if in_hw == tuple(size) or x.shape[0] == 0:  # Pillow copies an image resized to its own size
        return x[..., top : top + height, left : left + width].reshape(*shape[:-2], height, width).clone()
    if method is None:
        method = CUDA_METHOD if images.is_cuda else "matmul"
    plan = []  # the passes in Pillow's order: (axis of the planes, in size, out size, first output, outputs)
    if size[0] != in_hw[0]:
        plan.append((1, in_hw[0], size[0], top, height))
    else:  # a pass Pillow skips copies the window's lines
        x = x[..., top : top + height, :]
    if size[1] != in_hw[1]:
        plan.insert(1 if vertical_first(in_hw, tuple(size)) else 0, (2, in_hw[1], size[1], left, width))
    else:
        x = x[..., left : left + width]
    if method == "matmul":  # on a CPU: no Triton import
        out = _resize_with_products(x, plan, interpolation)
    else:
        from clipcache.extract import _triton

        out = _triton.run("pil_resize", method, lambda interpret: _resize_with_kernel(x, plan, interpolation, interpret),
                          lambda: _resize_with_products(x, plan, interpolation))
    return out.reshape(*shape[:-2], height, width)


def _resize_with_products(x: torch.Tensor, plan, interpolation: str) -> torch.Tensor:
    """:func:`pil_resize`'s passes over planes ``x`` (P, H, W) as float64 matrix products, in chunks of planes."""
    out_hw = [x.shape[1], x.shape[2]]
    for axis, *_, n in plan:
        out_hw[axis - 1] = n
    per_plane = 8 * (x.shape[1] * x.shape[2] + 2 * max(x.shape[1:]) * max(out_hw) + out_hw[0] * out_hw[1])
    chunk = max(1, CHUNK_BYTES // per_plane)
    out = [_matmul_chunk(x[i : i + chunk], plan, interpolation) for i in range(0, x.shape[0], chunk)]
    return out[0] if len(out) == 1 else torch.cat(out)


def _cut(x: torch.Tensor, plan, spans) -> torch.Tensor:
    """Planes ``x`` cut to the pixels the passes read: each pass's span (``lo``, ``hi``) of its own axis."""
    for (axis, *_), (lo, hi) in zip(plan, spans, strict=True):
        x = x[:, lo:hi, :] if axis == 1 else x[:, :, lo:hi]
    return x


def _resize_with_kernel(x: torch.Tensor, plan, interpolation: str, interpret: bool) -> torch.Tensor:
    """:func:`pil_resize`'s passes over planes ``x`` (P, H, W), each one Triton kernel."""
    from clipcache.extract._triton import resample_pass

    taps = [_pass_taps(n_in, n_out, interpolation, start, start + n, x.device) for _, n_in, n_out, start, n in plan]
    x = _cut(x, plan, [t[2:] for t in taps])
    for (axis, *_), (xmin, k, _, _) in zip(plan, taps, strict=True):
        x = resample_pass(x, axis, xmin, k, interpret)
    return x


def _matmul_chunk(x: torch.Tensor, plan, interpolation: str) -> torch.Tensor:
    """:func:`pil_resize`'s passes over planes ``x`` (P, H, W) as float64 matrix products."""
    matrices = [_pass_matrix(n_in, n_out, interpolation, start, start + n, x.device) for _, n_in, n_out, start, n in plan]
    y = _cut(x, plan, [m[1:] for m in matrices]).to(torch.float64)
    for k, ((axis, *_), (matrix, _, _)) in enumerate(zip(plan, matrices, strict=True)):
        y = torch.matmul(y, matrix.T) if axis == 2 else torch.matmul(matrix, y)
        y = y.add_(0.5).clamp_(0, 255)  # Pillow's clip8 of 2**21 + the sum: a floor, then 0..255
        if k + 1 < len(plan):
            y = y.floor_()  # the second pass reads the first's uint8 pixels
    return y.to(torch.uint8)  # the last floor: the cast truncates, and y >= 0

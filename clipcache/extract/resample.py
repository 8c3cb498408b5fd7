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

Only the pixels of a window of the resized image are computed, so a centre crop costs
no work for the pixels it cuts away.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import __version__ as _PIL_VERSION

__all__ = ["PIL_INTERPOLATIONS", "pil_resize", "pil_weights", "vertical_first"]

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
def pil_weights(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's integer weights of one pass, as a dense (out_size, in_size) float64 matrix.

    Mirrors ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` operation by operation in
    double precision (the sum of a window's weights sequentially, as the C loop adds them).
    The matrix holds the integers (at most 2**23 in magnitude) themselves; zero outside
    each output's window.
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
    k = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5))
    dense = np.zeros((out_size, in_size + ksize), dtype=np.float64)
    np.put_along_axis(dense, xmin[:, None] + taps[None, :], np.where(inside, k, 0.0), axis=1)
    weights = dense[:, :in_size]
    weights.flags.writeable = False  # cached and shared: a caller's write would change every later resize
    return weights


@functools.lru_cache(maxsize=64)
def _pass_matrix(in_size: int, out_size: int, interpolation: str, start: int, stop: int, device: torch.device):
    """Rows ``start:stop`` of :func:`pil_weights` times 2**-22 (exact) on ``device``, and the span of input pixels
    they read (``lo``, ``hi``), the matrix cut to it. Made once; copied from pinned memory without waiting on a GPU."""
    rows = pil_weights(in_size, out_size, interpolation)[start:stop]
    used = np.flatnonzero(rows.any(axis=0))
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
    with torch.inference_mode(False):
        host = torch.from_numpy(np.ascontiguousarray(rows[:, lo:hi]) / (1 << PRECISION_BITS))
        if device.type == "cuda":
            host = host.pin_memory()
        return host.to(device, non_blocking=True), lo, hi, host  # the host tensor kept alive for the copy


def pil_resize(
    images: torch.Tensor,
    size: tuple[int, int],
    interpolation: str,
    window: tuple[int, int, int, int] | None = None,
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
    x = images.reshape(-1, *shape[-3:])
    if in_hw == tuple(size):  # Pillow copies an image resized to its own size
        return x[..., top : top + height, left : left + width].reshape(*shape[:-2], height, width).clone()
    rows = cols = None  # (matrix, lo, hi): the vertical and horizontal passes
    if size[0] != in_hw[0]:
        rows = _pass_matrix(in_hw[0], size[0], interpolation, top, top + height, images.device)[:3]
    if size[1] != in_hw[1]:
        cols = _pass_matrix(in_hw[1], size[1], interpolation, left, left + width, images.device)[:3]
    if rows is None:  # a pass Pillow skips copies the window's lines
        x = x[..., top : top + height, :]
    if cols is None:
        x = x[..., left : left + width]
    first_v = rows is not None and cols is not None and vertical_first(in_hw, tuple(size))
    per_image = 8 * shape[-3] * (in_hw[0] * in_hw[1] + 2 * max(in_hw) * max(height, width) + height * width)
    chunk = max(1, CHUNK_BYTES // per_image)
    out = [_resize_chunk(x[i : i + chunk], rows, cols, first_v) for i in range(0, x.shape[0], chunk)]
    return (out[0] if len(out) == 1 else torch.cat(out)).reshape(*shape[:-2], height, width)


def _resize_chunk(x: torch.Tensor, rows, cols, first_v: bool) -> torch.Tensor:
    """:func:`pil_resize`'s passes over one chunk (n, C, H, W) of uint8 images."""
    passes = [p for p in ((("v", rows), ("h", cols)) if first_v else (("h", cols), ("v", rows))) if p[1] is not None]
    for axis, (_, lo, hi) in passes:  # the pixels each pass reads: the first's window, the lines the second uses
        x = x[..., lo:hi, :] if axis == "v" else x[..., lo:hi]
    y = x.to(torch.float64)
    for k, (axis, (matrix, _, _)) in enumerate(passes):
        y = torch.matmul(y, matrix.T) if axis == "h" else torch.matmul(matrix, y)
        y = y.add_(0.5).clamp_(0, 255)  # Pillow's clip8 of 2**21 + the sum: a floor, then 0..255
        if k + 1 < len(passes):
            y = y.floor_()  # the second pass reads the first's uint8 pixels
    return y.to(torch.uint8)  # the last floor: the cast truncates, and y >= 0

"""The device paths' preprocessing as Triton kernels: the same bytes as the torch operations, fused.

- :func:`resample_pass`: one pass of Pillow's 8-bit resize. For each output pixel it
  adds ``2**21 + sum(pixel * weight)`` in int32 over the output's window of input
  pixels, shifts it right by 22 bits and clips it to 0..255, as
  ``ImagingResampleHorizontal_8bpc`` and ``ImagingResampleVertical_8bpc`` do in
  ``Resample.c``. Integer sums are exact in any order, so the bytes are Pillow's, and
  the pass reads uint8 and writes uint8 with nothing in between: the float64 products
  of :func:`clipcache.extract.resample.pil_resize` write eight bytes a pixel and go
  over them three more times. It takes strides, so one kernel makes both passes: along
  a line (the horizontal pass) or across lines (the vertical one), each from any
  strided view.
- :func:`normalize`: a batch's scaling and normalisation as a lookup in a table of each
  channel's 256 values, which :func:`clipcache.extract.transforms.normalize_batch`'s own
  torch operations computed on the same device: the same float32 bytes by
  construction (no floating-point operation in the kernel), one byte read and four
  written a pixel, where the four torch operations read and write the batch four times.

:func:`kernels` compiles them for the GPU; ``kernels(interpret=True)`` runs them in
Triton's interpreter on CPU tensors, which is how the CPU tests check them.
:func:`run` runs a kernel and, if it cannot run (no compiler, an old driver), warns
once and uses the torch operations for the rest of the process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import TypeVar

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover (torch installs Triton on Linux x86-64; elsewhere the torch paths run)
    triton = tl = None

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Output lines and pixels of a line that one program of :func:`resample_pass` makes.
BLOCK_LINES, BLOCK_OUT = 32, 32
#: Pixels of a plane that one program of :func:`normalize` makes.
BLOCK_PIXELS = 1024
#: The most planes (images times channels) one launch takes: a CUDA grid's second and third dimensions.
MAX_PLANES = 65535

#: The kernels that could not run in this process, with the reason: they are not tried again.
failed: dict[str, str] = {}


def _resample(src, dst, xmin_ptr, k_ptr, ksize, lines, out_len, s_plane, s_line, s_along, d_plane, d_line, d_along,
              BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr, LINES_LAST: tl.constexpr):  # noqa: N803 (Triton's style)
    plane = tl.program_id(2).to(tl.int64)
    line = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    out = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    # A block's last axis is the one its threads go along: the one the output is contiguous in, so that their
    # loads and stores are coalesced (the lines for the vertical pass, the outputs for the horizontal one).
    if LINES_LAST:
        line, out = line[None, :], out[:, None]
    else:
        line, out = line[:, None], out[None, :]
    line_ok = line < lines
    out_ok = out < out_len
    first = tl.load(xmin_ptr + out, mask=out_ok, other=0)
    row = src + plane * s_plane + line.to(tl.int64) * s_line
    acc = line * 0 + out * 0 + (1 << 21)  # int32, the block's shape; Pillow's rounding: 2**(PRECISION_BITS - 1)
    for t in range(ksize):
        w = tl.load(k_ptr + out * ksize + t, mask=out_ok, other=0)
        v = tl.load(row + (first + t).to(tl.int64) * s_along, mask=line_ok & (w != 0), other=0)
        acc += v.to(tl.int32) * w
    pixel = tl.minimum(tl.maximum(acc >> 22, 0), 255).to(tl.uint8)  # clip8: an arithmetic shift, then 0..255
    at = dst + plane * d_plane + line.to(tl.int64) * d_line + out.to(tl.int64) * d_along
    tl.store(at, pixel, mask=line_ok & out_ok)


def _normalize(src, dst, table_ptr, pixels, channels, BLOCK: tl.constexpr):  # noqa: N803
    plane = tl.program_id(1).to(tl.int64)
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = at < pixels
    v = tl.load(src + plane * pixels + at, mask=ok, other=0).to(tl.int32)
    channel = (plane % channels).to(tl.int32)
    tl.store(dst + plane * pixels + at, tl.load(table_ptr + channel * 256 + v, mask=ok, other=0.0), mask=ok)


@functools.cache
def kernels(interpret: bool = False) -> SimpleNamespace:
    """The kernels compiled by Triton (or run by its interpreter): ``resample`` and ``normalize``."""
    if triton is None:
        raise ImportError("Triton is not installed")
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return SimpleNamespace(resample=InterpretedFunction(_resample), normalize=InterpretedFunction(_normalize))
    # Sizes vary from image to image on the gpu path: not specialising on them keeps to a few compiled variants.
    return SimpleNamespace(resample=triton.jit(_resample, do_not_specialize=["ksize", "lines", "out_len"]),
                           normalize=triton.jit(_normalize, do_not_specialize=["pixels"]))


def run(name: str, method: str, kernel: Callable[[bool], _T], ops: Callable[[], _T]) -> _T:
    """The computation ``name`` by ``method``: ``"interpret"``, ``kernel(True)`` (Triton's interpreter, tests: a
    failure raises); ``"triton"``, ``kernel(False)``, or, if it failed before in this process or fails now (warned
    once with the reason), ``ops()``, which gives the same bytes with torch's operations; anything else, ``ops()``."""
    if method == "interpret":
        return kernel(True)
    if method == "triton" and name not in failed:
        try:
            return kernel(False)
        except Exception as exc:  # noqa: BLE001 (a compiler's or driver's failure: fall back, with its reason)
            failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            logger.warning("%s: the Triton kernel failed (%s); using torch's operations instead", name, failed[name])
    return ops()


def resample_pass(x: torch.Tensor, axis: int, xmin: torch.Tensor, k: torch.Tensor, interpret: bool = False) -> torch.Tensor:
    """One pass over ``x`` (uint8, shape (planes, H, W), any strides) along ``axis`` (1: across lines, 2: along them).

    ``xmin`` (int32, (n,)) and ``k`` (int32, (n, ksize)) are the outputs' first input and weights, on ``x``'s
    device. Returns a new contiguous uint8 tensor with ``n`` in place of that axis.
    """
    planes = x.shape[0]
    n, ksize = k.shape
    shape = (planes, n, x.shape[2]) if axis == 1 else (planes, x.shape[1], n)
    out = torch.empty(shape, dtype=torch.uint8, device=x.device)
    other = 2 if axis == 1 else 1  # the lines each output pixel lies on
    lines = x.shape[other]
    with _on(x.device):
        for first in range(0, planes, MAX_PLANES):
            src, dst = x[first : first + MAX_PLANES], out[first : first + MAX_PLANES]
            grid = (-(-lines // BLOCK_LINES), -(-n // BLOCK_OUT), src.shape[0])
            kernels(interpret).resample[grid](
                src, dst, xmin, k, ksize, lines, n,
                src.stride(0), src.stride(other), src.stride(axis), dst.stride(0), dst.stride(other), dst.stride(axis),
                BLOCK_L=BLOCK_LINES, BLOCK_O=BLOCK_OUT, LINES_LAST=axis == 1,
            )
    return out


def normalize(batch: torch.Tensor, table: torch.Tensor, interpret: bool = False) -> torch.Tensor:
    """``table[channel * 256 + pixel]`` for each pixel of ``batch`` (uint8, shape (..., C, H, W)), float32.

    ``table`` (float32, (C * 256,)) is on ``batch``'s device.
    """
    channels = batch.shape[-3]
    planes_in = batch.contiguous().view(-1, batch.shape[-2] * batch.shape[-1])
    out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device)
    planes_out = out.view(planes_in.shape)
    pixels = planes_in.shape[1]
    step = MAX_PLANES - MAX_PLANES % channels  # whole images a launch: a plane's channel is its index modulo C
    with _on(batch.device):
        for first in range(0, planes_in.shape[0], step):
            src, dst = planes_in[first : first + step], planes_out[first : first + step]
            kernels(interpret).normalize[(-(-pixels // BLOCK_PIXELS), src.shape[0])](
                src, dst, table, pixels, channels, BLOCK=BLOCK_PIXELS)
    return out


def _on(device: torch.device):
    """The tensors' GPU as the current device (Triton launches on the current one, a torchrun rank's may differ)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()

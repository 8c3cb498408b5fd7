"""One pass of Pillow's 8-bit resize as a Triton kernel: Pillow's own integer arithmetic, fused.

For each output pixel the kernel adds ``2**21 + sum(pixel * weight)`` in int32 over the
output's window of input pixels, shifts it right by 22 bits and clips it to 0..255, as
``ImagingResampleHorizontal_8bpc`` and ``ImagingResampleVertical_8bpc`` do in
``Resample.c``. Integer sums are exact in any order, so the bytes are Pillow's, and the
pass reads uint8 and writes uint8 with nothing in between: the float64 products of
:func:`clipcache.extract.resample.pil_resize` write eight bytes a pixel and go over them
three more times.

The kernel takes strides, so one kernel makes both passes: along a line (the horizontal
pass) or across lines (the vertical one), each from any strided view.

:func:`kernel` compiles it for the GPU; ``kernel(interpret=True)`` runs it in Triton's
interpreter on CPU tensors, which is how the CPU tests check it.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover (torch requires Triton on Linux)
    triton = tl = None

#: Output lines and pixels of a line that one program makes.
BLOCK_LINES, BLOCK_OUT = 32, 32
#: The most planes (images times channels) one launch takes: a CUDA grid's third dimension.
MAX_PLANES = 65535


def _pass(src, dst, xmin_ptr, k_ptr, ksize, lines, out_len, s_plane, s_line, s_along, d_plane, d_line, d_along,
          BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr):  # noqa: N803 (Triton's style)
    plane = tl.program_id(2).to(tl.int64)
    line = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    out = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    line_ok = line < lines
    out_ok = out < out_len
    first = tl.load(xmin_ptr + out, mask=out_ok, other=0)
    row = src + plane * s_plane + line.to(tl.int64)[:, None] * s_line
    acc = tl.full((BLOCK_L, BLOCK_O), 1 << 21, tl.int32)  # Pillow's rounding: 2**(PRECISION_BITS - 1)
    for t in range(ksize):
        w = tl.load(k_ptr + out * ksize + t, mask=out_ok, other=0)
        at = (first + t).to(tl.int64)[None, :] * s_along
        v = tl.load(row + at, mask=line_ok[:, None] & (w != 0)[None, :], other=0)
        acc += v.to(tl.int32) * w[None, :]
    pixel = tl.minimum(tl.maximum(acc >> 22, 0), 255).to(tl.uint8)  # clip8: an arithmetic shift, then 0..255
    at = dst + plane * d_plane + line.to(tl.int64)[:, None] * d_line + out.to(tl.int64)[None, :] * d_along
    tl.store(at, pixel, mask=line_ok[:, None] & out_ok[None, :])


@functools.cache
def kernel(interpret: bool = False):
    """The pass compiled by Triton (or run by its interpreter); ImportError without Triton."""
    if triton is None:
        raise ImportError("Triton is not installed")
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_pass)
    # Sizes vary from image to image on the gpu path: not specialising on them keeps to a few compiled variants.
    return triton.jit(_pass, do_not_specialize=["ksize", "lines", "out_len"])


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
    for first in range(0, planes, MAX_PLANES):  # a CUDA grid's third dimension is at most 65535
        src, dst = x[first : first + MAX_PLANES], out[first : first + MAX_PLANES]
        grid = (-(-lines // BLOCK_LINES), -(-n // BLOCK_OUT), src.shape[0])
        kernel(interpret)[grid](
            src, dst, xmin, k, ksize, lines, n,
            src.stride(0), src.stride(other), src.stride(axis), dst.stride(0), dst.stride(other), dst.stride(axis),
            BLOCK_L=BLOCK_LINES, BLOCK_O=BLOCK_OUT,
        )
    return out

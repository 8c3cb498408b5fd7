"""How an image becomes a model input: :class:`Preprocess`, its geometry, and the CPU transforms.

A :class:`Preprocess` carries every field of open_clip's ``PreprocessCfg`` that
shapes the pixels (``size``, ``mean``, ``std``, ``interpolation``,
``resize_mode``, ``fill_color``) plus timm's crop ratio (``resize_size``). The
geometry of one image, which every decode path shares, is computed once by
:func:`plan_geometry`: a resize to an exact ``(height, width)``, then a square
window that may reach past the resized image (those pixels take
``fill_color``). The CPU path resizes with PIL (through torchvision) and cuts
the window with :func:`crop_or_pad`, which works on uint8 tensors of any
leading shape and device, so a GPU decode path can reuse both.

The evaluation output equals open_clip's ``image_transform_v2(cfg,
is_train=False)`` and timm's ``create_transform(**resolve_data_config(...))``
bit for bit (tests/extract/test_transforms.py checks it for every resize mode).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from clipcache.errors import InvalidParameterError
from clipcache.extract.images import to_rgb

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

__all__ = [
    "AUG_RATIO",
    "AUG_SCALE",
    "INTERPOLATIONS",
    "NORMALIZE_CUDA_METHOD",
    "NORMALIZE_METHODS",
    "RESIZE_MODES",
    "Geometry",
    "Preprocess",
    "augmented_view",
    "augmented_view_uint8",
    "crop_or_pad",
    "eval_transform",
    "eval_transform_uint8",
    "normalize_batch",
    "plan_geometry",
    "to_uint8_tensor",
    "view_params",
]

AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3.0 / 4.0, 4.0 / 3.0)

RESIZE_MODES = ("shortest", "longest", "squash")
"""``shortest``: resize the shorter side to ``resize_size``, keep the aspect ratio, centre-crop.
``longest``: resize the longer side to ``resize_size``, keep the aspect ratio, centre-crop or pad
with ``fill_color``. ``squash``: resize both sides to ``resize_size`` (aspect ratio lost), centre-crop."""

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
    "lanczos": InterpolationMode.LANCZOS,
}
"""Resampling filters by name (PIL's, through torchvision)."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize, centre-crop or pad, normalise.

    The defaults of the last three fields are the behaviour of clipcache before
    they were recorded, so provenance written then reads back unchanged.

    Attributes
    ----------
    image_size : int
        Side of the square model input, in pixels.
    resize_size : int
        Target of the resize (``>= image_size`` for a crop margin): the shorter side
        (``shortest``), the longer side (``longest``) or both sides (``squash``).
    mean, std : tuple of 3 floats
        Per-channel normalisation applied to RGB values in [0, 1].
    interpolation : str
        A key of :data:`INTERPOLATIONS` (``"bicubic"``, ``"bilinear"`` ...).
    resize_mode : str
        One of :data:`RESIZE_MODES`.
    fill_color : int or tuple of 3 ints
        Value (0-255) of the pixels that ``longest`` pads; per channel when a tuple.

    Raises
    ------
    InvalidParameterError
        On an unknown ``interpolation`` or ``resize_mode``, a size below 1, or a
        ``resize_size`` below ``image_size`` in a mode that crops.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int | tuple[int, int, int] = 0

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidParameterError(
                f"preprocessing interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}",
                param="interpolation",
            )
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidParameterError(
                f"preprocessing resize_mode {self.resize_mode!r} is not one of {list(RESIZE_MODES)}", param="resize_mode"
            )
        if self.image_size < 1 or self.resize_size < 1:
            raise InvalidParameterError(
                f"preprocessing sizes must be positive, not image_size={self.image_size}, resize_size={self.resize_size}",
                param="image_size",
            )

    def to_dict(self) -> dict:
        """Return a JSON-able dict of every field (tuples become lists)."""
        fill = self.fill_color
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": [int(v) for v in fill] if isinstance(fill, (tuple, list)) else int(fill),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """Build from :meth:`to_dict` output; keys missing from older provenance take their defaults."""
        fill = data.get("fill_color", 0)
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bicubic")),
            resize_mode=str(data.get("resize_mode", "shortest")),
            fill_color=tuple(int(v) for v in fill) if isinstance(fill, (tuple, list)) else int(fill),
        )


# --------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the model input of one image comes from.

    Resize the image to ``resize_hw``, then take the ``size`` x ``size`` window
    whose top-left corner is ``(top, left)`` in the resized image. The window
    may reach past the resized image (negative ``top``/``left``, or past the far
    edge); those pixels are ``fill``.

    Attributes
    ----------
    resize_hw : tuple of (int, int)
        (height, width) after the resize.
    top, left : int
        Corner of the window in the resized image.
    size : int
        Side of the window (the model input).
    fill : tuple of 3 ints
        RGB value (0-255) of padded pixels.
    """

    resize_hw: tuple[int, int]
    top: int
    left: int
    size: int
    fill: tuple[int, int, int]


def _window_start(image: int, window: int) -> int:
    """Offset of a centred window, as torchvision's and open_clip's centre crop/pad round it."""
    if window > image:
        return -((window - image) // 2)
    return int(round((image - window) / 2.0))


def plan_geometry(pp: Preprocess, width: int, height: int) -> Geometry:
    """Map a preprocessing and an image size to the resize and the crop/pad window.

    This is the single description of the geometry that every decode path
    applies: the CPU transforms here, and a GPU decoder that receives the same
    :class:`Geometry`.

    Parameters
    ----------
    pp : Preprocess
    width, height : int
        Size of the decoded image, in pixels.

    Returns
    -------
    Geometry
        ``shortest`` rounds the longer side down (torchvision ``Resize(int)``),
        ``longest`` rounds both sides to nearest (open_clip's and timm's
        ``ResizeKeepRatio``), ``squash`` resizes to exactly ``resize_size``.
    """
    target = pp.resize_size
    if pp.resize_mode == "squash":
        new_h, new_w = target, target
    elif pp.resize_mode == "longest":
        ratio = max(height / target, width / target)
        new_h, new_w = round(height / ratio), round(width / ratio)
    elif width <= height:
        new_w, new_h = target, int(target * height / width)
    else:
        new_h, new_w = target, int(target * width / height)
    fill = pp.fill_color
    fill = tuple(int(v) for v in fill) if isinstance(fill, (tuple, list)) else (int(fill),) * 3
    return Geometry(
        resize_hw=(new_h, new_w),
        top=_window_start(new_h, pp.image_size),
        left=_window_start(new_w, pp.image_size),
        size=pp.image_size,
        fill=fill,
    )


def crop_or_pad(images: torch.Tensor, top: int, left: int, size: int, fill: tuple[int, int, int]) -> torch.Tensor:
    """Cut the ``size`` x ``size`` window at ``(top, left)``, filling what lies outside the images.

    Parameters
    ----------
    images : torch.Tensor, uint8, shape (..., 3, H, W)
        On any device.
    top, left : int
        Window corner; may be negative or reach past ``H``/``W``.
    size : int
    fill : tuple of 3 ints
        Per-channel value of the pixels outside the images.

    Returns
    -------
    torch.Tensor, same dtype and device, shape (..., 3, size, size)
        A view of ``images`` when the window lies inside them, otherwise a new tensor.
    """
    height, width = images.shape[-2:]
    if top >= 0 and left >= 0 and top + size <= height and left + size <= width:
        return images[..., top : top + size, left : left + size]
    out = torch.empty((*images.shape[:-2], size, size), dtype=images.dtype, device=images.device)
    out.copy_(_constant(tuple(fill), images.dtype, images.device).view(3, 1, 1).expand_as(out))
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + size, height), min(left + size, width)
    if src_bottom > src_top and src_right > src_left:
        out[..., src_top - top : src_bottom - top, src_left - left : src_right - left] = images[
            ..., src_top:src_bottom, src_left:src_right
        ]
    return out


# --------------------------------------------------------------------------- CPU transforms


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 tensor of shape (3, H, W) (no scaling)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


#: How :func:`normalize_batch` computes on a CUDA device: ``"triton"``, one kernel that looks each pixel up in its
#: channel's 256 values, which the torch operations themselves computed on that device (the same bytes; one byte
#: read and four written a pixel, :mod:`clipcache.extract._triton`), or ``"torch"``, the four operations over the
#: batch. If the kernel cannot run, the process warns once and uses ``"torch"`` instead.
NORMALIZE_CUDA_METHOD = "triton"
#: The methods :func:`normalize_batch` takes: ``"interpret"`` is the kernel in Triton's interpreter (tests).
NORMALIZE_METHODS = ("torch", "triton", "interpret")


def normalize_batch(batch: torch.Tensor, pp: Preprocess, method: str | None = None) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and normalise, as ``to_tensor`` + ``normalize`` do.

    Parameters
    ----------
    batch : torch.Tensor, uint8, shape (b, 3, S, S) or (3, S, S)
    pp : Preprocess
    method : {"torch", "triton", "interpret"}, optional
        How (:data:`NORMALIZE_METHODS`); by default :data:`NORMALIZE_CUDA_METHOD` on a CUDA device and
        ``"torch"`` elsewhere. The bytes are the same.

    Returns
    -------
    torch.Tensor, float32, same shape
        Bitwise equal to torchvision's ``normalize(to_tensor(img), mean, std)`` on the same device.
    """
    if method is None:
        method = NORMALIZE_CUDA_METHOD if batch.is_cuda else "torch"
    if method not in NORMALIZE_METHODS:
        raise ValueError(f"method {method!r} is not one of {list(NORMALIZE_METHODS)}")
    if method == "torch":  # on a CPU: no table, no Triton import
        return _normalize_ops(batch, pp)
    from clipcache.extract import _triton

    table = _normalize_table(pp, batch.shape[-3], batch.device)
    return _triton.run("normalize_batch", method, lambda interpret: _triton.normalize(batch, table, interpret),
                       lambda: _normalize_ops(batch, pp))


def _normalize_ops(batch: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """:func:`normalize_batch` as torch operations."""
    mean = _constant(tuple(pp.mean), torch.float32, batch.device).view(-1, 1, 1)
    std = _constant(tuple(pp.std), torch.float32, batch.device).view(-1, 1, 1)
    return batch.to(torch.float32).div(255).sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def _normalize_table(pp: Preprocess, channels: int, device: torch.device) -> torch.Tensor:
    """Each channel's 256 normalised values, (channels * 256,) float32, made by :func:`_normalize_ops` on
    ``device``: the kernel's lookups give that device's bytes. Made once."""
    with torch.inference_mode(False):
        levels = torch.arange(256, dtype=torch.uint8, device=device).expand(channels, 1, 256)
        return _normalize_ops(levels, pp).reshape(-1)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a tensor on ``device``, made once: copying them to a GPU at every batch would wait for its queue."""
    with torch.inference_mode(False):  # a normal tensor, wherever it is first asked for
        return torch.tensor(values, dtype=dtype).to(device)


def _eval_uint8(img: Image.Image, pp: Preprocess) -> torch.Tensor:
    img = to_rgb(img)
    geometry = plan_geometry(pp, img.width, img.height)
    resized = TF.resize(img, list(geometry.resize_hw), interpolation=INTERPOLATIONS[pp.interpolation])
    window = crop_or_pad(to_uint8_tensor(resized), geometry.top, geometry.left, geometry.size, geometry.fill)
    return window.contiguous()


def eval_transform_uint8(pp: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """Return PIL -> uint8 tensor (3, S, S): the resize and crop/pad of :func:`plan_geometry`.

    The extraction loop ships these uint8 tensors from its workers and applies
    :func:`normalize_batch` per batch on the device. The function pickles, as a
    dataset that a fork server or ``spawn`` sends to each worker must.
    """
    return functools.partial(_eval_uint8, pp=pp)


def eval_transform(pp: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """Return PIL -> float32 tensor (3, S, S): resize, crop or pad, normalise."""

    def transform(img: Image.Image) -> torch.Tensor:
        return normalize_batch(_eval_uint8(img, pp), pp)

    return transform


# --------------------------------------------------------------------------- augmented views


def view_params(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
    """Draw RandomResizedCrop (scale 0.5-1, ratio 3/4-4/3) and flip parameters.

    Follows torchvision's ``RandomResizedCrop.get_params`` with a numpy generator,
    so each (seed, sample, view) gives the same view in any worker or run.

    Returns
    -------
    (top, left, crop_height, crop_width, flip)
    """
    area = width * height
    log_ratio = (math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*AUG_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w, bool(rng.random() < 0.5)
    ratio = width / height
    if ratio < AUG_RATIO[0]:
        w, h = width, int(round(width / AUG_RATIO[0]))
    elif ratio > AUG_RATIO[1]:
        h, w = height, int(round(height * AUG_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, bool(rng.random() < 0.5)


def augmented_view_uint8(img: Image.Image, params: tuple[int, int, int, int, bool], pp: Preprocess) -> torch.Tensor:
    """Apply crop/flip ``params`` (from :func:`view_params`); return a uint8 tensor (3, S, S).

    The view is a RandomResizedCrop whatever ``pp.resize_mode``; it resamples with
    ``pp.interpolation``.
    """
    top, left, h, w, flip = params
    out = TF.resized_crop(img, top, left, h, w, [pp.image_size, pp.image_size], interpolation=INTERPOLATIONS[pp.interpolation])
    if flip:
        out = TF.hflip(out)
    return to_uint8_tensor(out)


def augmented_view(img: Image.Image, params: tuple[int, int, int, int, bool], pp: Preprocess) -> torch.Tensor:
    """Apply crop/flip ``params`` and normalise; return a float32 tensor (3, S, S)."""
    return normalize_batch(augmented_view_uint8(img, params, pp), pp)

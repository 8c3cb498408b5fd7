"""Evaluation preprocessing and seeded augmented views (RandomResizedCrop + flip)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from clipcache.extract.backbones import Preprocess
from clipcache.extract.images import to_rgb

AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3.0 / 4.0, 4.0 / 3.0)

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 tensor of shape (3, H, W) (no scaling)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def normalize_batch(batch: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and normalise, as ``to_tensor`` + ``normalize`` do.

    Parameters
    ----------
    batch : torch.Tensor, uint8, shape (b, 3, S, S) or (3, S, S)

    Returns
    -------
    torch.Tensor, float32, same shape
        Bitwise equal to torchvision's ``normalize(to_tensor(img), mean, std)``.
    """
    mean = torch.as_tensor(pp.mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    std = torch.as_tensor(pp.std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    return batch.to(torch.float32).div(255).sub_(mean).div_(std)


def _resize_crop(img: Image.Image, pp: Preprocess) -> Image.Image:
    img = TF.resize(to_rgb(img), pp.resize_size, interpolation=_INTERPOLATION[pp.interpolation])
    return TF.center_crop(img, [pp.image_size, pp.image_size])


def eval_transform_uint8(pp: Preprocess):
    """Return PIL -> uint8 tensor (3, S, S): resize the shorter side and centre-crop.

    The extraction loop ships these uint8 tensors from its workers and applies
    :func:`normalize_batch` per batch on the device.
    """

    def transform(img: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(_resize_crop(img, pp))

    return transform


def eval_transform(pp: Preprocess):
    """Return PIL -> float32 tensor (3, S, S): resize shorter side, centre-crop, normalise."""

    def transform(img: Image.Image) -> torch.Tensor:
        return normalize_batch(to_uint8_tensor(_resize_crop(img, pp)), pp)

    return transform


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
    """Apply crop/flip ``params`` (from :func:`view_params`); return a uint8 tensor (3, S, S)."""
    top, left, h, w, flip = params
    out = TF.resized_crop(img, top, left, h, w, [pp.image_size, pp.image_size], interpolation=_INTERPOLATION[pp.interpolation])
    if flip:
        out = TF.hflip(out)
    return to_uint8_tensor(out)


def augmented_view(img: Image.Image, params: tuple[int, int, int, int, bool], pp: Preprocess) -> torch.Tensor:
    """Apply crop/flip ``params`` and normalise; return a float32 tensor (3, S, S)."""
    return normalize_batch(augmented_view_uint8(img, params, pp), pp)

"""Decoding one image file into an RGB :class:`PIL.Image.Image`, whatever its mode.

Every image the extraction loop sees goes through :func:`to_rgb`, so that grayscale,
16-bit, CMYK, RGBA, LA and palette images reach the transforms as 8-bit RGB. Pixels that
carry transparency are composited onto a white background (the usual reading of a
transparent pixel), not onto whatever colour the file happens to store under alpha 0.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "load_image", "to_rgb"]

BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited onto."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert ``image`` to 8-bit RGB.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode PIL decodes: ``1``, ``L``, ``LA``, ``P`` (with or without a transparent
        index), ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ``I;16``, ``I`` or ``F``.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``. Transparent pixels become :data:`BACKGROUND`; 16-bit and 32-bit
        grey levels are scaled to 0-255 by their type's range, not clipped.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_uint8(image), mode="L").convert("RGB")
    return image.convert("RGB")


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a high-bit-depth grey image to ``uint8`` by the range of its pixel type."""
    array = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(array, 0.0, 1.0) * 255.0
    elif image.mode == "I" and array.max(initial=0) > 65535:
        scaled = np.clip(array, 0, 2**32 - 1) / (2**32 - 1) * 255.0
    else:  # 16-bit data, whether PIL reports it as I;16 or widened to I
        scaled = np.clip(array, 0, 65535) / 65535.0 * 255.0
    return np.rint(scaled).astype(np.uint8)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert one image file to RGB.

    Decoding is forced here (``Image.load``), so that a truncated or corrupt file fails
    in this call, with an :class:`OSError` or :class:`ValueError` that the caller can
    record, rather than later inside a transform.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, detached from the file.
    """
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)

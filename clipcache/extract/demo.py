"""A tiny built-in image dataset, drawn on the fly, so that extraction runs with no download.

:func:`write_demo_dataset` draws coloured shapes (circles, squares, triangles,
stars) on textured backgrounds with PIL and writes them as an ImageFolder tree
``DIR/{train,test}/<shape>/NNN.png``. Everything is seeded: the same call
writes the same pixels.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipcache.errors import DatasetError, InvalidParameterError

__all__ = ["DEMO_CLASSES", "DEMO_SIZE", "draw_shape", "write_demo_dataset"]

DEMO_CLASSES = ("circle", "square", "star", "triangle")
DEMO_SIZE = 64


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = 4
        radii = [r] * corners
    elif kind == "triangle":
        corners = 3
        radii = [r] * corners
    else:  # star
        corners = 10
        radii = [r if i % 2 == 0 else r * 0.45 for i in range(corners)]
    step = 2 * math.pi / corners
    return [(cx + radii[i] * math.cos(angle + i * step), cy + radii[i] * math.sin(angle + i * step)) for i in range(corners)]


def draw_shape(kind: str, rng: np.random.Generator, size: int = DEMO_SIZE) -> Image.Image:
    """Draw one ``kind`` shape on a random smooth background.

    Parameters
    ----------
    kind : str
        One of :data:`DEMO_CLASSES`.
    rng : numpy.random.Generator
    size : int
        Image side in pixels.

    Returns
    -------
    PIL.Image.Image
        RGB, ``size`` x ``size``.
    """
    noise = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    background = Image.fromarray(noise, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    image = background.filter(ImageFilter.GaussianBlur(2))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = rng.uniform(r, size - r, size=2)
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    outline = tuple(255 - v for v in colour)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline, width=2)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour, outline=outline)
    return image


def write_demo_dataset(
    directory: str | os.PathLike,
    *,
    train_per_class: int = 12,
    test_per_class: int = 6,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write the demo ImageFolder tree.

    Parameters
    ----------
    directory : path
        Created if missing; must not already hold a ``train`` or ``test`` folder
        unless ``overwrite``.
    train_per_class, test_per_class : int
        Images per class, 0 or more.
    seed : int
    overwrite : bool
        Replace existing ``train`` and ``test`` folders.

    Returns
    -------
    dict of str to int
        Images written per split.
    """
    for param, count in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise InvalidParameterError(f"{param} must be a whole number of images, 0 or more, not {count!r}", param=param)
    root = Path(directory)
    existing = [root / split for split in ("train", "test") if (root / split).exists()]
    if existing and not overwrite:
        raise DatasetError(
            f"{root}: already holds a train or test folder; give an empty or new directory, or overwrite it", param="overwrite"
        )
    for folder in existing:
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for kind in DEMO_CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(kind, rng).save(folder / f"{i:03d}.png", optimize=False)
        counts[split] = n * len(DEMO_CLASSES)
    return counts

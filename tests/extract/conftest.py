"""Fixtures of the extraction tests: tiny image folders and cached backbones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipcache.extract.backbones import build_open_clip, build_timm
from clipcache.extract.demo import draw_shape

SHAPES = ("circle", "square")


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Write ``root/<split>/<shape>/NNN.png`` for two shape classes; return ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_shape(shape, rng, size=size).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageFolder with train (2 x 6) and test (2 x 3) PNGs of 40 px."""
    return write_image_folder(tmp_path / "images", {"train": 6, "test": 3})


@pytest.fixture(scope="session")
def tiny_clip():
    """The randomly initialised clipcache-tiny-vit backbone (seed 0)."""
    return build_open_clip("clipcache-tiny-vit", "none", seed=0)


@pytest.fixture(scope="session")
def lite0_small():
    """The real pretrained EfficientNet-lite0 at 64 px input (fast on CPU)."""
    return build_timm("efficientnet-lite0", image_size=64)

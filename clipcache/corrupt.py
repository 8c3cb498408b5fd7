"""CIFAR-10-C-style corrupted copies of an image folder, with numpy, PIL and scipy only.

The corruptions and their five severities are those of Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
(ICLR 2019), with the CIFAR parameters of ``ImageNet-C/create_c/make_cifar_c.py``
in ``hendrycks/robustness``. The 14 that numpy, PIL and scipy can reproduce are
here (:data:`CORRUPTIONS`); motion blur, snow, frost, spatter and elastic
transform need ImageMagick (wand), OpenCV or image files and are left out.
Where the reference calls scikit-image or OpenCV, the same operation is written
with scipy (``gaussian``: ``scipy.ndimage.gaussian_filter`` with mode "nearest"
and truncate 4; ``cv2.filter2D`` and ``cv2.GaussianBlur``: correlation with
mode "mirror", OpenCV's default BORDER_REFLECT_101; ``rgb2hsv``/``hsv2rgb``:
numpy ports of scikit-image's formulas). docs/shift.md lists each corruption's
parameters and the deviations.

Randomness is seeded per image: the generator of one image derives from
``(seed, corruption, severity, image key)`` (:func:`image_rng`), so the output does
not depend on the order or the number of processes, and the same seed gives
byte-identical PNG files.

The output folder is an ImageFolder tree of splits ``test-<corruption>-<severity>``
(one folder per class inside each), a ``manifest.json`` recording every corruption,
severity, parameter, the seed, the source and the file counts, and ``images.csv``
(columns ``path,label,split``), a manifest that ``clipcache extract`` reads as one
split per corrupted copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image

from clipcache._io import atomic_output
from clipcache._version import __version__
from clipcache.errors import DatasetError, InvalidParameterError

__all__ = [
    "CORRUPTIONS",
    "MANIFEST",
    "CSV_MANIFEST",
    "SEVERITIES",
    "Corruption",
    "CorruptionReport",
    "corrupt_folder",
    "corrupt_image",
    "image_rng",
    "split_name",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CSV_MANIFEST = "images.csv"
MANIFEST_FORMAT = "clipcache.corrupted-images"
MANIFEST_VERSION = 1
SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE = "hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py (CIFAR parameters)"


# --------------------------------------------------------------------------- helpers


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image ``filters.gaussian(x, sigma, multichannel=True)``: per channel, mode nearest, truncate 4."""
    return scipy.ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's ``color.rgb2hsv`` for float RGB in [0, 1], shape (H, W, 3)."""
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(delta == 0, 0.0, delta / v)
        h = np.zeros_like(v)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        h = np.where(r == v, (g - b) / delta, h)  # later rules win ties, as in scikit-image
        h = np.where(g == v, 2.0 + (b - r) / delta, h)
        h = np.where(b == v, 4.0 + (r - g) / delta, h)
    h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, v], axis=-1)


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``color.hsv2rgb`` for float HSV in [0, 1], shape (H, W, 3)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.astype(np.int64) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape)
    for k, (r, g, b) in enumerate(choices):
        mask = sector == k
        out[mask] = np.stack([r[mask], g[mask], b[mask]], axis=-1)
    return out


def _gaussian_kernel_1d(sigma: float, size: int = 3) -> np.ndarray:
    """``cv2.getGaussianKernel(size, sigma)`` for sigma > 0: normalised exp(-i^2 / (2 sigma^2))."""
    i = np.arange(size) - (size - 1) / 2
    k = np.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The anti-aliased disk kernel of the reference's defocus blur (17 x 17 for radius <= 8)."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), 3
    else:
        grid, ksize = np.arange(-np.ceil(radius), np.ceil(radius) + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = np.asarray(xx**2 + yy**2 <= radius**2, dtype=np.float64)
    disk /= disk.sum()
    k = _gaussian_kernel_1d(alias_blur, ksize)
    disk = scipy.ndimage.correlate1d(disk, k, axis=0, mode="mirror")
    return scipy.ndimage.correlate1d(disk, k, axis=1, mode="mirror")


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom the centre of ``img`` (H, W, C) by ``zoom_factor`` (bilinear) and crop back to (H, W)."""
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = scipy.ndimage.zoom(img[top : top + ch, left : left + cw], (zoom_factor, zoom_factor, 1), order=1)
    trim_top, trim_left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[trim_top : trim_top + h, trim_left : trim_left + w]


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map (mapsize x mapsize, a power of two) scaled to [0, 1], as the reference's fog."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squares)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(top)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(left)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


# --------------------------------------------------------------------------- corruptions
# Each takes x: uint8 (H, W, 3), the parameters of one severity and a Generator, and
# returns floats in [0, 255] (or uint8), truncated to uint8 by the caller as the reference does.


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def _gaussian_noise(x, c, rng):
    (sigma,) = c
    x = _unit(x)
    return np.clip(x + rng.normal(size=x.shape, scale=sigma), 0, 1) * 255


def _shot_noise(x, c, rng):
    (photons,) = c
    x = _unit(x)
    return np.clip(rng.poisson(x * photons) / photons, 0, 1) * 255


def _impulse_noise(x, c, rng):
    (amount,) = c
    x = _unit(x)
    flipped = rng.random(x.shape) < amount  # scikit-image random_noise(mode="s&p", salt_vs_pepper=0.5)
    salted = rng.random(x.shape) < 0.5
    x = np.where(flipped & salted, 1.0, np.where(flipped & ~salted, 0.0, x))
    return np.clip(x, 0, 1) * 255


def _speckle_noise(x, c, rng):
    (sigma,) = c
    x = _unit(x)
    return np.clip(x + x * rng.normal(size=x.shape, scale=sigma), 0, 1) * 255


def _gaussian_blur(x, c, rng):
    (sigma,) = c
    return np.clip(_gaussian(_unit(x), sigma), 0, 1) * 255


def _glass_blur(x, c, rng):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(_unit(x), sigma) * 255)
    h, w = x.shape[:2]
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    shifts = rng.integers(-delta, delta, size=(iterations, len(rows), len(cols), 2)).tolist()
    for i in range(iterations):
        for a, hh in enumerate(rows):
            for b, ww in enumerate(cols):
                dx, dy = shifts[i][a][b]
                # The reference's "swap" is a tuple assignment of numpy views, which copies
                # pixel (h+dy, w+dx) onto (h, w) and leaves the source as it was; CIFAR-10-C
                # was made that way, so it is done that way here.
                x[hh, ww] = x[hh + dy, ww + dx]
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def _defocus_blur(x, c, rng):
    radius, alias_blur = c
    x = _unit(x)
    kernel = _disk(radius, alias_blur)
    channels = [scipy.ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 1) * 255


def _zoom_blur(x, c, rng):
    start, stop, step = c
    factors = np.arange(start, stop, step)
    x = _unit(x).astype(np.float32)
    out = np.zeros_like(x)
    for z in factors:
        out += _clipped_zoom(x, z)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _fog(x, c, rng):
    strength, decay = c
    x = _unit(x)
    h, w = x.shape[:2]
    mapsize = max(32, 1 << int(np.ceil(np.log2(max(h, w)))))
    max_val = x.max()
    x = x + strength * _plasma_fractal(mapsize, decay, rng)[:h, :w][..., np.newaxis]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def _brightness(x, c, rng):
    (shift,) = c
    hsv = _rgb2hsv(_unit(x))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + shift, 0, 1)
    return np.clip(_hsv2rgb(hsv), 0, 1) * 255


def _contrast(x, c, rng):
    (factor,) = c
    x = _unit(x)
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * factor + means, 0, 1) * 255


def _saturate(x, c, rng):
    scale, shift = c
    hsv = _rgb2hsv(_unit(x))
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * scale + shift, 0, 1)
    return np.clip(_hsv2rgb(hsv), 0, 1) * 255


def _jpeg_compression(x, c, rng):
    (quality,) = c
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _pixelate(x, c, rng):
    (factor,) = c
    image = Image.fromarray(x)
    w, h = image.size
    small = image.resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


@dataclass(frozen=True)
class Corruption:
    """One corruption: its reference parameters per severity and the function that applies them.

    Attributes
    ----------
    name : str
        The reference's function name (``gaussian_noise`` ...).
    fields : tuple of str
        Names of the parameters.
    levels : tuple
        Five parameter tuples, severities 1 to 5 (the CIFAR values of the reference).
    apply : callable
        ``apply(x, params, rng)`` with x uint8 (H, W, 3).
    random : bool
        Whether it draws random numbers.
    """

    name: str
    fields: tuple
    levels: tuple
    apply: Callable = field(repr=False)
    random: bool = False

    def parameters(self, severity: int) -> dict:
        """The parameters of ``severity`` (1 to 5), by name."""
        return dict(zip(self.fields, self.levels[severity - 1], strict=True))


def _c(name, fields, levels, fn, random=False) -> Corruption:
    levels = tuple(tuple(v) if isinstance(v, tuple) else (v,) for v in levels)
    return Corruption(name, tuple(fields), levels, fn, random)


#: The 14 corruptions, by name, in the reference's order (noise, blur, weather, digital).
CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        _c("gaussian_noise", ["sigma"], [0.04, 0.06, 0.08, 0.09, 0.10], _gaussian_noise, True),
        _c("shot_noise", ["photons"], [500, 250, 100, 75, 50], _shot_noise, True),
        _c("impulse_noise", ["amount"], [0.01, 0.02, 0.03, 0.05, 0.07], _impulse_noise, True),
        _c("speckle_noise", ["sigma"], [0.06, 0.1, 0.12, 0.16, 0.2], _speckle_noise, True),
        _c("defocus_blur", ["radius", "alias_blur"], [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
           _defocus_blur),
        _c("glass_blur", ["sigma", "max_delta", "iterations"],
           [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], _glass_blur, True),
        _c("zoom_blur", ["start", "stop", "step"],
           [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)], _zoom_blur),
        _c("gaussian_blur", ["sigma"], [0.4, 0.6, 0.7, 0.8, 1.0], _gaussian_blur),
        _c("fog", ["strength", "wibble_decay"], [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], _fog, True),
        _c("brightness", ["value_shift"], [0.05, 0.1, 0.15, 0.2, 0.3], _brightness),
        _c("contrast", ["factor"], [0.75, 0.5, 0.4, 0.3, 0.15], _contrast),
        _c("saturate", ["scale", "shift"], [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], _saturate),
        _c("pixelate", ["factor"], [0.95, 0.9, 0.85, 0.75, 0.65], _pixelate),
        _c("jpeg_compression", ["quality"], [80, 65, 58, 50, 40], _jpeg_compression),
    )
}


def split_name(corruption: str, severity: int) -> str:
    """The store split of a corrupted copy: ``test-<corruption>-<severity>``."""
    return f"test-{corruption}-{severity}"


def image_rng(seed: int, corruption: str, severity: int, key: str) -> np.random.Generator:
    """The generator of one image: seeded by SHA-256 of ``(seed, corruption, severity, key)``.

    Parameters
    ----------
    seed : int
    corruption : str
    severity : int
    key : str
        The image's path relative to its class folder (with the class), e.g. ``"bird/0001.jpg"``.

    Returns
    -------
    numpy.random.Generator
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{corruption}\x00{int(severity)}\x00{key}".encode()).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def _check_choice(corruption: str, severity: int) -> Corruption:
    if corruption not in CORRUPTIONS:
        raise InvalidParameterError(
            f"corruption {corruption!r} is not one of {', '.join(CORRUPTIONS)}", param="corruptions"
        )
    if severity not in SEVERITIES:
        raise InvalidParameterError(f"severity {severity!r} must be an integer from 1 to 5", param="severities")
    return CORRUPTIONS[corruption]


def corrupt_image(image, corruption: str, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply one corruption at one severity to one image.

    Parameters
    ----------
    image : PIL.Image.Image or ndarray of shape (H, W, 3), uint8
        Converted to RGB.
    corruption : str
        A key of :data:`CORRUPTIONS`.
    severity : int
        1 to 5.
    rng : numpy.random.Generator, optional
        The image's generator (see :func:`image_rng`); a fresh ``default_rng(0)`` when None.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        The same size as the input; values truncated to uint8 as the reference does.
    """
    spec = _check_choice(corruption, severity)
    if isinstance(image, Image.Image):
        x = np.asarray(image.convert("RGB"))
    else:
        x = np.asarray(image)
        if x.ndim == 2:
            x = np.repeat(x[:, :, None], 3, axis=2)
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype != np.uint8:
            raise InvalidParameterError(
                f"image has shape {x.shape} and dtype {x.dtype}; pass an (H, W, 3) uint8 array or a PIL image",
                param="image",
            )
    x = np.ascontiguousarray(x)
    out = spec.apply(x, spec.levels[severity - 1], rng if rng is not None else np.random.default_rng(0))
    return np.uint8(np.asarray(out))


# --------------------------------------------------------------------------- folders


@dataclass
class CorruptionReport:
    """What :func:`corrupt_folder` wrote.

    Attributes
    ----------
    output : Path
    manifest : dict
        The content of ``manifest.json``.
    written : int
        Image files written.
    """

    output: Path
    manifest: dict
    written: int = 0


def _relative_name(key: str, split: str, class_name: str) -> str:
    """The output path of an image inside its class folder: its source path below the class folder, as PNG."""
    parts = list(Path(key.replace("#", "-")).parts)
    if len(parts) > 2 and parts[0] == split and parts[1] == class_name:
        parts = parts[2:]
    elif len(parts) > 1 and parts[0] == class_name:
        parts = parts[1:]
    return str(Path(*parts).with_suffix(".png").as_posix())


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", optimize=False)


def _corrupt_one(job) -> None:
    """Worker: load one source image, corrupt it at every requested severity, write the PNGs."""
    from clipcache.extract.images import load_image

    path, image_key, targets, seed = job
    image = load_image(path)
    for corruption, severity, path in targets:
        rng = image_rng(seed, corruption, severity, image_key)
        _write_png(Path(path), corrupt_image(image, corruption, severity, rng))


def _parse_choices(corruptions, severities) -> tuple[list[str], list[int]]:
    names = list(CORRUPTIONS) if corruptions is None else list(dict.fromkeys(corruptions))
    levels = list(SEVERITIES) if severities is None else sorted(set(int(s) for s in severities))
    if not names:
        raise InvalidParameterError("corruptions is empty; name at least one corruption", param="corruptions")
    if not levels:
        raise InvalidParameterError("severities is empty; give at least one severity from 1 to 5", param="severities")
    for name in names:
        for level in levels:
            _check_choice(name, level)
    return names, levels


def _source_split(source: Path, split: str | None):
    from clipcache.extract.datasets import open_dataset

    dataset = open_dataset(source)
    if dataset.kind != "imagefolder":
        raise DatasetError(f"{source}: not an ImageFolder tree; corrupt a folder of class folders of images")
    if split is None:
        if len(dataset.splits) != 1:
            raise InvalidParameterError(
                f"{source} holds the splits {', '.join(dataset.splits)}; choose one with split", param="split"
            )
        split = next(iter(dataset.splits))
    if split not in dataset.splits:
        raise InvalidParameterError(
            f"{source} has no split {split!r} (it has: {', '.join(dataset.splits)})", param="split"
        )
    return dataset, dataset.splits[split]


def _prepare_output(output: Path, splits: Iterable[str], overwrite: bool) -> None:
    existing = [s for s in [MANIFEST, CSV_MANIFEST, *splits] if (output / s).exists()]
    if existing and not overwrite:
        raise DatasetError(
            f"{output}: already holds {existing[0]}; choose another output folder or overwrite it",
            param="overwrite",
        )
    for name in existing:
        target = output / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    output.mkdir(parents=True, exist_ok=True)


def corrupt_folder(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    seed: int = 0,
    split: str | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CorruptionReport:
    """Write corrupted copies of the images of an ImageFolder tree, one split per (corruption, severity).

    Parameters
    ----------
    source : str or PathLike
        An ImageFolder tree: class folders of images, optionally inside split folders
        (``train``, ``test`` ...).
    output : str or PathLike
        The folder to write: ``test-<corruption>-<severity>/<class>/<name>.png`` for each
        image, ``manifest.json`` and ``images.csv``.
    corruptions : sequence of str, optional
        Keys of :data:`CORRUPTIONS`; all 14 by default.
    severities : sequence of int, optional
        From 1 to 5; all five by default.
    seed : int, default=0
        With the corruption, severity and image key, it seeds each image's generator.
    split : str, optional
        The source split to corrupt, when ``source`` has split folders (e.g. ``"test"``).
    workers : int, default=0
        Worker processes (0 runs in this process); the files do not depend on it.
    overwrite : bool, default=False
        Replace the manifests and split folders of an earlier run in ``output``.
    progress : callable, optional
        Called with the number of source images done after each image.

    Returns
    -------
    CorruptionReport

    Raises
    ------
    InvalidParameterError
        Unknown corruption, severity outside 1 to 5, or no single split to corrupt.
    DatasetError
        ``source`` is not an ImageFolder tree, or ``output`` holds an earlier run and
        ``overwrite`` is False.
    """
    names, levels = _parse_choices(corruptions, severities)
    if int(workers) < 0:
        raise InvalidParameterError(f"workers={workers} must be 0 or more", param="workers")
    source, output = Path(source), Path(output)
    dataset, src = _source_split(source, split)
    pairs = [(name, level) for name in names for level in levels]
    _prepare_output(output, [split_name(n, s) for n, s in pairs], overwrite)
    rows, jobs = [], []
    for key, label in zip(src.keys, src.labels.tolist(), strict=True):
        class_name = dataset.classes[label]
        relative = f"{class_name}/{_relative_name(key, src.name, class_name)}"
        targets = []
        for name, level in pairs:
            path = f"{split_name(name, level)}/{relative}"
            targets.append((name, level, str(output / path)))
            rows.append((path, class_name, split_name(name, level)))
        jobs.append((str(src.root / key), relative, targets, int(seed)))
    _run_jobs(jobs, int(workers), progress)
    manifest = _manifest(source, dataset, src, pairs, int(seed), len(jobs))
    with atomic_output(output / CSV_MANIFEST) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows(sorted(rows, key=lambda r: (r[2], r[0])))
    with atomic_output(output / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return CorruptionReport(output, manifest, len(jobs) * len(pairs))


def _run_jobs(jobs: list, workers: int, progress) -> None:
    if workers == 0:
        for done, job in enumerate(jobs, start=1):
            _corrupt_one(job)
            if progress:
                progress(done)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(_corrupt_one, jobs, chunksize=16), start=1):
            if progress:
                progress(done)


def _manifest(source: Path, dataset, src, pairs, seed: int, n_images: int) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "clipcache_version": __version__,
        "reference": REFERENCE,
        "source": str(source.resolve()),
        "source_split": src.name,
        "classes": list(dataset.classes),
        "seed": seed,
        "rng": "numpy PCG64 seeded per image by SHA-256 of (seed, corruption, severity, class/file)",
        "n_images": n_images,
        "splits": [
            {
                "split": split_name(name, level),
                "corruption": name,
                "severity": level,
                "parameters": CORRUPTIONS[name].parameters(level),
                "files": n_images,
            }
            for name, level in pairs
        ],
    }

"""CIFAR-10-C-style corruptions: deterministic under the seed, same size, stronger with severity, recorded."""

import csv
import hashlib
import json

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from clipcache.corrupt import (
    CORRUPTIONS,
    CSV_MANIFEST,
    MANIFEST,
    corrupt_folder,
    corrupt_image,
    image_rng,
    split_name,
)
from clipcache.errors import DatasetError, InvalidParameterError

#: Corruptions whose mean absolute change rises with every severity step on natural-looking images.
#: glass_blur's severity 3 blurs (sigma 0.4) what severity 2 shuffles less; saturate's severities 1-2
#: desaturate while 3-5 saturate; fog draws a new random fractal per severity and rescales the image by
#: max / (max + strength), so one image's change can fall from severity 4 to 5. None is monotone by its
#: parameters.
NOT_MONOTONE = {"glass_blur", "saturate", "fog"}


def _image(seed: int, size=(32, 32)) -> np.ndarray:
    """A smooth, colourful, natural-looking test image (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size[0], size[1], 3))
    smooth = scipy.ndimage.gaussian_filter(noise, sigma=(3, 3, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.uint8(30 + 190 * smooth)


def _mad(a, b) -> float:
    return float(np.mean(np.abs(a.astype(float) - b.astype(float))))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_pixels_other_seed_other_noise(name):
    x = _image(0)
    a = corrupt_image(x, name, 3, image_rng(7, name, 3, "cat/1.png"))
    b = corrupt_image(x, name, 3, image_rng(7, name, 3, "cat/1.png"))
    np.testing.assert_array_equal(a, b)
    c = corrupt_image(x, name, 3, image_rng(8, name, 3, "cat/1.png"))
    assert np.array_equal(a, c) != CORRUPTIONS[name].random


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_output_has_the_input_size_and_changes_the_image(name, size):
    x = _image(1, size)
    for severity in (1, 5):
        out = corrupt_image(Image.fromarray(x), name, severity, image_rng(0, name, severity, "k"))
        assert out.shape == x.shape and out.dtype == np.uint8
        assert _mad(out, x) > 0.1


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_five_changes_more_than_severity_one(name):
    for seed in range(3):
        x = _image(seed)
        diffs = [_mad(corrupt_image(x, name, s, image_rng(0, name, s, str(seed))), x) for s in range(1, 6)]
        assert diffs[4] > diffs[0]
        if name not in NOT_MONOTONE:
            assert all(later > earlier for earlier, later in zip(diffs[:-1], diffs[1:], strict=True)), (name, diffs)


def test_reference_formulas_of_the_deterministic_corruptions():
    x = _image(4)
    u = x.astype(float) / 255
    m = u.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_array_equal(corrupt_image(x, "contrast", 2), np.uint8(np.clip((u - m) * 0.5 + m, 0, 1) * 255))
    blurred = scipy.ndimage.gaussian_filter(u, sigma=(1.0, 1.0, 0), mode="nearest", truncate=4.0)
    np.testing.assert_array_equal(corrupt_image(x, "gaussian_blur", 5), np.uint8(np.clip(blurred, 0, 1) * 255))
    small = Image.fromarray(x).resize((int(32 * 0.65), int(32 * 0.65)), Image.BOX)
    np.testing.assert_array_equal(corrupt_image(x, "pixelate", 5), np.asarray(small.resize((32, 32), Image.BOX)))


def test_gaussian_noise_has_the_reference_sigma():
    x = np.full((200, 200, 3), 128, dtype=np.uint8)
    out = corrupt_image(x, "gaussian_noise", 5, image_rng(0, "gaussian_noise", 5, "flat"))
    assert np.std(out.astype(float) / 255) == pytest.approx(0.10, rel=0.03)


def test_brightness_and_saturate_round_trip_through_hsv():
    x = _image(5)
    # A zero shift must give the image back (the HSV conversion round trip), up to uint8 truncation.
    from clipcache.corrupt import _hsv2rgb, _rgb2hsv

    u = x.astype(float) / 255
    np.testing.assert_allclose(_hsv2rgb(_rgb2hsv(u)), u, atol=1e-12)
    grey = corrupt_image(np.stack([x[..., 0]] * 3, axis=-1), "saturate", 2)
    assert np.abs(grey.astype(int) - x[..., :1].astype(int)).max() <= 1  # no hue, nothing to saturate


def test_unknown_corruption_or_severity_is_a_parameter_error():
    with pytest.raises(InvalidParameterError) as info:
        corrupt_image(_image(0), "motion_blur", 1)
    assert info.value.param == "corruptions" and "gaussian_noise" in str(info.value)
    with pytest.raises(InvalidParameterError) as info:
        corrupt_image(_image(0), "fog", 6)
    assert info.value.param == "severities"


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src" / "test"
    for c, name in enumerate(["cat", "dog"]):
        (src / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_image(10 * c + i)).save(src / name / f"{i:04d}.jpg", quality=95)
    return tmp_path / "src"


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_folder_is_byte_identical_across_runs_and_workers(folder, tmp_path):
    options = {"corruptions": ["shot_noise", "fog", "jpeg_compression"], "severities": [1, 5], "seed": 3, "split": "test"}
    corrupt_folder(folder, tmp_path / "a", **options)
    corrupt_folder(folder, tmp_path / "b", **options, workers=2)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and len(a) == 3 * 2 * 6
    corrupt_folder(folder, tmp_path / "c", **{**options, "seed": 4})
    c = _digests(tmp_path / "c")
    changed = {k for k in a if a[k] != c[k]}
    assert {k.split("/")[0] for k in changed} == {"test-shot_noise-1", "test-shot_noise-5", "test-fog-1", "test-fog-5"}


def test_folder_layout_sizes_and_manifests(folder, tmp_path):
    out = tmp_path / "out"
    report = corrupt_folder(folder, out, corruptions=["contrast", "glass_blur"], severities=[2, 4], seed=1, split="test")
    assert report.written == 2 * 2 * 6
    png = out / "test-glass_blur-4" / "dog" / "0002.png"
    with Image.open(png) as im:
        assert im.size == (32, 32) and im.format == "PNG" and im.mode == "RGB"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["seed"] == 1 and manifest["n_images"] == 6 and manifest["source_split"] == "test"
    assert manifest["source"] == str(folder.resolve()) and manifest["classes"] == ["cat", "dog"]
    assert [(s["split"], s["corruption"], s["severity"], s["files"]) for s in manifest["splits"]] == [
        ("test-contrast-2", "contrast", 2, 6), ("test-contrast-4", "contrast", 4, 6),
        ("test-glass_blur-2", "glass_blur", 2, 6), ("test-glass_blur-4", "glass_blur", 4, 6),
    ]
    assert manifest["splits"][3]["parameters"] == {"sigma": 0.25, "max_delta": 1, "iterations": 2}
    with open(out / CSV_MANIFEST, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and rows[0] == {"path": "test-contrast-2/cat/0000.png", "label": "cat", "split": "test-contrast-2"}
    assert all((out / r["path"]).is_file() for r in rows)


def test_csv_manifest_opens_as_one_split_per_copy(folder, tmp_path):
    from clipcache.extract.datasets import open_dataset

    out = tmp_path / "out"
    corrupt_folder(folder, out, corruptions=["fog"], severities=[1, 2], split="test")
    dataset = open_dataset(out / CSV_MANIFEST)
    assert list(dataset.splits) == [split_name("fog", 1), split_name("fog", 2)]
    assert dataset.classes == ["cat", "dog"] and len(dataset.splits["test-fog-2"]) == 6
    assert np.asarray(dataset.splits["test-fog-1"].load(0)).shape == (32, 32, 3)


def test_existing_output_needs_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    corrupt_folder(folder, out, corruptions=["fog"], severities=[1], split="test")
    with pytest.raises(DatasetError, match="choose another output folder or overwrite it"):
        corrupt_folder(folder, out, corruptions=["fog"], severities=[1], split="test")
    corrupt_folder(folder, out, corruptions=["brightness"], severities=[3], split="test", overwrite=True)
    assert not (out / "test-fog-1").exists() or (out / "test-brightness-3").is_dir()
    assert json.loads((out / MANIFEST).read_text())["splits"][0]["split"] == "test-brightness-3"


def test_source_with_several_splits_needs_a_split(folder, tmp_path):
    (folder / "train" / "cat").mkdir(parents=True)
    Image.fromarray(_image(0)).save(folder / "train" / "cat" / "x.png")
    with pytest.raises(InvalidParameterError) as info:
        corrupt_folder(folder, tmp_path / "out", corruptions=["fog"], severities=[1])
    assert info.value.param == "split"

"""Bad inputs to extract and demo-data: one line naming what is wrong, before a store or an image is written;
and no image stored twice under two labels (symbolic-link cycles, links between classes, repeated manifest rows).
"""

from __future__ import annotations

import logging
import os

import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.errors import DatasetError
from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from tests.extract.conftest import write_image_folder


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images", {"train": 3, "test": 2})


def _extract(source, store, *more):
    args = ["extract", str(source), str(store), "--model", "clipcache-tiny-vit", "--pretrained", "none", "--workers", "0",
            *map(str, more)]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "-3"], "Error: image_size -3 must be a positive number of pixels (--image-size)"),
        (["--val-per-class", "-2", "--max-per-class", "train=2"], "Error: val_per_class -2 must be 0 or more (--val-per-class)"),
        (["--seed", "-1"], "Error: seed -1 must be 0 or more (--seed)"),
    ],
)
def test_a_bad_number_is_one_line_before_a_store_is_made(tmp_path, folder, flags, message):
    result = _extract(folder, tmp_path / "s.h5", *flags)
    assert result.exit_code == 1
    assert result.output.splitlines() == [message]
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("flag", ["--train-per-class", "--test-per-class"])
def test_demo_data_refuses_a_negative_count(tmp_path, flag):
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "d"), flag, "-3"])
    assert result.exit_code == 1
    param = flag.lstrip("-").replace("-", "_")
    assert result.output.splitlines() == [f"Error: {param} must be a whole number of images, 0 or more, not -3 ({flag})"]
    assert not (tmp_path / "d").exists()


def test_a_manifest_that_is_not_utf8_names_the_byte(tmp_path, folder):
    manifest = tmp_path / "m.csv"
    data = b"path,label\nimages/train/circle/000.png,circle\nimages/train/square/000.png,squ\xe9re\n"
    manifest.write_bytes(data)
    result = _extract(manifest, tmp_path / "s.h5")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {manifest}: the manifest is not UTF-8: byte 77 (0xe9, line 3) cannot be decoded; save it as UTF-8"
    ]
    assert data.index(b"\xe9") == 77
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"circle\n\xff\n")
    result = _extract(folder, tmp_path / "s.h5", "--classes", classes)
    assert result.output.splitlines() == [
        f"Error: {classes}: the class list is not UTF-8: byte 7 (0xff, line 2) cannot be decoded; save it as UTF-8 (--classes)"
    ]


def test_conflicting_manifest_rows_are_refused_naming_both_lines(tmp_path, folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimages/train/circle/000.png,circle\nimages/train/square/000.png,square\n"
                        "./images/train/circle/000.png,square\n")
    with pytest.raises(DatasetError) as info:
        open_dataset(manifest)
    assert str(info.value) == (
        f"{manifest}, lines 2 and 4: './images/train/circle/000.png' is labelled 'circle' and 'square'; "
        "keep the line with the right label"
    )


def test_an_exact_repeat_of_a_manifest_row_is_stored_once(tmp_path, folder, caplog):
    manifest = tmp_path / "m.csv"
    rows = ["images/train/circle/000.png,circle", "images/train/square/000.png,square", "images/train/circle/001.png,circle"]
    manifest.write_text("path,label\n" + "\n".join([*rows, rows[0], rows[1]]) + "\n")
    with caplog.at_level(logging.WARNING):
        dataset = open_dataset(manifest)
    assert dataset.splits["train"].keys == [r.split(",")[0] for r in rows]
    assert dataset.splits["train"].labels.tolist() == [0, 1, 0]
    assert "2 lines repeat an earlier one and are skipped (line 5 repeats line 2)" in caplog.text


def test_a_symlink_loop_stores_no_image_twice(tmp_path, folder, caplog):
    """``ln -s .. folder/cat/loop``: the loop leads back to the classes' folder; each image is stored once, rightly labelled."""
    (folder / "train" / "circle" / "loop").symlink_to("..")
    with caplog.at_level(logging.WARNING):
        dataset = open_dataset(folder)
    assert "train/circle/loop: skipped, a link back to" in caplog.text
    train = dataset.splits["train"]
    assert train.keys == [f"train/{c}/{i:03d}.png" for c in ("circle", "square") for i in range(3)]
    store = tmp_path / "s.h5"
    extract(store, ExtractConfig(source=str(folder), model="clipcache-tiny-vit", pretrained="none", splits=("train",)),
            RunOptions(progress=False))
    with FeatureStore(store) as fs:
        assert list(fs.ids("train")) == train.keys and fs.labels("train").tolist() == [0, 0, 0, 1, 1, 1]


def test_a_file_reachable_under_two_classes_is_refused_naming_both(tmp_path, folder):
    (folder / "train" / "circle" / "more").symlink_to(os.path.join("..", "square"))
    with pytest.raises(DatasetError) as info:
        open_dataset(folder)
    assert str(info.value) == (
        f"{folder}: train/circle/more/000.png (class 'circle') and train/square/000.png (class 'square') are the same "
        "file; remove the link so that each image has one class"
    )


def test_the_same_file_twice_in_one_class_is_kept_once(tmp_path, folder):
    os.link(folder / "train" / "circle" / "001.png", folder / "train" / "circle" / "003.png")  # a hard link
    keys = open_dataset(folder).splits["train"].keys
    assert keys == [f"train/circle/{i:03d}.png" for i in range(3)] + [f"train/square/{i:03d}.png" for i in range(3)]


def test_a_link_to_nothing_is_listed_and_recorded_as_unreadable(tmp_path, folder):
    """A dangling link named like an image is one unreadable sample (recorded with its reason), not an error that
    stops the listing."""
    (folder / "train" / "circle" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    train = open_dataset(folder).splits["train"]
    assert train.keys == [f"train/{c}/{i:03d}.png" for c in ("circle",) for i in range(3)] + ["train/circle/gone.png"] + [
        f"train/square/{i:03d}.png" for i in range(3)]
    store = tmp_path / "s.h5"
    extract(store, ExtractConfig(source=str(folder), model="clipcache-tiny-vit", pretrained="none", splits=("train",)),
            RunOptions(progress=False))
    with FeatureStore(store) as fs:
        assert fs.n_rows("train") == 6 and "train/circle/gone.png" not in list(fs.ids("train"))
        [(key, path, reason)] = fs.skipped("train")
        assert key == path == "train/circle/gone.png" and "No such file or directory" in reason

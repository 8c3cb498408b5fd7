"""Dataset sources (ImageFolder, manifests, idx), image-mode conversion, sample selection."""

from __future__ import annotations

import gzip
import logging
import os
import struct

import numpy as np
import pytest
from PIL import Image

from clipcache.errors import DatasetError, InvalidParameterError
from clipcache.extract.datasets import open_dataset, read_idx
from clipcache.extract.images import load_image, to_rgb
from clipcache.extract.plan import build_plans, first_per_class, select_samples


def test_image_folder_with_split_folders(image_folder):
    ds = open_dataset(image_folder)
    assert ds.classes == ["circle", "square"]
    assert list(ds.splits) == ["test", "train"]
    train = ds.splits["train"]
    assert len(train) == 12 and train.keys[0] == "train/circle/000.png"
    assert train.labels.tolist() == [0] * 6 + [1] * 6


def test_image_folder_without_split_folders(tmp_path):
    for cls in ("b", "a"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "x.png")
    ds = open_dataset(tmp_path)
    assert list(ds.splits) == ["train"] and ds.classes == ["a", "b"]


def test_csv_manifest_with_split_column(image_folder):
    manifest = image_folder / "list.csv"
    manifest.write_text(
        "path,label,split\ntrain/circle/000.png,circle,train\ntrain/square/000.png,square,val\n"
        "test/square/001.png,square,train\n"
    )
    ds = open_dataset(manifest)
    assert ds.classes == ["circle", "square"]
    assert ds.splits["train"].keys == ["train/circle/000.png", "test/square/001.png"]
    assert ds.splits["val"].labels.tolist() == [1]
    assert ds.splits["train"].load(1).size == (40, 40)


def test_tsv_manifest_without_split_column(image_folder):
    manifest = image_folder / "list.tsv"
    manifest.write_text("path\tlabel\ntrain/circle/000.png\tcircle\n")
    ds = open_dataset(manifest)
    assert list(ds.splits) == ["train"] and len(ds.splits["train"]) == 1


def test_manifest_without_label_column_is_rejected(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,cls\na.png,x\n")
    with pytest.raises(DatasetError, match="label"):
        open_dataset(manifest)


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_reads_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1, 0]))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:2])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([2, 2]))
    ds = open_dataset(tmp_path, classes=["a", "b", "c"])
    assert list(ds.splits) == ["train", "test"]
    img = ds.splits["train"].load(3)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 0], images[3])
    assert ds.splits["test"].labels.tolist() == [2, 2]


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def test_grayscale_becomes_three_equal_channels():
    out = to_rgb(Image.new("L", (4, 4), 77))
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [77, 77, 77]


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (10, 20, 30, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    out = np.asarray(to_rgb(img))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]


def test_palette_with_transparency_is_composited():
    img = Image.new("P", (2, 1))
    img.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    out = np.asarray(to_rgb(img))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 200]


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)
    r, g, b = np.asarray(load_image(path))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((3, 3), 32768, dtype=np.uint16)).save(path)
    value = np.asarray(load_image(path))[1, 1, 0]
    assert 126 <= value <= 129


def test_truncated_jpeg_raises_on_load(tmp_path):
    path = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError):
        load_image(path)


def test_first_per_class_keeps_file_order():
    labels = np.array([0, 1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(first_per_class(labels, 0, 2), [0, 1, 2, 4])
    np.testing.assert_array_equal(first_per_class(labels, 2, 3), [3, 5])


def test_val_split_is_carved_after_train_limit(image_folder):
    ds = open_dataset(image_folder)
    chosen = select_samples(ds, max_per_class={"train": 2}, val_per_class=3)
    train_keys = [ds.splits["train"].keys[i] for i in chosen["train"][1]]
    val_keys = [ds.splits["train"].keys[i] for i in chosen["val"][1]]
    assert list(chosen) == ["train", "val", "test"]
    assert len(train_keys) == 4 and len(val_keys) == 6 and not set(train_keys) & set(val_keys)
    assert len(chosen["test"][1]) == 6


def test_val_without_train_limit_is_rejected(image_folder):
    with pytest.raises(InvalidParameterError, match="max_per_class") as info:
        select_samples(open_dataset(image_folder), val_per_class=2)
    assert info.value.param == "max_per_class"


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"listing never decodes")


def test_image_folder_keys_are_the_paths_relative_to_the_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for key in ("train/cat/b.png", "train/cat/a.PNG", "train/cat/sub/deeper/c.jpg", "train/dog/d.png", "test/dog/e.png"):
        _touch(root / key)
    _touch(tmp_path / "elsewhere" / "f.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "elsewhere", root / "train" / "dog" / "linked")
    expected = ["train/cat/a.PNG", "train/cat/b.png", "train/cat/sub/deeper/c.jpg", "train/dog/d.png", "train/dog/linked/f.png"]
    monkeypatch.chdir(tmp_path)
    for given in (root, "data", "./data/", "data/../data"):
        ds = open_dataset(given)
        assert ds.splits["train"].keys == expected, given
        assert ds.splits["train"].labels.tolist() == [0, 0, 0, 1, 1]
        assert ds.splits["test"].keys == ["test/dog/e.png"]


def test_a_file_twice_in_one_class_is_logged_with_both_paths(tmp_path, caplog):
    _touch(tmp_path / "cat" / "a.png")
    os.link(tmp_path / "cat" / "a.png", tmp_path / "cat" / "b.png")
    with caplog.at_level(logging.WARNING, logger="clipcache.extract.datasets"):
        ds = open_dataset(tmp_path)
    assert ds.splits["train"].keys == ["cat/a.png"]
    assert caplog.messages == [f"{tmp_path / 'cat' / 'b.png'}: skipped, the same file as {tmp_path / 'cat' / 'a.png'}"]


def test_a_link_to_a_file_is_the_same_file_within_a_class_and_refused_across(tmp_path, caplog):
    _touch(tmp_path / "cat" / "a.png")
    _touch(tmp_path / "cat" / "c.png")
    os.symlink("a.png", tmp_path / "cat" / "b.png")
    with caplog.at_level(logging.WARNING, logger="clipcache.extract.datasets"):
        ds = open_dataset(tmp_path)
    assert ds.splits["train"].keys == ["cat/a.png", "cat/c.png"]
    assert caplog.messages == [f"{tmp_path / 'cat' / 'b.png'}: skipped, the same file as {tmp_path / 'cat' / 'a.png'}"]
    (tmp_path / "dog").mkdir()
    os.symlink(os.path.join("..", "cat", "c.png"), tmp_path / "dog" / "d.png")
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: cat/c.png (class 'cat') and dog/d.png (class 'dog') are the same file; "
        "remove the link so that each image has one class"
    )


def test_a_tree_of_plain_files_is_listed_without_a_stat_per_file(tmp_path, monkeypatch):
    """Distinct files are told apart by their directory entries' inode numbers; only names sharing one are stat-ed
    (here the hard link and its target), so that listing a large tree on a network file system stays a directory read."""
    for key in ("train/cat/a.png", "train/cat/b.png", "train/dog/c.png", "train/dog/deep/d.png", "test/cat/e.png"):
        _touch(tmp_path / key)
    os.link(tmp_path / "train" / "cat" / "a.png", tmp_path / "train" / "dog" / "f.png")
    stat, seen = os.stat, []

    def counting_stat(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    with pytest.raises(DatasetError, match="train/cat/a.png .class 'cat'. and train/dog/f.png .class 'dog'. are the same file"):
        open_dataset(tmp_path)
    assert sorted(p for p in seen if p.endswith(".png")) == [str(tmp_path / "train" / "cat" / "a.png"),
                                                             str(tmp_path / "train" / "dog" / "f.png")]
    os.remove(tmp_path / "train" / "dog" / "f.png")
    seen.clear()
    ds = open_dataset(tmp_path)
    assert ds.splits["train"].keys == ["train/cat/a.png", "train/cat/b.png", "train/dog/c.png", "train/dog/deep/d.png"]
    assert [p for p in seen if p.endswith(".png")] == []


def test_plan_keys_labels_and_views_equal_the_per_item_lookup(image_folder):
    ds = open_dataset(image_folder)
    plans = build_plans(select_samples(ds, max_per_class={"train": 4}), views=3, batch_size=5, shard=(1, 2))
    for plan in plans:
        items = np.arange(plan.start, plan.stop)
        samples = [int(plan.samples[i // 3]) for i in items]
        assert plan.keys_of(items).tolist() == [plan.key(int(i)) for i in items] == [plan.source.keys[s] for s in samples]
        assert plan.labels_of(items).tolist() == [int(plan.source.labels[s]) for s in samples]
        assert plan.labels_of(items).dtype == np.int64
        assert plan.views_of(items).tolist() == [int(i) % 3 for i in items]
        assert plan.views_of(items).dtype == np.int16
    assert [len(p.sample_keys) for p in plans] == [8, 6]

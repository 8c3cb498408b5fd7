"""Image sources for extraction: ImageFolder trees, CSV/TSV manifests and idx files.

:func:`open_dataset` reads a path into an :class:`ImageDataset`: the class names, kept
once for the whole dataset, and one :class:`Split` per split. A split lists its samples
in a fixed order, each with a key (the path relative to the dataset root, or the idx
file and row) and an integer label, and decodes sample ``i`` on request. Listing never
decodes an image: a file that cannot be read is found, and recorded, by the extraction
loop that decodes it.

One file is listed once: an ImageFolder walk follows symbolic links but skips
a link back to a folder it is inside (a cycle), and a file reachable under two
classes (by a link, or a hard link) is an error naming both paths. A manifest
row that repeats an earlier one exactly is dropped with a warning; a path given
two labels is an error naming both lines.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipcache.errors import DatasetError
from clipcache.extract.images import load_image, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_FOLDER_NAMES",
    "FileSplit",
    "IdxSplit",
    "ImageDataset",
    "Split",
    "open_dataset",
    "read_class_names",
    "read_idx",
]

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp",
)
"""File suffixes (lower case) that an ImageFolder tree lists as images."""

SPLIT_FOLDER_NAMES = frozenset(
    {"train", "val", "valid", "validation", "test", "support", "query"}
)
"""Top-level folder names that make an ImageFolder tree a tree of splits."""

DEFAULT_SPLIT = "train"

logger = logging.getLogger(__name__)


class Split:
    """One split: an ordered list of samples that can be decoded one at a time.

    Attributes
    ----------
    name : str
        The split name (``train``, ``test``, ...).
    keys : list of str, length N
        Where each sample comes from: a path relative to the dataset root, or
        ``FILE#ROW`` for idx files.
    labels : numpy.ndarray of int64, shape (N,)
        Class index of each sample into :attr:`ImageDataset.classes`.
    """

    name: str
    keys: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> Image.Image:
        """Decode sample ``index`` to an RGB image; raises whatever decoding raises."""
        raise NotImplementedError


class FileSplit(Split):
    """A split whose samples are image files under ``root``."""

    def __init__(self, name: str, root: Path, keys: list[str], labels: np.ndarray):
        self.name = name
        self.root = Path(root)
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        return load_image(self.root / self.keys[index])


class IdxSplit(Split):
    """A split held in memory as decoded idx arrays (Fashion-MNIST, MNIST)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, filename: str):
        """
        Parameters
        ----------
        images : numpy.ndarray of uint8, shape (N, H, W) or (N, H, W, 3)
        labels : numpy.ndarray of int, shape (N,)
        filename : str
            The images file, used in the sample keys.
        """
        self.name = name
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.keys = [f"{filename}#{i}" for i in range(len(images))]

    def load(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.images[index]))


@dataclass
class ImageDataset:
    """Class names and splits read from one dataset path.

    Attributes
    ----------
    classes : list of str
        Class names; a label ``k`` means ``classes[k]``.
    splits : dict of str to Split
        In the order they were found.
    source : str
        The path it was read from, as given.
    kind : str
        ``imagefolder``, ``manifest`` or ``idx``.
    """

    classes: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    source: str = ""
    kind: str = ""

    def describe(self) -> dict:
        """A JSON-able summary for provenance: kind, source and split sizes."""
        return {
            "kind": self.kind,
            "source": self.source,
            "splits": {name: len(split) for name, split in self.splits.items()},
        }


def open_dataset(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    default_split: str = DEFAULT_SPLIT,
) -> ImageDataset:
    """Read a dataset's listing: an ImageFolder tree, a CSV/TSV manifest, or idx files.

    Parameters
    ----------
    path : str or os.PathLike
        A folder (ImageFolder tree, with or without split folders, or a folder of idx
        files) or a ``.csv`` / ``.tsv`` manifest with columns ``path``, ``label`` and
        optionally ``split``.
    classes : sequence of str, optional
        Class names in label order. Without it, ImageFolder and manifest classes are
        their sorted names (numerically sorted when every label is an integer), and idx
        classes are ``"0"``, ``"1"``, ...
    default_split : str
        Name of the one split of a source that has no split folders or column.

    Raises
    ------
    DatasetError
        The path does not exist, is not one of the three layouts, or names a label
        that ``classes`` does not have.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise DatasetError("the class list names a class twice; class names must be unique", param="classes")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv", ".tab"):
            return _open_manifest(path, classes, default_split)
        raise DatasetError(
            f"{path}: not a dataset; give a folder (ImageFolder or idx files) "
            "or a .csv/.tsv manifest"
        )
    if _idx_pairs(path):
        return _open_idx(path, classes)
    return _open_image_folder(path, classes, default_split)


def read_class_names(value: str) -> list[str]:
    """Read class names from a file (one per line) or a comma-separated list."""
    candidate = Path(value)
    if candidate.is_file():
        names = [line.strip() for line in _read_utf8(candidate, "class list", "classes").splitlines()]
        names = [name for name in names if name]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise DatasetError(f"{value}: no class names in it", param="classes")
    return names


# -- ImageFolder ------------------------------------------------------------------------


def _read_utf8(path: Path, what: str, param: str | None = None) -> str:
    """The text of ``path``; DatasetError naming the byte offset and line when it is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc.strerror})", param=param) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(
            f"{path}: the {what} is not UTF-8: byte {exc.start} (0x{data[exc.start]:02x}, line {line}) "
            "cannot be decoded; save it as UTF-8",
            param=param,
        ) from None


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(folder: Path, root: Path) -> tuple[list[str], list[int | None]]:
    """The image files under ``folder``, in walk order, following links to folders but never round a cycle.

    The walk is ``os.walk(folder, followlinks=True)``'s, top down, with the
    folders and files of each folder sorted by name and hidden ones left out. It
    reads each folder once (``os.scandir``) and calls ``stat`` for no file but a
    symbolic link.

    Returns
    -------
    keys : list of str
        Each file's path relative to ``root``, with ``/`` separators (the key
        ``Path.relative_to(root).as_posix()`` gives), made once per folder, not per file.
    inodes : list of int or None
        Each file's inode number, for :func:`_unique_files`: its directory entry's,
        or for a link, its target's (None for a link to nothing).
    """
    keys: list[str] = []
    inodes: list[int | None] = []
    visited = {os.path.realpath(folder)}
    stack = [os.fspath(folder)]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:  # as os.walk: a folder that cannot be listed is left out
            continue
        here = os.path.realpath(dirpath)
        kept = []
        prefix = _key_prefix(Path(dirpath), root)
        for entry in entries:
            if _is_dir(entry):
                target = os.path.realpath(entry.path)
                if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                    logger.warning("%s: skipped, a link back to %s, a folder it is in (a cycle)", Path(entry.path), target)
                elif target in visited:
                    logger.warning("%s: skipped, a link to %s, which is listed already", Path(entry.path), target)
                else:
                    visited.add(target)
                    kept.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                keys.append(prefix + entry.name)
                inodes.append(_inode(entry))
        stack.extend(reversed(kept))  # the first subfolder is walked next, and whole, as os.walk does
    return keys, inodes


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder or a link to one (False when that cannot be told, as ``os.walk`` does)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _inode(entry: os.DirEntry) -> int | None:
    """The inode number of the file ``entry`` names: the directory entry's (no ``stat``), or a link's target's."""
    try:
        if not entry.is_symlink():
            return entry.inode()
        return entry.stat().st_ino
    except OSError:  # a link to nothing: listed, and recorded as unreadable by the extraction
        return None


def _key_prefix(folder: Path, root: Path) -> str:
    """What the key of a file in ``folder`` starts with: its path relative to ``root`` and a ``/`` (nothing for ``root``)."""
    relative = folder.relative_to(root).as_posix()
    return "" if relative == "." else relative + "/"


def _unique_files(root: Path, listing: dict[str, tuple[list[str], list[int | None]]]) -> dict[str, list[str]]:
    """``listing`` (class -> keys and inode numbers, :func:`_list_images`) with every file once: a repeat within a
    class is dropped, across classes refused.

    Two names of one file (hard links, or a link and its target) share an inode
    number, so only the files whose number is listed more than once are
    ``stat``-ed, to compare their devices and inodes; the others are all distinct.
    """
    counts = collections.Counter(n for _, inodes in listing.values() for n in inodes if n is not None)
    owner: dict[tuple[int, int], tuple[str, str]] = {}
    unique: dict[str, list[str]] = {}
    top = os.fspath(root)
    for class_name, (keys, inodes) in listing.items():
        kept = unique.setdefault(class_name, [])
        for key, inode in zip(keys, inodes, strict=True):
            if inode is None or counts[inode] == 1:
                kept.append(key)
                continue
            try:
                st = os.stat(os.path.join(top, key))
            except OSError:  # gone since it was listed: the extraction records it as unreadable
                kept.append(key)
                continue
            first = owner.setdefault((st.st_dev, st.st_ino), (class_name, key))
            if first[1] == key:
                kept.append(key)
            elif first[0] == class_name:
                logger.warning("%s: skipped, the same file as %s", root / key, root / first[1])
            else:
                raise DatasetError(
                    f"{root}: {first[1]} (class {first[0]!r}) and {key} (class {class_name!r}) are the same file; "
                    "remove the link so that each image has one class"
                )
    return unique


def _open_image_folder(root: Path, classes, default_split: str) -> ImageDataset:
    subdirs = _visible_dirs(root)
    split_like = [d for d in subdirs if d.name.lower() in SPLIT_FOLDER_NAMES]
    if split_like and len(split_like) != len(subdirs):
        others = ", ".join(d.name for d in subdirs if d not in split_like)
        raise DatasetError(
            f"{root}: mixes split folders ({', '.join(d.name for d in split_like)}) with "
            f"other folders ({others}); put every class folder inside a split folder"
        )
    split_roots = {d.name: d for d in split_like} if split_like else {default_split: root}

    per_split = {name: _unique_files(root, {d.name: _list_images(d, root) for d in _visible_dirs(folder)})
                 for name, folder in split_roots.items()}
    found_classes = sorted({c for listing in per_split.values() for c, files in listing.items()
                            if files})
    if not found_classes:
        raise DatasetError(
            f"{root}: no images found; an ImageFolder tree holds one folder per class "
            f"(optionally inside split folders), with files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    names = _class_index(found_classes, classes, f"{root}")
    dataset = ImageDataset(classes=names, source=str(root), kind="imagefolder")
    for split_name, listing in per_split.items():
        keys, labels = [], []
        for label, class_name in enumerate(names):
            files = listing.get(class_name, ())
            keys.extend(files)
            labels.extend([label] * len(files))
        if keys:
            dataset.splits[split_name] = FileSplit(split_name, root, keys, np.array(labels))
    return dataset


def _class_index(found: list[str], classes, where: str) -> list[str]:
    if classes is None:
        return found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DatasetError(
            f"{where}: classes {', '.join(map(repr, unknown[:5]))} are not in the given class list"
        )
    return classes


# -- manifests --------------------------------------------------------------------------


def _open_manifest(path: Path, classes, default_split: str) -> ImageDataset:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.DictReader(io.StringIO(_read_utf8(path, "manifest"), newline=""), delimiter=delimiter)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DatasetError(
            f"{path}: the manifest has no {' or '.join(map(repr, missing))} column; "
            "its header must name 'path', 'label' and optionally 'split'"
        )
    rows = []
    seen: dict[str, tuple[int, str, str]] = {}
    repeats = []
    for row in reader:
        line = reader.line_num
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row.get("path") or not row.get("label"):
            raise DatasetError(f"{path}, line {line}: empty path or label")
        split, key, label = row.get("split") or default_split, row["path"], row["label"]
        first = seen.setdefault(os.path.normpath(key), (line, split, label))
        if first[0] != line:
            if first[2] != label:
                raise DatasetError(
                    f"{path}, lines {first[0]} and {line}: {key!r} is labelled {first[2]!r} and {label!r}; "
                    "keep the line with the right label"
                )
            if first[1] == split:
                repeats.append((first[0], line))
                continue
        rows.append((split, key, label))
    if repeats:
        logger.warning(
            "%s: %d lines repeat an earlier one and are skipped (line %d repeats line %d)", path, len(repeats), *repeats[0][::-1]
        )
    if not rows:
        raise DatasetError(f"{path}: the manifest lists no images")

    found = sorted({label for _, _, label in rows})
    if classes is None and all(_is_int(label) for label in found):
        found = sorted(found, key=int)
    names = _class_index(found, classes, str(path))
    index = {name: i for i, name in enumerate(names)}

    dataset = ImageDataset(classes=names, source=str(path), kind="manifest")
    grouped: dict[str, tuple[list[str], list[int]]] = {}
    for split_name, key, label in rows:
        keys, labels = grouped.setdefault(split_name, ([], []))
        keys.append(key)
        labels.append(index[label])
    for split_name, (keys, labels) in grouped.items():
        dataset.splits[split_name] = FileSplit(split_name, path.parent, keys, np.array(labels))
    return dataset


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# -- idx (MNIST, Fashion-MNIST) ---------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into an array.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    numpy.ndarray
        The shape and dtype the file's header declares, e.g. ``(60000, 28, 28)`` uint8.

    Raises
    ------
    DatasetError
        The header is not an idx header, or the file is shorter than it declares.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read idx file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header < expected:
        raise DatasetError(f"{path}: truncated idx file ({len(data) - header} of {expected} bytes)")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)


def _idx_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Map split name to (images, labels) files for the idx pairs in ``folder``."""
    pairs = {}
    for images in sorted(folder.glob("*-images-idx3-ubyte*")):
        prefix, _, suffix = images.name.partition("-images-idx3-ubyte")
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if labels.is_file() and suffix in ("", ".gz"):
            pairs["test" if prefix == "t10k" else prefix] = (images, labels)
    return pairs


def _open_idx(folder: Path, classes) -> ImageDataset:
    pairs = _idx_pairs(folder)
    loaded = {name: (read_idx(img), read_idx(lab), img.name) for name, (img, lab) in pairs.items()}
    for name, (images, labels, _) in loaded.items():
        if len(images) != len(labels):
            raise DatasetError(
                f"{folder}: split {name!r} has {len(images)} images but {len(labels)} labels"
            )
    top = max(int(labels.max(initial=0)) for _, labels, _ in loaded.values())
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    elif top >= len(classes):
        raise DatasetError(
            f"{folder}: labels go up to {top} but the class list has {len(classes)} names"
        )
    dataset = ImageDataset(classes=list(classes), source=str(folder), kind="idx")
    order = sorted(loaded, key=lambda n: (n != "train", n))
    for name in order:
        images, labels, filename = loaded[name]
        dataset.splits[name] = IdxSplit(name, images, labels, filename)
    return dataset

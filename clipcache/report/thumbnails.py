"""Thumbnails of stored samples, embedded in a page as small JPEG data URIs.

A store holds each sample's path (or key) relative to the dataset it was
extracted from; :func:`dataset_root` finds that dataset in the store's metadata.
:class:`Thumbnails` opens the image behind a path, shrinks it to at most
``size`` pixels on its longest side and encodes it as a JPEG. A missing or
unreadable file, or one beyond the bound on the number of thumbnails, becomes a
placeholder with a note; it never raises.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipcache.errors import ClipCacheError
from clipcache.feature_store.schema import METADATA_EXTRACT

__all__ = ["Thumbnail", "Thumbnails", "dataset_root"]

logger = logging.getLogger(__name__)

_MANIFEST_SUFFIXES = (".csv", ".tsv", ".tab")
_JPEG_QUALITY = 85


def dataset_root(store) -> tuple[Path | None, str | None]:
    """The folder that a store's sample paths are relative to, and a note when it cannot be used.

    The extraction's ``source`` (metadata ``extract``) is tried first, then a
    feature set's ``dataset`` provenance. A manifest's paths are relative to the
    manifest's folder; an ImageFolder tree's and an idx folder's to the folder itself.

    Parameters
    ----------
    store : FeatureStore

    Returns
    -------
    root : Path or None
    note : str or None
        Why there is no usable root (None when there is one).
    """
    source = (store.metadata.get(METADATA_EXTRACT) or {}).get("source")
    if not source:
        source = next((i.provenance.get("dataset") for i in store.feature_sets.values() if i.provenance.get("dataset")), None)
    if not source:
        return None, f"{store.path} records no dataset root, so its images cannot be shown; give image_root"
    path = Path(source)
    root = path.parent if path.suffix.lower() in _MANIFEST_SUFFIXES else path
    if not root.is_dir():
        return None, f"the dataset root {root} recorded in {store.path} is not a folder here; give image_root"
    return root, None


@dataclass(frozen=True)
class Thumbnail:
    """One embedded image, or the reason there is none.

    Attributes
    ----------
    key : str
        The stored path or key.
    uri : str or None
        ``data:image/jpeg;base64,...``; None for a placeholder.
    note : str or None
        Why there is no image (None when ``uri`` is set).
    """

    key: str
    uri: str | None
    note: str | None = None


@dataclass
class Thumbnails:
    """Make thumbnails of the images behind stored paths, at most ``limit`` of them.

    Parameters
    ----------
    root : Path or None
        The dataset root (:func:`dataset_root`); None makes every thumbnail a placeholder.
    size : int
        Longest side in pixels; larger images are shrunk, smaller ones kept.
    limit : int
        Most distinct images encoded; later ones become placeholders.
    root_note : str, optional
        Why ``root`` is None, repeated in every placeholder's note.

    Attributes
    ----------
    missing : dict of str to str
        Key -> reason, for every placeholder given out.
    """

    root: Path | None
    size: int = 64
    limit: int = 200
    root_note: str | None = None
    missing: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)
    _idx: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_store(cls, store, *, image_root: str | os.PathLike | None = None, size: int = 64, limit: int = 200) -> Thumbnails:
        """Thumbnails of ``store``'s samples, under ``image_root`` or the recorded dataset root."""
        if image_root is not None:
            root, note = Path(image_root), None
            if not root.is_dir():
                root, note = None, f"image_root {image_root} is not a folder"
        else:
            root, note = dataset_root(store)
        return cls(root, size=size, limit=limit, root_note=note)

    @property
    def made(self) -> int:
        """How many distinct images were encoded."""
        return sum(1 for t in self._cache.values() if t.uri is not None)

    def get(self, key: str) -> Thumbnail:
        """The thumbnail of a stored path or key (cached, so a repeated key costs nothing)."""
        key = str(key)
        if key not in self._cache:
            self._cache[key] = self._make(key)
            if self._cache[key].uri is None:
                self.missing[key] = self._cache[key].note
        return self._cache[key]

    def of_file(self, path: str | os.PathLike) -> Thumbnail:
        """The thumbnail of an image file given directly (a query image), not through the dataset root."""
        key = f"file:{os.fspath(path)}"
        if key not in self._cache:
            self._cache[key] = self._encode(key, lambda: _open(Path(path)))
            if self._cache[key].uri is None:
                self.missing[os.fspath(path)] = self._cache[key].note
        return self._cache[key]

    def _make(self, key: str) -> Thumbnail:
        if self.root is None:
            return Thumbnail(key, None, self.root_note or "no dataset root")
        file, sep, row = key.rpartition("#")
        if sep and row.isdigit() and (self.root / file).is_file():
            return self._encode(key, lambda: self._idx_image(self.root / file, int(row)))
        return self._encode(key, lambda: _open(self.root / key))

    def _encode(self, key: str, load) -> Thumbnail:
        if self.made >= self.limit:
            return Thumbnail(key, None, f"beyond the bound of {self.limit} thumbnails")
        try:
            image = load()
            image.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError, ClipCacheError) as exc:
            logger.info("no thumbnail of %s: %s", key, exc)
            reason = "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({type(exc).__name__})"
            return Thumbnail(key, None, reason)
        return Thumbnail(key, "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))

    def _idx_image(self, path: Path, row: int):
        from clipcache.extract.datasets import (
            read_idx,  # clipcache.extract loads torch: only for idx datasets
        )

        if path not in self._idx:
            self._idx[path] = read_idx(path)
        pixels = np.asarray(self._idx[path][row])
        return Image.fromarray(pixels).convert("L" if pixels.ndim == 2 else "RGB")


def _open(path: Path):
    with Image.open(path) as image:
        image.load()
        return image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB")

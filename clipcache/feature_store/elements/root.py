"""The root of a store file: format attributes, the class names and the JSON metadata."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import h5py

from clipcache._version import __version__
from clipcache.errors import StoreFormatError
from clipcache.feature_store import _hdf5, schema

__all__ = ["GROUPS", "check", "read_classes", "read_metadata", "write", "write_classes", "write_metadata"]

#: The groups under the root that hold the elements, by kind.
GROUPS = ("feature_sets", "splits", "text")
_STR = h5py.string_dtype("utf-8")


def write(h5: h5py.File, created: str) -> None:
    """Lay out an empty store in a new file: root attributes, no classes, empty element groups."""
    root = h5.attrs
    root["clipcache_format"] = schema.FORMAT_NAME
    root["format_version"] = schema.FORMAT_VERSION
    root["store_uuid"] = uuid.uuid4().hex
    root["created"] = created
    root["clipcache_version"] = __version__
    root["metadata"] = "{}"
    h5.create_dataset("classes", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(schema.CLASSES_CHUNK_ROWS,))
    for group in GROUPS:
        h5.create_group(group)


def check(path: Path, h5: h5py.File) -> None:
    """Raise unless ``h5`` is a store of a format version this release reads, with every root member."""
    try:
        attrs = dict(h5.attrs)
    except (OSError, RuntimeError) as exc:
        raise _hdf5.describe_open_failure(path, exc) from None
    schema.check_root(path, attrs)
    for member in ("classes", *GROUPS):
        if member not in h5:
            raise StoreFormatError(f"{path}: the store has no '/{member}' element; it is corrupt")


def read_classes(h5: h5py.File) -> list[str]:
    """The class names, indexed by label."""
    return [str(c) for c in h5["classes"].asstr()[:]]


def write_classes(h5: h5py.File, names: Sequence[str]) -> None:
    dset = h5["classes"]
    dset.resize((len(names),))
    dset[:] = list(names)


def read_metadata(h5: h5py.File) -> dict:
    """The JSON object of the root's ``metadata`` attribute."""
    return json.loads(h5.attrs.get("metadata", "{}"))


def write_metadata(h5: h5py.File, metadata: dict) -> None:
    h5.attrs["metadata"] = schema.dump_json(metadata)

"""Names, encodings and versions of the elements of a feature store file.

The layout is specified in ``docs/file-format.md``; keep the two in step.
Every group that holds data carries ``encoding_type`` and ``encoding_version``
attributes, and the root carries the format name and version, so that a reader
can refuse what it does not understand instead of misreading it.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipcache.errors import StoreFormatError, StoreVersionError

FORMAT_NAME = "clipcache.feature_store"
FORMAT_VERSION = 1

#: encoding_type -> newest encoding_version this release reads and writes.
ENCODINGS = {"split": 1, "feature-set": 1, "text-embeddings": 1, "string-column": 1}

#: Provenance keys that identify what produced a feature set. Two feature sets
#: that differ in any of them hold features from different models or
#: preprocessing and must never share a name.
IDENTITY_KEYS = ("backbone", "model", "pretrained", "weights_sha256", "preprocess")
#: The subset of IDENTITY_KEYS that names the network and its weights (not the
#: preprocessing): text embeddings and image features must agree on these.
MODEL_KEYS = ("backbone", "model", "pretrained", "weights_sha256")

#: Target size of one HDF5 chunk of a feature dataset.
FEATURE_CHUNK_BYTES = 4 << 20
#: Rows per chunk of the per-sample columns (ids, paths, labels, views).
COLUMN_CHUNK_ROWS = 4096

STATE_ROWS, STATE_COMPLETE, STATE_SKIPPED = 0, 1, 2
STATE_FIXED = 3  # per-feature-set row counts follow, in the order of attrs["features"]

UPGRADE_HINT = "upgrade clipcache (pip install -U clipcache) to read it"


def check_root(path: Path, attrs) -> None:
    """Raise unless ``attrs`` (the root's) mark a store this release can read."""
    name = attrs.get("clipcache_format")
    if name is None:
        raise StoreFormatError(
            f"{path}: an HDF5 file but not a clipcache feature store (no 'clipcache_format' attribute)"
        )
    if str(name) != FORMAT_NAME:
        raise StoreFormatError(f"{path}: format {name!r} is not {FORMAT_NAME!r}")
    version = int(attrs.get("format_version", -1))
    if version > FORMAT_VERSION or version < 1:
        raise StoreVersionError(
            f"{path}: written in store format version {version}, but this clipcache reads "
            f"versions 1 to {FORMAT_VERSION}; {UPGRADE_HINT}"
        )


def check_element(path: Path, group, expected: str) -> None:
    """Raise unless ``group`` is an element of type ``expected`` at a known version."""
    kind = group.attrs.get("encoding_type")
    if kind is None or str(kind) != expected:
        raise StoreFormatError(f"{path}: {group.name} is not a {expected!r} element (found {kind!r})")
    version = int(group.attrs.get("encoding_version", -1))
    if not 1 <= version <= ENCODINGS[expected]:
        raise StoreVersionError(
            f"{path}: {group.name} is a {expected!r} element of encoding version {version}, but this "
            f"clipcache reads versions 1 to {ENCODINGS[expected]}; {UPGRADE_HINT}"
        )


def mark_element(group, kind: str) -> None:
    group.attrs["encoding_type"] = kind
    group.attrs["encoding_version"] = ENCODINGS[kind]


def dump_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def model_identity(provenance: dict, dim: int) -> dict:
    """What makes two feature sets comparable: the identity keys of the provenance, and the dimension."""
    ident = {key: provenance.get(key) for key in IDENTITY_KEYS}
    ident["dim"] = int(dim)
    return ident


def identity(provenance: dict, dim: int, dtype: str, normalized: bool) -> dict:
    """The part of a feature set's description that must match for rows to be mixed in one store."""
    ident = model_identity(provenance, dim)
    ident.update(dtype=str(dtype), normalized=bool(normalized))
    return ident

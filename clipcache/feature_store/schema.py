"""Names and constants of the feature store format.

The layout is specified in ``docs/file-format.md``; keep the two in step.
Every group that holds data carries ``encoding_type`` and ``encoding_version``
attributes (written only by :mod:`clipcache.feature_store.registry`), and the
root carries the format name and version, so that a reader can refuse what it
does not understand instead of misreading it.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipcache.errors import StoreFormatError, StoreVersionError

__all__ = [
    "CLASSES_CHUNK_ROWS",
    "COLUMN_CHUNK_ROWS",
    "FEATURE_CHUNK_BYTES",
    "FEATURE_SET",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "COMPILED",
    "CPU_DECODE",
    "DECODE",
    "DECODES",
    "DEVICE_RESIZE",
    "DEVICE_RESIZE_PIL",
    "FULL_PRECISION",
    "IDENTITY_KEYS",
    "METADATA_ADDED_SPLITS",
    "METADATA_EXTRACT",
    "METADATA_SHARD",
    "METADATA_SUPPORT_SETS",
    "MODEL_KEYS",
    "PRECISION",
    "PRECISIONS",
    "SKIPPED_CHUNK_ROWS",
    "SPLIT",
    "STATE_CHUNK_ROWS",
    "STATE_COMPLETE",
    "STATE_FIXED",
    "STATE_ROWS",
    "STATE_SKIPPED",
    "STRING_COLUMN",
    "TEXT_EMBEDDINGS",
    "UPGRADE_HINT",
    "check_root",
    "dump_json",
    "identity",
    "model_identity",
    "compiled_of",
    "decode_of",
    "device_resize_of",
    "precision_of",
]

FORMAT_NAME = "clipcache.feature_store"
FORMAT_VERSION = 1

# Encoding types of the elements; their versions live in the registry
# (clipcache.feature_store.elements.REGISTRY).
SPLIT = "split"
FEATURE_SET = "feature-set"
TEXT_EMBEDDINGS = "text-embeddings"
STRING_COLUMN = "string-column"

# Keys of the store's JSON metadata that modules share; docs/file-format.md gives each one's shape.
#: The extraction configuration (``ExtractConfig.to_json()``), checked on resume and merge.
METADATA_EXTRACT = "extract"
#: Metadata key: {split: the ExtractConfig JSON} of the splits added to a store after its extraction.
METADATA_ADDED_SPLITS = "added_splits"
#: Which shard of which items a store holds: ``{"index", "count", "items": {split: [start, stop, total]}}``.
METADATA_SHARD = "shard"
#: How each retrieved support split was made, by split name.
METADATA_SUPPORT_SETS = "support_sets"

#: Provenance keys that identify what produced a feature set. Two feature sets
#: that differ in any of them hold features from different models or
#: preprocessing and must never share a name.
IDENTITY_KEYS = ("backbone", "model", "pretrained", "weights_sha256", "preprocess")
#: The subset of IDENTITY_KEYS that names the network and its weights (not the
#: preprocessing): text embeddings and image features must agree on these.
MODEL_KEYS = ("backbone", "model", "pretrained", "weights_sha256")

#: Provenance key of the arithmetic precision a feature set was computed in (one
#: of PRECISIONS). Like the on-disk dtype, it is part of a feature set's identity
#: within a store (see :func:`identity`), not of the model identity that compares
#: feature sets across stores.
PRECISION = "precision"
#: The precisions a feature set can be computed in: full float32, or bfloat16 /
#: float16 autocast.
PRECISIONS = ("fp32", "bf16", "fp16")
#: The precision of a feature set whose provenance records none. Releases before
#: the key existed did not record it; their default was fp32, which is what such
#: a feature set is read as.
FULL_PRECISION = "fp32"

#: Provenance key of the decode path that made a feature set's model inputs (one
#: of DECODES): PIL on the CPU; nvJPEG plus a tensor resize on the GPU; or PIL's
#: decode plus the tensor resize on the run's device (see clipcache.extract.decode).
#: They give close but unequal pixels, so, like the precision, it is part of a
#: feature set's identity within a store.
DECODE = "decode"
#: The decode paths a feature set's inputs can come from.
DECODES = ("cpu", "gpu", "hybrid")
#: The decode path of a feature set whose provenance records none: releases before
#: the key existed decoded on the CPU.
CPU_DECODE = "cpu"

#: Provenance key of the tensor resize that made a ``gpu`` or ``hybrid`` feature
#: set's model inputs on the run's device. Since 2026-11-27 it is DEVICE_RESIZE_PIL:
#: PIL's resize byte for byte (clipcache.extract.resample.pil_resize). From
#: 2026-11-26 it was "like-pil" (PIL's two passes in float32, within a grey level
#: of PIL); earlier releases resized in one pass, a few grey levels away, and
#: recorded no key. Like the decode path it is part of a feature set's identity,
#: when recorded, so that two resizes are never mixed under one name.
DEVICE_RESIZE = "device_resize"
#: The device resize of this release (DEVICE_RESIZE).
DEVICE_RESIZE_PIL = "pil"

#: Provenance key: whether the image tower ran compiled (``torch.compile``,
#: ``RunOptions.compile``). Compiled kernels round differently from eager ones (on
#: an H200, one image of a test model moved to a cosine of 0.9946), so, like the
#: decode path, it is part of a feature set's identity within a store when true.
#: A provenance without the key was computed eagerly.
COMPILED = "compiled"

# Chunk sizes are a writer's choice, not part of the format; readers take any.
#: Target size of one HDF5 chunk of a feature dataset.
FEATURE_CHUNK_BYTES = 4 << 20
#: Rows per chunk of the per-sample columns (ids, paths, labels, views).
COLUMN_CHUNK_ROWS = 4096
#: Rows per chunk of the skipped-record columns, the class names and the state vector.
SKIPPED_CHUNK_ROWS, CLASSES_CHUNK_ROWS, STATE_CHUNK_ROWS = 256, 1024, 64

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


def dump_json(value) -> str:
    """Compact JSON with sorted keys: how every JSON attribute of the store is written."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def model_identity(provenance: dict, dim: int) -> dict:
    """What makes two feature sets comparable: the identity keys of the provenance, and the dimension."""
    ident = {key: provenance.get(key) for key in IDENTITY_KEYS}
    ident["dim"] = int(dim)
    return ident


def precision_of(provenance: dict) -> str:
    """The precision a feature set was computed in: its provenance's ``precision``, or FULL_PRECISION when none is recorded."""
    return str(provenance.get(PRECISION) or FULL_PRECISION)


def decode_of(provenance: dict) -> str:
    """The decode path a feature set's inputs came from: its provenance's ``decode``, or CPU_DECODE when none is recorded."""
    return str(provenance.get(DECODE) or CPU_DECODE)


def device_resize_of(provenance: dict) -> str | None:
    """The device resize of a ``gpu`` or ``hybrid`` feature set's inputs (DEVICE_RESIZE), or None: not recorded (an
    earlier release's resize), or a ``cpu`` feature set, which has none."""
    if decode_of(provenance) == CPU_DECODE:
        return None
    return provenance.get(DEVICE_RESIZE) or None


def compiled_of(provenance: dict) -> bool:
    """Whether a feature set was computed by a compiled image tower: its provenance's ``compiled``, False when none is recorded."""
    return bool(provenance.get(COMPILED, False))


def identity(provenance: dict, dim: int, dtype: str, normalized: bool) -> dict:
    """The part of a feature set's description that must match for rows to be mixed in one store.

    The model identity, the on-disk dtype, the normalisation and, when it is not
    FULL_PRECISION, the precision; when it is not CPU_DECODE, the decode path and,
    when recorded, the device resize; when the tower was compiled, ``compiled``.
    Leaving out fp32, cpu, eager and an unrecorded device resize keeps the identity
    (and ``FeatureStore.fingerprint``) of a feature set written before these were
    recorded exactly what it was, and equal to that of a new fp32, CPU-decoded,
    eager one.
    """
    ident = model_identity(provenance, dim)
    ident.update(dtype=str(dtype), normalized=bool(normalized))
    precision = precision_of(provenance)
    if precision != FULL_PRECISION:
        ident[PRECISION] = precision
    decode = decode_of(provenance)
    if decode != CPU_DECODE:
        ident[DECODE] = decode
        resize = device_resize_of(provenance)
        if resize is not None:
            ident[DEVICE_RESIZE] = resize
    if compiled_of(provenance):
        ident[COMPILED] = True
    return ident

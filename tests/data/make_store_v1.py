"""Write ``store-v1.h5``: a small store of format version 1 that holds every element type.

The file beside this script is FROZEN: it was written once, by the release that
introduced format version 1, and ``tests/feature_store/test_frozen_v1.py`` reads
it back so that no later release can stop reading version-1 files unseen. Never
regenerate it to make a test pass; a later format gets a new frozen file
(``store-v2.h5`` ...) and this one stays.

    python -m tests.data.make_store_v1 OUTPUT.h5

The contents follow from the rules below, which the test recomputes. Every float
comes from integer arithmetic, ``math.fsum`` and ``math.sqrt`` (all correctly
rounded), then one cast, so it is the same on every platform and numpy version.
The chunk sizes are shrunk (they are a writer's choice, not part of the format)
so that the file stays small and its datasets span several chunks.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import h5py
import numpy as np

from clipcache.feature_store import FeatureStore, schema

__all__ = [
    "AUX_DIM",
    "CLASSES",
    "CLIP_DIM",
    "CREATED",
    "METADATA",
    "SKIPPED",
    "STORE_UUID",
    "aux_rows",
    "clip_rows",
    "ids",
    "labels",
    "paths",
    "text_sets",
    "views",
    "write",
]

CLASSES = ["cat", "dog", "café"]
CLIP_DIM, AUX_DIM = 8, 5
STORE_UUID = "00112233445566778899aabbccddeeff"
CREATED = "2025-01-01T00:00:00+00:00"
#: Rows appended per call: train (complete), val (left incomplete), test (empty).
TRAIN_BATCHES, VAL_BATCHES = (7, 9, 5), (4, 6)
#: Rows of the feature set "aux" added to a split after its rows, per append_features call.
TRAIN_AUX_BATCHES, VAL_AUX_BATCHES = (13, 8), (3,)

CLIP_PROVENANCE = {
    "backbone": "open_clip",
    "model": "ViT-B-32",
    "pretrained": "openai",
    "weights_sha256": "ab" * 32,
    "preprocess": {"image_size": 224, "resize": "shortest", "crop": "center", "interpolation": "bicubic",
                   "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    "library_versions": {"clipcache": "0.1.0", "open_clip": "2.24.0", "torch": "2.2.0"},
    "created": CREATED,
}
AUX_PROVENANCE = {
    "backbone": "timm",
    "model": "efficientnet_lite0",
    "pretrained": "none",
    "weights_sha256": None,
    "preprocess": {"image_size": 224, "resize": "shortest", "crop": "center", "interpolation": "bilinear",
                   "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "created": CREATED,
}
SKIPPED = {
    "train": [("train/bad-0", "/données/train/bad-0.jpg", "cannot identify image file"),
              ("train/bad-1", "/données/train/bad-1.jpg", "image file is truncated (3 bytes not processed)")],
    "val": [("val/bad-0", "/données/val/bad-0.png", "cannot identify image file")],
    "test": [],
}
METADATA = {
    "extract": {
        "source": "/données", "model": "ViT-B-32", "pretrained": "openai", "aux": ["timm:efficientnet_lite0"],
        "classes": None, "splits": None, "max_per_class": None, "val_per_class": 0, "batch_size": 7,
        "augment_views": 2, "seed": 0, "dtype": "float32", "normalize": True, "image_size": None,
        "shard": [0, 1],
    },
    "shard": {"index": 0, "count": 1, "items": {"train": [0, 21, 21], "val": [0, 10, 10], "test": [0, 0, 0]}},
    "support_sets": {
        "support-k2": {"pool": "train", "features": "clip", "text": "ensemble", "k": 2, "exclusive": True, "rows": 6,
                       "pool_fingerprint": "0123456789abcdef0123456789abcdef",
                       "method": "SuS-X style text-to-image retrieval"},
    },
}


def _int(i: int, j: int, salt: int) -> int:
    """A deterministic integer in [-30, 30]."""
    return (i * 37 + j * 11 + salt * 5) % 61 - 30


def clip_rows(split: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of feature set "clip" (float32, L2-normalised): ndarray (stop - start, 8), float32."""
    salt = 1 if split == "train" else 3
    out = np.empty((stop - start, CLIP_DIM), dtype=np.float32)
    for r, i in enumerate(range(start, stop)):
        a = [_int(i, j, salt) or 1 for j in range(CLIP_DIM)]
        norm = math.sqrt(math.fsum(v * v for v in a))
        out[r] = [v / norm for v in a]
    return out


def aux_rows(split: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of feature set "aux" as given to the store: ndarray (stop - start, 5), float32.

    The store keeps them as float16, so reads return ``aux_rows(...).astype(float16).astype(float32)``.
    """
    salt = 2 if split == "train" else 4
    values = [[_int(i, j, salt) / 7 for j in range(AUX_DIM)] for i in range(start, stop)]
    return np.array(values, dtype=np.float32).reshape(-1, AUX_DIM)


def ids(split: str, start: int, stop: int) -> list[str]:
    return [f"{split}/{i:04d}" for i in range(start, stop)]


def paths(split: str, start: int, stop: int) -> list[str]:
    return [f"/données/{split}/{CLASSES[i % 3]}/{i:04d}.jpg" for i in range(start, stop)]


def labels(split: str, start: int, stop: int) -> np.ndarray:
    """ndarray (stop - start,), int64; every fourth row is unlabelled (-1)."""
    return np.array([i % 4 - 1 for i in range(start, stop)], dtype=np.int64)


def views(split: str, start: int, stop: int) -> np.ndarray:
    """ndarray (stop - start,), int16: two augmented views per sample in train, plain images elsewhere."""
    return np.array([i % 2 if split == "train" else 0 for i in range(start, stop)], dtype=np.int16)


def text_sets() -> dict:
    """The two text-embedding sets: keyword arguments of ``FeatureStore.write_text``, by name."""
    templates = ["a photo of a {}.", "a drawing of a {}."]
    ensemble_index = [c for _ in templates for c in range(3)]
    ensemble = np.array(
        [[_int(m, j, 5) or 1 for j in range(CLIP_DIM)] for m in range(len(ensemble_index))], dtype=np.float64
    )
    ensemble = np.array(
        [[v / math.sqrt(math.fsum(x * x for x in row)) for v in row] for row in ensemble.tolist()], dtype=np.float32
    )
    descriptions = ["a small cat", "a cat asleep", "a dog", "a cup of café au lait"]
    return {
        "ensemble": {
            "embeddings": ensemble,
            "class_index": np.array(ensemble_index, dtype=np.int64),
            "prompts": [t.format(CLASSES[c]) for t in templates for c in range(3)],
            "provenance": {k: CLIP_PROVENANCE[k] for k in schema.MODEL_KEYS},
            "normalized": True,
            "templates": templates,
        },
        "descriptions": {
            "embeddings": np.array([[_int(m, j, 6) / 8 for j in range(CLIP_DIM)] for m in range(4)], dtype=np.float32),
            "class_index": np.array([0, 0, 1, 2], dtype=np.int64),
            "prompts": descriptions,
            "provenance": {"model": "ViT-B-32", "pretrained": "openai"},
            "normalized": False,
            "templates": None,
        },
    }


def _append(store: FeatureStore, split: str, batches, with_aux: bool) -> None:
    start = 0
    for b in batches:
        stop = start + b
        features = {"clip": clip_rows(split, start, stop)}
        if with_aux:
            features["aux"] = aux_rows(split, start, stop)
        store.append(split, ids=ids(split, start, stop), paths=paths(split, start, stop),
                     labels=labels(split, start, stop), features=features, views=views(split, start, stop))
        start = stop


def _append_aux(store: FeatureStore, split: str, batches) -> None:
    start = 0
    for b in batches:
        store.append_features(split, "aux", aux_rows(split, start, start + b))
        start += b


def _skip(store: FeatureStore, split: str, records) -> None:
    record_ids, record_paths, reasons = zip(*records, strict=True)
    store.record_skipped(split, ids=list(record_ids), paths=list(record_paths), reasons=list(reasons))


def write(path: Path) -> None:
    """Write the frozen store to ``path`` (truncating it)."""
    saved = schema.FEATURE_CHUNK_BYTES, schema.COLUMN_CHUNK_ROWS
    schema.FEATURE_CHUNK_BYTES, schema.COLUMN_CHUNK_ROWS = 128, 8  # 4 clip rows, 12 aux rows, 8 column rows per chunk
    try:
        _write_store(path)
    finally:
        schema.FEATURE_CHUNK_BYTES, schema.COLUMN_CHUNK_ROWS = saved
    # Pin what the store makes random or time-dependent, so that reruns give the same contents.
    with h5py.File(path, "r+", locking=False) as f:
        f.attrs.modify("store_uuid", STORE_UUID)
        for obj in [f, *(f["splits"][s] for s in f["splits"]), *(f["text"][t] for t in f["text"])]:
            obj.attrs.modify("created", CREATED)


def _write_store(path: Path) -> None:
    with FeatureStore(path, "w") as store:
        store.set_classes(CLASSES)
        store.add_feature_set("clip", CLIP_DIM, dtype="float32", normalized=True, provenance=CLIP_PROVENANCE)
        store.add_feature_set("aux", AUX_DIM, dtype="float16", normalized=False, provenance=AUX_PROVENANCE)
        for key, value in METADATA.items():
            store.set_metadata(key, value)
        for name, kwargs in text_sets().items():
            kwargs = dict(kwargs)
            store.write_text(name, kwargs.pop("embeddings"), kwargs.pop("class_index"), kwargs.pop("prompts"), **kwargs)

        store.create_split("train", ["clip"])  # complete: "aux" is added after the rows, then filled
        _append(store, "train", TRAIN_BATCHES, with_aux=False)
        _skip(store, "train", SKIPPED["train"][:1])  # two calls, one record each
        _skip(store, "train", SKIPPED["train"][1:])
        store.create_split("train", ["aux"])
        _append_aux(store, "train", TRAIN_AUX_BATCHES)
        store.mark_complete("train")

        store.create_split("val", ["clip"])  # incomplete: "aux" covers 3 of its 10 rows
        _append(store, "val", VAL_BATCHES, with_aux=False)
        _skip(store, "val", SKIPPED["val"])
        store.create_split("val", ["aux"])
        _append_aux(store, "val", VAL_AUX_BATCHES)

        store.create_split("test", ["clip", "aux"])  # created, never appended to


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.data.make_store_v1 OUTPUT.h5")
    write(Path(sys.argv[1]))

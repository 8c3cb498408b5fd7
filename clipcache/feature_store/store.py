"""The feature store: one HDF5 file of cached embeddings, labels and provenance.

Writing protocol (what makes ``append`` crash-safe):

1. Structure (classes, feature sets, splits, text embeddings, metadata) is
   created with the file in normal mode.
2. The first ``append`` switches the file to SWMR mode. Each batch resizes and
   fills every column, flushes, then writes the split's ``state`` vector (one
   small chunk, one write) and flushes again.
3. ``state`` holds the committed row counts. Rows past them are ignored by
   readers and cut off by the next writer, so a writer killed at any instant
   leaves exactly the batches that were committed.

A structural change after appending has started closes and reopens the file,
because HDF5 forbids new objects in SWMR mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from clipcache._version import __version__
from clipcache.errors import StoreError, StoreFormatError, StoreMismatchError
from clipcache.feature_store import _hdf5, schema
from clipcache.feature_store.rows import Rows, StringColumn, normalize_rows, read_rows
from clipcache.ops import prompt_ensemble

logger = logging.getLogger(__name__)

_STR = h5py.string_dtype("utf-8")
_MODES = ("r", "a", "w", "x")
_NORM_TOL = 1e-3
_STRING_COLUMNS = ("ids", "paths")
_SKIPPED_COLUMNS = ("ids", "paths", "reasons")


@dataclass(frozen=True)
class FeatureSetInfo:
    """Description of one feature set (one backbone's embeddings).

    Attributes
    ----------
    name : str
    dim : int
        Embedding dimension d.
    dtype : str
        On-disk dtype, ``"float32"`` or ``"float16"``; reads always return float32.
    normalized : bool
        Whether every row is L2-normalised.
    provenance : dict
        Model, pretrained tag, weights sha256, preprocessing, library versions, time.
    """

    name: str
    dim: int
    dtype: str
    normalized: bool
    provenance: dict = field(default_factory=dict)

    def identity(self) -> dict:
        return schema.identity(self.provenance, self.dim, self.dtype, self.normalized)


@dataclass(frozen=True)
class TextEmbeddings:
    """Prompt embeddings of the class names, one row per (class, prompt).

    Attributes
    ----------
    name : str
    embeddings : ndarray of shape (M, d), float32
    class_index : ndarray of shape (M,), int64
        The class of each row.
    prompts : list of str, length M
    templates : list of str or None
        The templates of a template ensemble; None for per-class descriptions.
    provenance : dict
    normalized : bool
    """

    name: str
    embeddings: np.ndarray
    class_index: np.ndarray
    prompts: list
    templates: list | None
    provenance: dict
    normalized: bool

    def class_embeddings(self, n_classes: int | None = None) -> np.ndarray:
        """Prompt-ensemble class weights.

        Parameters
        ----------
        n_classes : int, optional
            Number of classes C; defaults to ``class_index.max() + 1``.

        Returns
        -------
        ndarray of shape (C, d), float32
            Per class, the mean of its L2-normalised prompt embeddings, normalised again.
        """
        return prompt_ensemble(self.embeddings, self.class_index, n_classes)


class Chunk(NamedTuple):
    """One block of a split, as yielded by :meth:`FeatureStore.iter_chunks`."""

    rows: np.ndarray  # (b,) int64
    features: np.ndarray  # (b, d) float32
    labels: np.ndarray  # (b,) int64


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FeatureStore:
    """A clipcache feature store file.

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file.
    mode : {"r", "a", "w", "x"}
        ``"r"`` read-only (works while another process appends); ``"a"`` read and
        write, creating the file if missing; ``"w"`` create, truncating; ``"x"``
        create, failing if the file exists. Writers hold an exclusive lock.

    Examples
    --------
    >>> with FeatureStore("feats.h5", "a") as store:           # doctest: +SKIP
    ...     store.set_classes(["cat", "dog"])
    ...     store.add_feature_set("clip", dim=512, provenance={"model": "ViT-B-32"})
    ...     store.create_split("train", feature_sets=["clip"])
    ...     store.append("train", ids=ids, paths=paths, labels=y, features={"clip": X})
    ...     store.mark_complete("train")
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._lock: _hdf5.WriterLock | None = None
        self._h5: h5py.File | None = None
        if mode == "r":
            self._h5 = _hdf5.open_for_read(self.path)
            self._check_format()
            return
        if mode == "x" and self.path.exists():
            raise StoreError(f"{self.path}: already exists; open it with mode 'a' to add to it")
        create = mode in ("w", "x") or not self.path.exists() or self.path.stat().st_size == 0
        self._lock = _hdf5.WriterLock(self.path)
        self._lock.acquire()
        try:
            self._h5 = _hdf5.open_for_write(self.path, create=create)
            if create:
                self._initialise()
            else:
                self._check_format()
                self._truncate_uncommitted()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._h5 is None else self.mode
        return f"FeatureStore({str(self.path)!r}, {state})"

    def close(self) -> None:
        """Flush and close the file and release the writer lock."""
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5 = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._h5

    def _initialise(self) -> None:
        root = self.h5.attrs
        root["clipcache_format"] = schema.FORMAT_NAME
        root["format_version"] = schema.FORMAT_VERSION
        root["store_uuid"] = uuid.uuid4().hex
        root["created"] = _now()
        root["clipcache_version"] = __version__
        root["metadata"] = "{}"
        self.h5.create_dataset("classes", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        for group in ("feature_sets", "splits", "text"):
            self.h5.create_group(group)
        self.h5.flush()

    def _check_format(self) -> None:
        try:
            attrs = dict(self.h5.attrs)
        except (OSError, RuntimeError) as exc:
            raise _hdf5.describe_open_failure(self.path, exc) from None
        schema.check_root(self.path, attrs)
        for group in ("classes", "feature_sets", "splits", "text"):
            if group not in self.h5:
                raise StoreFormatError(f"{self.path}: the store has no '/{group}' element; it is corrupt")

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path}: opened read-only; open it with mode 'a' to write")

    def _structure(self) -> h5py.File:
        """The file, out of SWMR mode so that objects and attributes can be created."""
        self._require_writable()
        if self.h5.swmr_mode:
            self._h5.close()
            self._h5 = _hdf5.open_for_write(self.path, create=False)
        return self._h5

    # -- store-level metadata ----------------------------------------------------------

    @property
    def uuid(self) -> str:
        """A random id given to the file when it was created."""
        return str(self.h5.attrs["store_uuid"])

    @property
    def classes(self) -> list[str]:
        """The class names, indexed by label."""
        return [str(c) for c in self.h5["classes"].asstr()[:]]

    def set_classes(self, names: Sequence[str]) -> None:
        """Set the class names once; setting a different list later is an error."""
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise StoreError(f"{self.path}: class names must be unique")
        current = self.classes
        if current == names:
            return
        if current:
            raise StoreMismatchError(
                f"{self.path}: the store already has {len(current)} classes ({', '.join(current[:3])}, ...) "
                "and they differ from the ones given; write to a new store"
            )
        dset = self._structure()["classes"]
        dset.resize((len(names),))
        dset[:] = names
        self.h5.flush()

    @property
    def metadata(self) -> dict:
        """Free-form JSON metadata, e.g. the extraction configuration."""
        return json.loads(self.h5.attrs.get("metadata", "{}"))

    def set_metadata(self, key: str, value) -> None:
        """Set one metadata entry to a JSON-serialisable value."""
        meta = self.metadata
        meta[key] = value
        self._structure().attrs["metadata"] = schema.dump_json(meta)
        self.h5.flush()

    # -- feature sets ------------------------------------------------------------------

    @property
    def feature_sets(self) -> dict[str, FeatureSetInfo]:
        """Every feature set of the store, by name."""
        return {name: self._feature_set(name) for name in self.h5["feature_sets"]}

    def _feature_set(self, name: str) -> FeatureSetInfo:
        group = self.h5["feature_sets"].get(name)
        if group is None:
            known = ", ".join(self.h5["feature_sets"]) or "none"
            raise StoreError(f"{self.path}: no feature set {name!r} (the store has: {known})")
        schema.check_element(self.path, group, "feature-set")
        a = group.attrs
        return FeatureSetInfo(
            name=name,
            dim=int(a["dim"]),
            dtype=str(a["dtype"]),
            normalized=bool(a["normalized"]),
            provenance=json.loads(a["provenance"]),
        )

    def add_feature_set(
        self,
        name: str,
        dim: int,
        *,
        dtype: str = "float32",
        normalized: bool = True,
        provenance: dict | None = None,
    ) -> FeatureSetInfo:
        """Register a feature set, or check that an existing one matches.

        Parameters
        ----------
        name : str
            E.g. ``"clip"`` or the auxiliary backbone's name.
        dim : int
            Embedding dimension d.
        dtype : {"float32", "float16"}
            On-disk dtype.
        normalized : bool
            Whether rows are L2-normalised (checked on every append).
        provenance : dict
            JSON-serialisable; the keys in ``schema.IDENTITY_KEYS`` identify the model.

        Raises
        ------
        StoreMismatchError
            If ``name`` exists with a different model, preprocessing, dim, dtype or
            normalisation.
        """
        if dtype not in ("float32", "float16"):
            raise StoreError(f"{self.path}: feature set {name!r}: dtype must be float32 or float16, not {dtype!r}")
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"{self.path}: {name!r} is not a valid feature set name")
        if int(dim) < 1:
            raise StoreError(f"{self.path}: feature set {name!r}: dim must be positive, not {dim}")
        info = FeatureSetInfo(name, int(dim), dtype, bool(normalized), dict(provenance or {}))
        json.dumps(info.provenance)  # fail early on values HDF5 attributes cannot hold
        if name in self.h5["feature_sets"]:
            existing = self._feature_set(name)
            if existing.identity() != info.identity():
                diff = sorted(k for k, v in info.identity().items() if existing.identity().get(k) != v)
                raise StoreMismatchError(
                    f"{self.path}: feature set {name!r} was made with a different "
                    f"{', '.join(diff)}; features from different models are never mixed under one "
                    "name, so choose another feature set name or a new store"
                )
            return existing
        group = self._structure()["feature_sets"].create_group(name)
        schema.mark_element(group, "feature-set")
        group.attrs.update(
            dim=info.dim, dtype=dtype, normalized=info.normalized, provenance=schema.dump_json(info.provenance)
        )
        self.h5.flush()
        return info

    # -- splits: structure -------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """Names of the splits."""
        return list(self.h5["splits"])

    def _split(self, split: str) -> h5py.Group:
        group = self.h5["splits"].get(split)
        if group is None:
            known = ", ".join(self.h5["splits"]) or "none"
            raise StoreError(f"{self.path}: no split {split!r} (the store has: {known})")
        schema.check_element(self.path, group, "split")
        return group

    def _check_split_layout(self, group: h5py.Group) -> None:
        """Raise StoreFormatError unless ``group`` has every member a version-1 split has."""
        columns = [(group, name) for name in _STRING_COLUMNS] + [(group["skipped"], n) for n in _SKIPPED_COLUMNS]
        for parent, name in columns:
            member = parent.get(name)
            if not isinstance(member, h5py.Group):
                raise StoreFormatError(f"{self.path}: {parent.name}/{name} is not a string column; the store is corrupt")
            schema.check_element(self.path, member, "string-column")
        for name in ("labels", "views", "state"):
            if not isinstance(group.get(name), h5py.Dataset):
                raise StoreFormatError(f"{self.path}: {group.name}/{name} is missing; the store is corrupt")

    def split_feature_sets(self, split: str) -> list[str]:
        """The feature sets that have a column in ``split``."""
        return json.loads(self._split(split)["state"].attrs["features"])

    def create_split(self, split: str, feature_sets: Sequence[str] = ()) -> None:
        """Create a split with a column per feature set; on an existing split, add missing columns.

        A feature set added to a split that already has rows starts empty and is
        filled with :meth:`append_features`; until then the split is not complete.
        """
        if not split or "/" in split or split.startswith("."):
            raise StoreError(f"{self.path}: {split!r} is not a valid split name")
        infos = [self._feature_set(name) for name in feature_sets]
        if split in self.h5["splits"]:
            present = self.split_feature_sets(split)
            infos = [info for info in infos if info.name not in present]
            if not infos:
                return
        h5 = self._structure()
        if split not in h5["splits"]:
            self._create_split_group(h5["splits"].create_group(split))
        group = h5["splits"][split]
        state_ds = group["state"]
        names = json.loads(state_ds.attrs["features"])
        for info in infos:
            rows_per_chunk = max(1, schema.FEATURE_CHUNK_BYTES // (info.dim * np.dtype(info.dtype).itemsize))
            group["features"].create_dataset(
                info.name,
                shape=(0, info.dim),
                maxshape=(None, info.dim),
                dtype=info.dtype,
                chunks=(rows_per_chunk, info.dim),
            )
            names.append(info.name)
        state = np.zeros(schema.STATE_FIXED + len(names), dtype=np.int64)
        old = state_ds[:]
        state[: len(old)] = old
        if infos and state[schema.STATE_ROWS] > 0:
            state[schema.STATE_COMPLETE] = 0
        state_ds.resize((len(state),))
        state_ds[:] = state
        state_ds.attrs["features"] = schema.dump_json(names)
        h5.flush()

    @staticmethod
    def _create_split_group(group: h5py.Group) -> None:
        schema.mark_element(group, "split")
        group.attrs["created"] = _now()
        chunk = schema.COLUMN_CHUNK_ROWS
        for name in _STRING_COLUMNS:
            StringColumn.create(group, name, chunk)
        for name, dtype in (("labels", "i8"), ("views", "i2")):
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,))
        skipped = group.create_group("skipped")
        for name in _SKIPPED_COLUMNS:
            StringColumn.create(skipped, name, 256)
        group.create_group("features")
        state = group.create_dataset("state", shape=(schema.STATE_FIXED,), maxshape=(None,), dtype="i8", chunks=(64,))
        state.attrs["features"] = "[]"

    def _state(self, split: str) -> tuple[np.ndarray, list[str]]:
        ds = self._split(split)["state"]
        if self.mode == "r" and self.h5.swmr_mode:
            ds.refresh()
        return ds[:], json.loads(ds.attrs["features"])

    def _truncate_uncommitted(self) -> None:
        """Cut every column back to its committed length (after a crash, rows past it are partial)."""
        for split in self.splits:
            group = self._split(split)
            self._check_split_layout(group)
            state, names = self._state(split)
            n = int(state[schema.STATE_ROWS])
            for col in _STRING_COLUMNS:
                StringColumn(group[col]).truncate(n)
            for col in ("labels", "views"):
                if group[col].shape[0] != n:
                    group[col].resize((n,))
            k = int(state[schema.STATE_SKIPPED])
            for col in _SKIPPED_COLUMNS:
                StringColumn(group["skipped"][col]).truncate(k)
            for i, name in enumerate(names):
                rows = int(state[schema.STATE_FIXED + i])
                ds = group["features"][name]
                if ds.shape[0] != rows:
                    logger.info("%s: dropping %d uncommitted rows of %s/%s", self.path, ds.shape[0] - rows, split, name)
                    ds.resize((rows, ds.shape[1]))
        self.h5.flush()

    # -- splits: appending -------------------------------------------------------------

    def _appending(self) -> h5py.File:
        self._require_writable()
        if not self.h5.swmr_mode:
            self.h5.swmr_mode = True
        return self.h5

    def append(
        self,
        split: str,
        *,
        ids: Sequence[str],
        paths: Sequence[str],
        labels: np.ndarray,
        features: dict[str, np.ndarray],
        views: np.ndarray | None = None,
    ) -> None:
        """Append one batch of b samples and commit it atomically.

        Parameters
        ----------
        split : str
        ids, paths : sequence of str, length b
        labels : array-like of shape (b,), int
            In ``[0, len(classes))``, or -1 for unlabelled samples.
        features : dict of str to ndarray of shape (b, d)
            One entry for every feature set of the split that is level with the
            split's rows (normally all of them).
        views : array-like of shape (b,), int, optional
            Augmented-view index of each row; 0 (the plain image) by default.
        """
        state, names = self._state(split)
        n = int(state[schema.STATE_ROWS])
        if state[schema.STATE_COMPLETE]:
            raise StoreError(f"{self.path}: split {split!r} is complete; append to a new split instead")
        b = len(ids)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        views = np.zeros(b, np.int16) if views is None else np.asarray(views, dtype=np.int16).reshape(-1)
        if len(paths) != b or len(labels) != b or len(views) != b:
            raise StoreError(
                f"{self.path}: split {split!r}: ids, paths, labels and views must have the same length "
                f"(got {b}, {len(paths)}, {len(labels)}, {len(views)})"
            )
        self._check_labels(split, labels)
        level = [name for i, name in enumerate(names) if state[schema.STATE_FIXED + i] == n]
        if sorted(features) != sorted(level):
            raise StoreError(
                f"{self.path}: split {split!r}: append needs features for exactly {sorted(level)}, "
                f"got {sorted(features)}"
            )
        arrays = {name: self._check_features(split, name, x, b) for name, x in features.items()}
        h5 = self._appending()
        group = h5["splits"][split]
        StringColumn(group["ids"]).append(n, [str(v) for v in ids])
        StringColumn(group["paths"]).append(n, [str(v) for v in paths])
        _write_rows(group["labels"], n, labels)
        _write_rows(group["views"], n, views)
        for name, x in arrays.items():
            _write_rows(group["features"][name], n, x)
        h5.flush()
        state[schema.STATE_ROWS] = n + b
        for i, name in enumerate(names):
            if name in arrays:
                state[schema.STATE_FIXED + i] = n + b
        group["state"][:] = state
        h5.flush()

    def append_features(self, split: str, name: str, features: np.ndarray) -> None:
        """Fill a feature set that was added to a split after its rows, in row order.

        Parameters
        ----------
        split, name : str
        features : ndarray of shape (b, d)
            Features of the b rows that follow the ones this feature set already has.
        """
        state, names = self._state(split)
        if name not in names:
            raise StoreError(f"{self.path}: split {split!r} has no feature set {name!r}; create_split it first")
        i = schema.STATE_FIXED + names.index(name)
        have, n = int(state[i]), int(state[schema.STATE_ROWS])
        x = self._check_features(split, name, features, None)
        if have + len(x) > n:
            raise StoreError(
                f"{self.path}: split {split!r} has {n} rows; feature set {name!r} has {have}, "
                f"so {len(x)} more is too many"
            )
        h5 = self._appending()
        ds = h5["splits"][split]["features"][name]
        _write_rows(ds, have, x)
        h5.flush()
        state[i] = have + len(x)
        h5["splits"][split]["state"][:] = state
        h5.flush()

    def link_features(self, split: str, name: str, sources: Sequence[tuple[str | Path, int]]) -> None:
        """Make feature set ``name`` of ``split`` an HDF5 virtual dataset over other stores' rows.

        Used to merge shards without copying: the rows of ``split`` are the
        concatenation of the first n rows of the same split and feature set of
        each source store, in order. Sources are referenced by path relative to
        this store, so they must stay beside it.

        Parameters
        ----------
        split, name : str
        sources : sequence of (path, n)
            Source stores and how many rows to take from each; the n add up to
            this split's rows.
        """
        state, names = self._state(split)
        info = self._feature_set(name)
        if name not in names:
            raise StoreError(f"{self.path}: split {split!r} has no feature set {name!r}; create_split it first")
        total = sum(int(n) for _, n in sources)
        if total != state[schema.STATE_ROWS]:
            raise StoreError(
                f"{self.path}: split {split!r} has {int(state[schema.STATE_ROWS])} rows but the sources hold {total}"
            )
        layout = h5py.VirtualLayout(shape=(total, info.dim), dtype=np.dtype(info.dtype))
        base, at = self.path.resolve().parent, 0
        for path, n in sources:
            if n:
                rel = os.path.relpath(Path(path).resolve(), base)
                source = h5py.VirtualSource(rel, f"splits/{split}/features/{name}", shape=(int(n), info.dim))
                layout[at : at + int(n)] = source[0 : int(n)]
            at += int(n)
        features = self._structure()["splits"][split]["features"]
        del features[name]
        features.create_virtual_dataset(name, layout, fillvalue=np.nan)
        state[schema.STATE_FIXED + names.index(name)] = total
        self.h5["splits"][split]["state"][:] = state
        self.h5.flush()

    def record_skipped(self, split: str, *, ids: Sequence[str], paths: Sequence[str], reasons: Sequence[str]) -> None:
        """Record samples that could not be read, with the reason, without adding rows."""
        if not (len(ids) == len(paths) == len(reasons)):
            raise StoreError(f"{self.path}: split {split!r}: skipped ids, paths and reasons differ in length")
        state, _ = self._state(split)
        k = int(state[schema.STATE_SKIPPED])
        h5 = self._appending()
        group = h5["splits"][split]["skipped"]
        for col, values in zip(_SKIPPED_COLUMNS, (ids, paths, reasons), strict=True):
            StringColumn(group[col]).append(k, [str(v) for v in values])
        h5.flush()
        state[schema.STATE_SKIPPED] = k + len(ids)
        h5["splits"][split]["state"][:] = state
        h5.flush()

    def mark_complete(self, split: str) -> None:
        """Mark a split complete: every feature set covers every row."""
        state, names = self._state(split)
        n = int(state[schema.STATE_ROWS])
        short = [name for i, name in enumerate(names) if state[schema.STATE_FIXED + i] != n]
        if short:
            raise StoreError(
                f"{self.path}: split {split!r} cannot be marked complete: feature sets {short} "
                f"cover fewer than its {n} rows"
            )
        h5 = self._appending()
        state[schema.STATE_COMPLETE] = 1
        h5["splits"][split]["state"][:] = state
        h5.flush()

    def _check_labels(self, split: str, labels: np.ndarray) -> None:
        n_classes = len(self.classes)
        bad = (labels < -1) | (labels >= n_classes)
        if bad.any():
            raise StoreError(
                f"{self.path}: split {split!r}: label {int(labels[bad][0])} is outside [0, {n_classes}) "
                "(set the class names first; -1 marks an unlabelled sample)"
            )

    def _check_features(self, split: str, name: str, x: np.ndarray, b: int | None) -> np.ndarray:
        info = self._feature_set(name)
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != info.dim or (b is not None and x.shape[0] != b):
            want = f"({'b' if b is None else b}, {info.dim})"
            raise StoreError(f"{self.path}: split {split!r}: features {name!r} have shape {x.shape}, expected {want}")
        if not np.issubdtype(x.dtype, np.floating):
            raise StoreError(f"{self.path}: features {name!r} must be floating point, not {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise StoreError(f"{self.path}: split {split!r}: features {name!r} contain NaN or inf")
        if info.normalized and len(x):
            norms = np.linalg.norm(x, axis=1)
            if np.abs(norms - 1).max() > _NORM_TOL:
                raise StoreError(
                    f"{self.path}: feature set {name!r} is marked normalized but a row has norm "
                    f"{norms[np.abs(norms - 1).argmax()]:.4f}; L2-normalise the features first"
                )
        return x

    # -- splits: reading ---------------------------------------------------------------

    def n_rows(self, split: str) -> int:
        """Committed rows of ``split``."""
        return int(self._state(split)[0][schema.STATE_ROWS])

    def feature_rows(self, split: str, name: str) -> int:
        """Committed rows of feature set ``name`` in ``split``."""
        state, names = self._state(split)
        if name not in names:
            raise StoreError(f"{self.path}: split {split!r} has no feature set {name!r} (it has: {', '.join(names) or 'none'})")
        return int(state[schema.STATE_FIXED + names.index(name)])

    def is_complete(self, split: str) -> bool:
        """Whether ``split`` was marked complete (its extraction finished)."""
        return bool(self._state(split)[0][schema.STATE_COMPLETE])

    def _column(self, split: str, col: str, rows: Rows, n: int | None = None) -> np.ndarray:
        n = self.n_rows(split) if n is None else n
        group = self._split(split)
        if col in _STRING_COLUMNS:
            self._check_split_layout(group)
            obj = StringColumn(group[col])
        else:
            obj = group[col]
        if self.mode == "r" and self.h5.swmr_mode:
            obj.refresh()
        sel = normalize_rows(rows, n, f"{self.path}: split {split!r}")
        return self._read(obj, sel, f"{split}/{col}")

    def _read(self, obj: h5py.Dataset | StringColumn, sel, what: str) -> np.ndarray:
        try:
            return obj.read(sel) if isinstance(obj, StringColumn) else read_rows(obj, sel)
        except OSError as exc:
            raise StoreFormatError(f"{self.path}: cannot read {what}; the file is corrupt ({exc})") from None

    def ids(self, split: str, rows: Rows = None) -> np.ndarray:
        """Sample ids, ndarray of shape (n,), dtype object (str)."""
        return self._column(split, "ids", rows)

    def paths(self, split: str, rows: Rows = None) -> np.ndarray:
        """Source paths or manifest keys, ndarray of shape (n,), dtype object (str)."""
        return self._column(split, "paths", rows)

    def labels(self, split: str, rows: Rows = None) -> np.ndarray:
        """Integer labels, ndarray of shape (n,), int64; -1 marks unlabelled samples."""
        return self._column(split, "labels", rows)

    def views(self, split: str, rows: Rows = None) -> np.ndarray:
        """Augmented-view index, ndarray of shape (n,), int16; 0 is the plain image."""
        return self._column(split, "views", rows)

    def features(self, split: str, name: str, rows: Rows = None) -> np.ndarray:
        """Features of ``rows`` of ``split``.

        Parameters
        ----------
        split, name : str
        rows : None, slice or array-like of int
            Which rows, in which order (repeats allowed); None for all.

        Returns
        -------
        ndarray of shape (n, d), float32
        """
        n = self.feature_rows(split, name)
        return self._column(split, f"features/{name}", rows, n)

    def iter_chunks(
        self, split: str, name: str, chunk_rows: int | None = None, rows: Rows = None
    ) -> Iterator[Chunk]:
        """Iterate over a split in blocks, so that no more than one block is in memory.

        Parameters
        ----------
        split, name : str
        chunk_rows : int, optional
            Rows per block; by default about 64 MiB of features.
        rows : None, slice or array-like of int
            Restrict to these rows, visited in the given order.

        Yields
        ------
        Chunk
            ``rows`` (b,) int64, ``features`` (b, d) float32, ``labels`` (b,) int64.
        """
        n = self.feature_rows(split, name)
        order = np.arange(n) if rows is None else normalize_rows(rows, n, f"{self.path}: split {split!r}")
        if isinstance(order, slice):
            order = np.arange(n)[order]
        dim = self._feature_set(name).dim
        step = chunk_rows or max(1, (64 << 20) // (4 * dim))
        if step < 1:
            raise StoreError(f"{self.path}: chunk_rows must be positive, not {chunk_rows}")
        contiguous = rows is None
        for start in range(0, len(order), step):
            block = order[start : start + step]
            sel = slice(int(block[0]), int(block[-1]) + 1) if contiguous else block
            yield Chunk(block, self.features(split, name, sel), self.labels(split, sel))

    def to_numpy(self, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """All features and labels of a split: ``(X (n, d) float32, y (n,) int64)``."""
        return self.features(split, name), self.labels(split, slice(0, self.feature_rows(split, name)))

    def skipped(self, split: str) -> list[tuple[str, str, str]]:
        """Samples that were skipped, as ``(id, path, reason)``."""
        k = int(self._state(split)[0][schema.STATE_SKIPPED])
        group = self._split(split)["skipped"]
        cols = [self._read(StringColumn(group[c]), slice(0, k), f"{split}/skipped/{c}") for c in _SKIPPED_COLUMNS]
        return list(zip(*cols, strict=True))

    def fingerprint(self, split: str, name: str) -> str:
        """A digest that changes when the file is recreated, rows are added, or the model changes."""
        info = self._feature_set(name)
        payload = [self.uuid, split, self.feature_rows(split, name), info.identity()]
        return hashlib.sha256(schema.dump_json(payload).encode()).hexdigest()[:32]

    # -- text embeddings ---------------------------------------------------------------

    @property
    def text_names(self) -> list[str]:
        """Names of the stored text-embedding sets."""
        return [name for name in self.h5["text"] if not name.startswith(".")]

    def write_text(
        self,
        name: str,
        embeddings: np.ndarray,
        class_index: np.ndarray,
        prompts: Sequence[str],
        *,
        provenance: dict,
        normalized: bool = True,
        templates: Sequence[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Store prompt embeddings of the class names, one row per (class, prompt).

        Parameters
        ----------
        name : str
        embeddings : ndarray of shape (M, d), float
        class_index : array-like of shape (M,), int
            Class of each row; every class needs at least one prompt.
        prompts : sequence of str, length M
        provenance : dict
            The text tower's model, pretrained tag and weights sha256.
        normalized : bool
        templates : sequence of str, optional
            The templates of a template ensemble; None for per-class descriptions.
        overwrite : bool
            Replace an existing set of that name.
        """
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"{self.path}: {name!r} is not a valid text-embedding name")
        x = np.asarray(embeddings, dtype=np.float32)
        idx = np.asarray(class_index, dtype=np.int64).reshape(-1)
        n_classes = len(self.classes)
        if x.ndim != 2 or len(x) != len(idx) or len(prompts) != len(idx):
            raise StoreError(
                f"{self.path}: text {name!r}: embeddings {x.shape}, class_index ({len(idx)},) and "
                f"{len(prompts)} prompts do not agree"
            )
        if not np.isfinite(x).all():
            raise StoreError(f"{self.path}: text {name!r}: embeddings contain NaN or inf")
        if n_classes == 0 or idx.min(initial=0) < 0 or idx.max(initial=-1) >= n_classes:
            raise StoreError(f"{self.path}: text {name!r}: class_index must lie in [0, {n_classes}); set the classes first")
        missing = sorted(set(range(n_classes)) - set(idx.tolist()))
        if missing:
            raise StoreError(f"{self.path}: text {name!r}: no prompt for class {self.classes[missing[0]]!r}")
        if name in self.h5["text"] and not overwrite:
            raise StoreError(f"{self.path}: text embeddings {name!r} exist; pass overwrite=True to replace them")
        text = self._structure()["text"]
        tmp = f".tmp-{name}"
        if tmp in text:
            del text[tmp]
        group = text.create_group(tmp)
        schema.mark_element(group, "text-embeddings")
        group.attrs.update(provenance=schema.dump_json(dict(provenance)), normalized=bool(normalized), created=_now())
        group.create_dataset("embeddings", data=x)
        group.create_dataset("class_index", data=idx)
        group.create_dataset("prompts", data=[str(p) for p in prompts], dtype=_STR)
        if templates is not None:
            group.create_dataset("templates", data=[str(t) for t in templates], dtype=_STR)
        self.h5.flush()
        if name in text:
            del text[name]
        text.move(tmp, name)
        self.h5.flush()

    def check_text_matches(self, text: str, features: str) -> None:
        """Raise StoreMismatchError unless text embeddings ``text`` come from the model of ``features``.

        The dimensions must agree, and so must every model-identifying provenance
        key (backbone, model, pretrained, weights_sha256) that both record.
        """
        emb, info = self.text(text), self._feature_set(features)
        if emb.embeddings.shape[1] != info.dim:
            raise StoreMismatchError(
                f"{self.path}: text embeddings {text!r} have dimension {emb.embeddings.shape[1]} but feature set "
                f"{features!r} has {info.dim}; pick text and image features of the same CLIP model"
            )
        for key in schema.MODEL_KEYS:
            a, b = emb.provenance.get(key), info.provenance.get(key)
            if a is not None and b is not None and a != b:
                raise StoreMismatchError(
                    f"{self.path}: text embeddings {text!r} have {key} {a!r} but feature set {features!r} has "
                    f"{b!r}; features from different models cannot be compared, pick matching text and features"
                )

    def text(self, name: str) -> TextEmbeddings:
        """Read a set of text embeddings."""
        group = self.h5["text"].get(name)
        if group is None or name.startswith("."):
            raise StoreError(f"{self.path}: no text embeddings {name!r} (the store has: {', '.join(self.text_names) or 'none'})")
        schema.check_element(self.path, group, "text-embeddings")
        templates = [str(t) for t in group["templates"].asstr()[:]] if "templates" in group else None
        return TextEmbeddings(
            name=name,
            embeddings=group["embeddings"][:].astype(np.float32, copy=False),
            class_index=group["class_index"][:].astype(np.int64, copy=False),
            prompts=[str(p) for p in group["prompts"].asstr()[:]],
            templates=templates,
            provenance=json.loads(group.attrs["provenance"]),
            normalized=bool(group.attrs["normalized"]),
        )

    # -- summary -----------------------------------------------------------------------

    def describe(self) -> dict:
        """Everything ``clipcache info`` shows, as a JSON-serialisable dict."""
        a = self.h5.attrs
        splits = {}
        for split in self.splits:
            state, names = self._state(split)
            labels = self.labels(split)
            splits[split] = {
                "rows": int(state[schema.STATE_ROWS]),
                "complete": bool(state[schema.STATE_COMPLETE]),
                "skipped": int(state[schema.STATE_SKIPPED]),
                "labelled": int((labels >= 0).sum()),
                "views": int(self.views(split).max(initial=-1)) + 1,
                "features": {name: int(state[schema.STATE_FIXED + i]) for i, name in enumerate(names)},
            }
        texts = {}
        for name in self.text_names:
            t = self.text(name)
            texts[name] = {
                "prompts": len(t.prompts),
                "dim": int(t.embeddings.shape[1]),
                "templates": None if t.templates is None else len(t.templates),
                "provenance": t.provenance,
            }
        return {
            "path": str(self.path),
            "format": f"{a['clipcache_format']} v{int(a['format_version'])}",
            "uuid": self.uuid,
            "created": str(a.get("created", "")),
            "clipcache_version": str(a.get("clipcache_version", "")),
            "classes": self.classes,
            "splits": splits,
            "feature_sets": {
                name: {"dim": i.dim, "dtype": i.dtype, "normalized": i.normalized, "provenance": i.provenance}
                for name, i in self.feature_sets.items()
            },
            "text": texts,
            "metadata": self.metadata,
        }


def _write_rows(ds: h5py.Dataset, start: int, values) -> None:
    stop = start + len(values)
    if len(values) == 0:
        return
    if ds.shape[0] != stop:
        ds.resize(stop, axis=0)
    ds[start:stop] = values

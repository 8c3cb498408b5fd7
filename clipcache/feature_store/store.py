"""The feature store: one HDF5 file of cached embeddings, labels and provenance.

:class:`FeatureStore` is the facade over the file's lifecycle (open, lock,
recover, close), the switches between normal and SWMR mode, and the commit.
Each stored element has its own module under
:mod:`clipcache.feature_store.elements`, which reads and writes it.

Writing protocol (what makes ``append`` crash-safe):

1. A writer keeps the file in SWMR mode, so that readers can open it at any
   time. A structural change (classes, feature sets, splits, text embeddings,
   metadata) reopens it in normal mode, because HDF5 forbids new objects in
   SWMR mode, makes the change, flushes, and returns to SWMR mode:
   :meth:`FeatureStore._change`. A new split is built under a hidden name and
   renamed when whole.
2. Each batch resizes and fills every column, flushes, then writes the split's
   ``state`` vector (one small chunk, one write) and flushes again:
   :meth:`FeatureStore._commit`.
3. ``state`` holds the committed row counts. Rows past them are ignored by
   readers and cut off by the next writer, so a writer killed at any instant
   leaves exactly the batches that were committed.

Every write first checks that the file system has room for the chunks it
allocates (:func:`clipcache.feature_store._hdf5.check_free_space`), and a
failed write raises :class:`~clipcache.errors.StoreWriteError` before anything
is committed; the handle then refuses further writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TypeVar

import h5py
import numpy as np

from clipcache._io import atomic_output
from clipcache.errors import InvalidParameterError, StoreError, StoreFormatError, StoreMismatchError
from clipcache.feature_store import _hdf5, schema
from clipcache.feature_store.describe import describe
from clipcache.feature_store.elements import REGISTRY, root
from clipcache.feature_store.elements.feature_set import DTYPES, FeatureSetInfo, check_rows
from clipcache.feature_store.elements.split import HIDDEN_PREFIX, STRING_COLUMNS, Split, SplitState
from clipcache.feature_store.elements.strings import StringColumn
from clipcache.feature_store.elements.text import TextEmbeddings, check_text, replace_text
from clipcache.feature_store.rows import Rows, normalize_rows, read_rows

__all__ = ["Chunk", "FeatureSetInfo", "FeatureStore", "TextEmbeddings", "replace_store"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
#: Reads a reader tries while a writer changes the file under it.
_READ_RETRIES = 4

_MODES = ("r", "a", "w", "x")
#: Bytes of float32 features per block of ``iter_chunks`` by default.
_ITER_BYTES = 64 << 20


class Chunk(NamedTuple):
    """One block of a split, as yielded by :meth:`FeatureStore.iter_chunks`."""

    rows: np.ndarray  # (b,) int64
    features: np.ndarray  # (b, d) float32
    labels: np.ndarray  # (b,) int64


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def replace_store(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a new store, and move it over ``path`` when the block succeeds.

    The old store stays as it was, byte for byte, until the new one is whole: a
    failed or killed block leaves it untouched (the temporary file of a killed
    one stays behind, hidden; nothing reads it). Meanwhile the old store's
    writer lock is held, so that no other writer changes what is about to be
    replaced. A ``path`` that is a symbolic link keeps naming the new store.

    Examples
    --------
    >>> with replace_store("feats.h5") as tmp:                    # doctest: +SKIP
    ...     with FeatureStore(tmp, "x") as store:
    ...         ...
    """
    path = Path(os.path.realpath(path))  # through a symbolic link: replace the file it names, keep the link
    lock = _hdf5.FileLock(path) if path.exists() else None
    if lock is not None:
        lock.acquire()
    try:
        with atomic_output(path) as tmp:
            yield tmp
    finally:
        if lock is not None:
            lock.release()


def _check_name(path: Path, value: str, what: str, param: str) -> None:
    if not value or "/" in value or value.startswith("."):
        raise StoreError(f"{path}: {value!r} is not a valid {what} name", param=param)


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
        self.path = Path(path)
        if mode not in _MODES:
            raise InvalidParameterError(
                f"{self.path}: mode must be one of {', '.join(_MODES)}, not {mode!r}", param="mode"
            )
        self.mode = mode
        self._lock: _hdf5.FileLock | None = None
        self._release = None
        self._failed: str | None = None
        self._infos: dict[str, FeatureSetInfo] = {}  # feature sets never change once written
        # A writer's open splits and class count, kept from one append to the next; structural changes and
        # failures drop them (_forget)
        self._open_splits: dict[str, Split] = {}
        self._class_count: int | None = None
        self._h5: h5py.File | None = None
        if mode == "r":
            self._h5, self._release = _hdf5.open_for_read(self.path)
            try:
                self._retrying(lambda: root.check(self.path, self.h5))
            except BaseException:
                self.close()
                raise
            return
        if mode == "x" and self.path.exists():
            raise StoreError(f"{self.path}: already exists; open it with mode 'a' to add to it", param="mode")
        create = mode in ("w", "x") or not self.path.exists() or self.path.stat().st_size == 0
        self._lock = _hdf5.FileLock(self.path)
        self._lock.acquire()
        try:
            with self._guard("create the store" if create else "recover the store"):
                self._h5 = _hdf5.open_for_write(self.path, create=create)
                if create:
                    root.write(self._h5, _now())
                else:
                    root.check(self.path, self._h5)
                    self._recover()
                self._h5.flush()
                self._h5.swmr_mode = True
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
                if self._failed is None:
                    self._forget()
                    self._h5.close()
                else:  # the flush of what failed fails again; the error was raised already
                    with _hdf5.quiet_dealloc_errors(), contextlib.suppress(OSError, RuntimeError):
                        self._forget()
                        self._h5.close()
            finally:
                self._h5 = None
        if self._release is not None:
            self._release()
            self._release = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def h5(self) -> h5py.File:
        """The open h5py file (read-only use outside this package)."""
        if self._h5 is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._h5

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path}: opened read-only; open it with mode 'a' to write")
        if self._failed is not None:
            raise _hdf5.write_error(self.path, f"write after an earlier write failed ({self._failed})", reopen=True)

    @contextlib.contextmanager
    def _guard(self, what: str, split: str | None = None) -> Iterator[None]:
        """Turn an HDF5 or OS failure inside the block into one StoreWriteError, and refuse later writes.

        After a failed append to ``split``, its columns are cut back to the commit
        first: that drops the chunks that could not be written from HDF5's cache,
        so that the datasets close cleanly (HDF5 crashes at exit on a dataset
        whose close failed).
        """
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self._failed = cause = _hdf5.io_cause(exc)
            with _hdf5.quiet_dealloc_errors():
                if split is not None:
                    with contextlib.suppress(OSError, RuntimeError, StoreError):
                        self._split(split).truncate()
                self._forget()  # free the failed datasets while quiet: the writer's open ones,
                traceback.clear_frames(exc.__traceback__)  # and those of the failed call's frames
                del exc
            raise _hdf5.write_error(self.path, f"{what} ({cause})") from None

    @contextlib.contextmanager
    def _writing(self, split: str, what: str) -> Iterator[Callable[[int], None]]:
        """Write rows of ``split`` in SWMR mode; yield the check that the bytes a write allocates (and a margin) are free."""
        self._require_writable()
        with self._guard(what, split):
            if not self.h5.swmr_mode:
                self.h5.swmr_mode = True
            yield self._reserve

    def _reserve(self, need: int) -> None:
        """Refuse a write that allocates ``need`` bytes when the file system lacks them and the margin."""
        _hdf5.check_free_space(self.path, need)

    @contextlib.contextmanager
    def _change(self, what: str, need: int = 0) -> Iterator[h5py.File]:
        """Make a structural change: reopen the file out of SWMR mode, yield it, flush, and return to SWMR mode.

        HDF5 creates no object or attribute in SWMR mode. The file is out of it
        only for the change, so readers wait at most that long, and one killed
        meanwhile leaves the file as of its last flush.
        """
        self._require_writable()
        _hdf5.check_free_space(self.path, need)
        self._forget()
        with self._guard(what):
            if self.h5.swmr_mode:
                self._h5.close()
                self._h5 = None
                self._h5 = _hdf5.open_for_write(self.path, create=False)
            yield self._h5
            self._h5.flush()
            self._h5.swmr_mode = True

    def _member(self, parent: str, name: str) -> h5py.Group | None:
        """Group ``name`` under ``/parent``, or None.

        A reader's view of the file's structure dates from when it opened it: a
        reader that misses ``name`` opens the file anew once, to see the
        structural changes a writer made since (a new split, replaced text).
        """
        for attempt in range(2):
            try:
                group = self.h5[parent].get(name)
            except (OSError, RuntimeError, KeyError):
                group = None
            if group is not None or attempt or self.mode != "r":
                return group
            self._reopen()
        return None

    def _reopen(self) -> None:
        """Close and open the file again (readers only)."""
        self.close()
        self._h5, self._release = _hdf5.open_for_read(self.path)

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """``read()``; a reader that fails while a writer holds the file opens it anew and reads again.

        A writer changes the structure out of SWMR mode (a moment), and a reader
        that opened the file before may then read a half-rewritten attribute or a
        moved object; once the change is over, the file reads whole again.
        """
        for attempt in range(_READ_RETRIES):
            try:
                return read()
            except (StoreFormatError, OSError, RuntimeError, KeyError, json.JSONDecodeError):
                if self.mode != "r" or attempt == _READ_RETRIES - 1 or not _hdf5.writer_flags(self.path):
                    raise
            time.sleep(0.01 * (attempt + 1))
            self._reopen()
        raise AssertionError("unreachable")  # pragma: no cover

    def _state(self, name: str) -> tuple[Split, SplitState]:
        """Split ``name`` and its committed state."""

        def read() -> tuple[Split, SplitState]:
            sp = self._split(name)
            return sp, sp.state()

        return self._retrying(read)

    def _commit(self, sp: Split, state: SplitState) -> None:
        """Flush the rows written, then write ``state`` (one chunk, one write) and flush again."""
        self.h5.flush()
        sp.write_state(state)
        self.h5.flush()

    def _recover(self) -> None:
        """Make the file as its last commit left it: drop hidden leftovers, cut columns back to their commit."""
        for parent in ("splits", "text"):
            for name in [n for n in self.h5[parent] if n.startswith(".")]:
                logger.info("%s: dropping %s/%s, left by an interrupted writer", self.path, parent, name)
                del self.h5[parent][name]
        for name in self.splits:
            try:
                sp = self._split(name)
            except StoreFormatError as exc:
                logger.warning("%s", exc)
                continue
            sp.truncate()

    # -- store-level metadata ----------------------------------------------------------

    @property
    def uuid(self) -> str:
        """A random id given to the file when it was created."""
        return str(self.h5.attrs["store_uuid"])

    @property
    def classes(self) -> list[str]:
        """The class names, indexed by label."""
        return self._retrying(lambda: root.read_classes(self.h5))

    def set_classes(self, names: Sequence[str]) -> None:
        """Set the class names once; setting a different list later is an error."""
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise StoreError(f"{self.path}: class names must be unique", param="names")
        current = self.classes
        if current == names:
            return
        if current:
            raise StoreMismatchError(
                f"{self.path}: the store already has {len(current)} classes ({', '.join(current[:3])}, ...) "
                "and they differ from the ones given; write to a new store"
            )
        with self._change("set the classes") as h5:
            root.write_classes(h5, names)

    @property
    def metadata(self) -> dict:
        """Free-form JSON metadata; the keys that modules share are named in ``schema`` (``METADATA_*``)."""
        return self._retrying(lambda: root.read_metadata(self.h5))

    def set_metadata(self, key: str, value) -> None:
        """Set one metadata entry to a JSON-serialisable value."""
        meta = self.metadata
        meta[key] = value
        with self._change(f"set metadata {key!r}") as h5:
            root.write_metadata(h5, meta)

    # -- feature sets ------------------------------------------------------------------

    @property
    def feature_sets(self) -> dict[str, FeatureSetInfo]:
        """Every feature set of the store, by name."""
        return {name: self._feature_set(name) for name in self.h5["feature_sets"]}

    def _feature_set(self, name: str, param: str = "feature_set") -> FeatureSetInfo:
        if name in self._infos:
            return self._infos[name]

        def read() -> FeatureSetInfo:
            group = self._member("feature_sets", name)
            if group is None:
                known = ", ".join(self.h5["feature_sets"]) or "none"
                raise StoreError(f"{self.path}: no feature set {name!r} (the store has: {known})", param=param)
            return REGISTRY[schema.FEATURE_SET].open(self.path, group)

        self._infos[name] = info = self._retrying(read)
        return info

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
            JSON-serialisable; the keys in ``schema.IDENTITY_KEYS`` identify the model,
            and ``schema.PRECISION`` (``"fp32"``, ``"bf16"`` or ``"fp16"``; ``"fp32"``
            when absent) gives the precision the features were computed in.

        Raises
        ------
        InvalidParameterError
            If the provenance's precision is not one of ``schema.PRECISIONS``.
        StoreMismatchError
            If ``name`` exists with a different model, preprocessing, dim, dtype,
            normalisation or precision.
        """
        if dtype not in DTYPES:
            raise StoreError(
                f"{self.path}: feature set {name!r}: dtype must be float32 or float16, not {dtype!r}", param="dtype"
            )
        _check_name(self.path, name, "feature set", "name")
        if int(dim) < 1:
            raise StoreError(f"{self.path}: feature set {name!r}: dim must be positive, not {dim}", param="dim")
        info = FeatureSetInfo(name, int(dim), dtype, bool(normalized), dict(provenance or {}))
        json.dumps(info.provenance)  # fail early on values HDF5 attributes cannot hold
        precision = info.provenance.get(schema.PRECISION, schema.FULL_PRECISION)
        if precision not in schema.PRECISIONS:
            raise InvalidParameterError(
                f"{self.path}: feature set {name!r}: provenance precision {precision!r} is not one of "
                f"{', '.join(schema.PRECISIONS)}; record the precision the features were computed in",
                param="provenance",
            )
        if name in self.h5["feature_sets"]:
            existing = self._feature_set(name)
            have, given = schema.precision_of(existing.provenance), schema.precision_of(info.provenance)
            if have != given:
                raise StoreMismatchError(
                    f"{self.path}: feature set {name!r} holds features computed in {have}, and these were computed "
                    f"in {given}; features of different precisions are never mixed under one name, so compute them "
                    f"in {have}, or choose another feature set name or a new store"
                )
            old, new = existing.identity(), info.identity()
            if old != new:
                diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                raise StoreMismatchError(
                    f"{self.path}: feature set {name!r} was made with a different "
                    f"{', '.join(diff)}; features from different models are never mixed under one "
                    "name, so choose another feature set name or a new store"
                )
            return existing
        with self._change(f"add feature set {name!r}") as h5:
            REGISTRY[schema.FEATURE_SET].create(h5["feature_sets"], name, info)
        return info

    # -- splits: structure -------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """Names of the splits."""
        return [name for name in self.h5["splits"] if not name.startswith(HIDDEN_PREFIX)]

    def _forget(self) -> None:
        """Drop the writer's open splits and class count (before a structural change, a close or after a failure)."""
        self._open_splits.clear()
        self._class_count = None

    def _split(self, name: str) -> Split:
        """Split ``name``; a writer keeps it open, with its members, until :meth:`_forget`."""
        sp = self._open_splits.get(name)
        if sp is not None:
            return sp
        group = None if name.startswith(HIDDEN_PREFIX) else self._member("splits", name)
        if group is None:
            known = self.splits
            if name in known:  # listed, but its object cannot be read
                raise StoreFormatError(
                    f"{self.path}: split {name!r} is damaged and cannot be read; drop it with drop_split",
                    param="split",
                )
            raise StoreError(f"{self.path}: no split {name!r} (the store has: {', '.join(known) or 'none'})", param="split")
        sp = REGISTRY[schema.SPLIT].open(self.path, group)
        sp.refresh = self.mode == "r" and self.h5.swmr_mode
        if self.mode != "r":
            self._open_splits[name] = sp
        return sp

    def _split_feature_set(self, name: str, feature_set_name: str) -> tuple[Split, SplitState]:
        """The split and its state, checking that ``feature_set_name`` has a column in it."""
        sp, state = self._state(name)
        if feature_set_name not in state.feature_rows:
            raise StoreError(
                f"{self.path}: split {name!r} has no feature set {feature_set_name!r} "
                f"(it has: {', '.join(state.feature_sets) or 'none'}); call create_split to add it",
                param="feature_set",
            )
        return sp, state

    def split_feature_sets(self, split: str) -> list[str]:
        """The feature sets that have a column in ``split``."""
        return self._split(split).feature_sets

    def create_split(self, split: str, feature_sets: Sequence[str] = ()) -> None:
        """Create a split with a column per feature set; on an existing split, add missing columns.

        A feature set added to a split that already has rows starts empty and is
        filled with :meth:`append_features`; until then the split is not complete.
        """
        _check_name(self.path, split, "split", "split")
        infos = [self._feature_set(name, param="feature_sets") for name in feature_sets]
        exists = split in self.splits
        if exists:
            present = self.split_feature_sets(split)
            infos = [info for info in infos if info.name not in present]
            if not infos:
                return
        with self._change(f"create split {split!r}") as h5:
            if exists:
                self._split(split).add_feature_columns(infos)
                return
            # Built under a hidden name and renamed when whole, so that a failure
            # or a kill never leaves a half-made split under the real name.
            hidden = HIDDEN_PREFIX + split
            if hidden in h5["splits"]:
                del h5["splits"][hidden]
            sp = REGISTRY[schema.SPLIT].create(h5["splits"], hidden, self.path, _now())
            sp.add_feature_columns(infos)
            h5.flush()
            h5["splits"].move(hidden, split)

    def drop_split(self, split: str, *, force: bool = False) -> int:
        """Delete a split, its rows and its support-set record.

        For a split that an interrupted or failed command left incomplete (or
        damaged), so that its name can be used again. The file does not shrink:
        HDF5 keeps the freed space (``h5repack`` reclaims it).

        Parameters
        ----------
        split : str
        force : bool
            Also drop a complete split.

        Returns
        -------
        int
            The committed rows the split had (0 for a damaged one).

        Raises
        ------
        StoreError
            If there is no such split, or it is complete and ``force`` is False.
        """
        try:
            _, state = self._state(split)
        except StoreFormatError:
            if split not in self.splits:
                raise
            state = None  # damaged: dropping it is the way out
        if state is not None and state.complete and not force:
            raise StoreError(
                f"{self.path}: split {split!r} is complete with {state.rows} rows; set force to drop it anyway",
                param="force",
            )
        meta = self.metadata
        support = dict(meta.get(schema.METADATA_SUPPORT_SETS) or {})
        with self._change(f"drop split {split!r}") as h5:
            del h5["splits"][split]
            if split in support:
                del support[split]
                meta[schema.METADATA_SUPPORT_SETS] = support
                root.write_metadata(h5, meta)
        return 0 if state is None else state.rows

    # -- splits: appending -------------------------------------------------------------

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
            split's rows (normally all of them), by feature-set name.
        views : array-like of shape (b,), int, optional
            Augmented-view index of each row; 0 (the plain image) by default.
        """
        sp, state = self._state(split)
        n = state.rows
        if state.complete:
            raise StoreError(f"{self.path}: split {split!r} is complete; append to a new split instead", param="split")
        b = len(ids)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        views = np.zeros(b, np.int16) if views is None else np.asarray(views, dtype=np.int16).reshape(-1)
        if len(paths) != b or len(labels) != b or len(views) != b:
            raise StoreError(
                f"{self.path}: split {split!r}: ids, paths, labels and views must have the same length "
                f"(got {b}, {len(paths)}, {len(labels)}, {len(views)})"
            )
        self._check_labels(split, labels)
        level = state.level()
        if sorted(features) != sorted(level):
            raise StoreError(
                f"{self.path}: split {split!r}: append needs features for exactly {sorted(level)}, "
                f"got {sorted(features)}",
                param="features",
            )
        arrays = {
            name: check_rows(self.path, split, self._feature_set(name), x, b)
            for name, x in features.items()
        }
        with self._writing(split, f"append {b} rows to split {split!r}") as reserve:
            sp.append_rows(n, ids, paths, labels, views, arrays, reserve)
            rows = {name: n + b if name in arrays else have for name, have in state.feature_rows.items()}
            self._commit(sp, replace(state, rows=n + b, feature_rows=rows))

    def append_features(self, split: str, feature_set: str, features: np.ndarray) -> None:
        """Fill a feature set that was added to a split after its rows, in row order.

        Parameters
        ----------
        split, feature_set : str
        features : ndarray of shape (b, d)
            Features of the b rows that follow the ones this feature set already has.
        """
        _, state = self._split_feature_set(split, feature_set)
        have, n = state.feature_rows[feature_set], state.rows
        x = check_rows(self.path, split, self._feature_set(feature_set), features, None)
        if have + len(x) > n:
            raise StoreError(
                f"{self.path}: split {split!r} has {n} rows; feature set {feature_set!r} has {have}, "
                f"so {len(x)} more is too many",
                param="features",
            )
        sp = self._split(split)
        with self._writing(split, f"append {len(x)} rows of {feature_set!r} to split {split!r}") as reserve:
            sp.append_feature_rows(feature_set, have, x, reserve)
            self._commit(sp, replace(state, feature_rows={**state.feature_rows, feature_set: have + len(x)}))

    def link_features(self, split: str, feature_set: str, sources: Sequence[tuple[str | Path, int]]) -> None:
        """Make feature set ``feature_set`` of ``split`` an HDF5 virtual dataset over other stores' rows.

        Used to merge shards without copying: the rows of ``split`` are the
        concatenation of the first n rows of the same split and feature set of
        each source store, in order. Sources are referenced by path relative to
        this store, so they must stay beside it.

        Parameters
        ----------
        split, feature_set : str
        sources : sequence of (path, n)
            Source stores and how many rows to take from each; the n add up to
            this split's rows.
        """
        _, state = self._split_feature_set(split, feature_set)
        info = self._feature_set(feature_set)
        total = sum(int(n) for _, n in sources)
        if total != state.rows:
            raise StoreError(
                f"{self.path}: split {split!r} has {state.rows} rows but the sources hold {total}", param="sources"
            )
        with self._change(f"link {feature_set!r} of split {split!r} to its sources"):
            sp = self._split(split)
            sp.link_features(info, sources)
            self._commit(sp, replace(state, feature_rows={**state.feature_rows, feature_set: total}))

    def record_skipped(self, split: str, *, ids: Sequence[str], paths: Sequence[str], reasons: Sequence[str]) -> None:
        """Record samples that could not be read, with the reason, without adding rows."""
        if not (len(ids) == len(paths) == len(reasons)):
            raise StoreError(f"{self.path}: split {split!r}: skipped ids, paths and reasons differ in length")
        sp, state = self._state(split)
        with self._writing(split, f"record skipped samples of split {split!r}") as reserve:
            sp.skipped.append(state.skipped, ids, paths, reasons, reserve)
            self._commit(sp, replace(state, skipped=state.skipped + len(ids)))

    def mark_complete(self, split: str) -> None:
        """Mark a split complete: every feature set covers every row."""
        sp, state = self._state(split)
        short = [name for name, n in state.feature_rows.items() if n != state.rows]
        if short:
            raise StoreError(
                f"{self.path}: split {split!r} cannot be marked complete: feature sets {short} "
                f"cover fewer than its {state.rows} rows"
            )
        with self._writing(split, f"mark split {split!r} complete") as reserve:
            reserve(0)
            self._commit(sp, replace(state, complete=True))

    def _check_labels(self, split: str, labels: np.ndarray) -> None:
        if self._class_count is None or self.mode == "r":
            self._class_count = len(self.classes)
        n_classes = self._class_count
        bad = (labels < -1) | (labels >= n_classes)
        if bad.any():
            raise StoreError(
                f"{self.path}: split {split!r}: label {int(labels[bad][0])} is outside [0, {n_classes}) "
                "(call set_classes first; -1 marks an unlabelled sample)",
                param="labels",
            )

    # -- splits: reading ---------------------------------------------------------------

    def n_rows(self, split: str) -> int:
        """Committed rows of ``split``."""
        return self._state(split)[1].rows

    def feature_rows(self, split: str, feature_set: str) -> int:
        """Committed rows of feature set ``feature_set`` in ``split``."""
        _, state = self._split_feature_set(split, feature_set)
        return state.feature_rows[feature_set]

    def is_complete(self, split: str) -> bool:
        """Whether ``split`` was marked complete (its extraction finished)."""
        return self._state(split)[1].complete

    def _read(self, sp: Split, column: str, rows: Rows, n: int, allocate=None) -> np.ndarray:
        """Rows ``rows`` of the first ``n`` of a column of ``sp``, which is a string column or a dataset (read into
        ``allocate``'s array where :func:`read_rows` can)."""
        if column.startswith("features/"):
            sp.check_sources(column.removeprefix("features/"))
        sel = normalize_rows(rows, n, f"{self.path}: split {sp.name!r}")
        for attempt in range(2):
            try:
                obj = sp.string_column(column) if column in STRING_COLUMNS else sp.dataset(column)
                return obj.read(sel) if isinstance(obj, StringColumn) else read_rows(obj, sel, allocate)
            except OSError as exc:
                if attempt or self.mode != "r":
                    raise StoreFormatError(
                        f"{self.path}: cannot read {sp.name}/{column}; the file is corrupt ({exc})"
                    ) from None
            self._reopen()  # a writer changed the structure since this reader opened the file
            sp = self._split(sp.name)
        raise AssertionError("unreachable")  # pragma: no cover

    def _column(self, split: str, column: str, rows: Rows) -> np.ndarray:
        sp, state = self._state(split)
        return self._read(sp, column, rows, state.rows)

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

    def features(self, split: str, feature_set: str, rows: Rows = None) -> np.ndarray:
        """Features of ``rows`` of ``split``.

        Parameters
        ----------
        split, feature_set : str
        rows : None, slice or array-like of int
            Which rows, in which order (repeats allowed); None for all.

        Returns
        -------
        ndarray of shape (n, d), float32
        """
        sp, state = self._split_feature_set(split, feature_set)
        return self._read(sp, f"features/{feature_set}", rows, state.feature_rows[feature_set])

    def iter_chunks(
        self, split: str, feature_set: str, chunk_rows: int | None = None, rows: Rows = None, allocate=None
    ) -> Iterator[Chunk]:
        """Iterate over a split in blocks, so that no more than one block is in memory.

        Parameters
        ----------
        split, feature_set : str
        chunk_rows : int, optional
            Rows per block, at least 1; by default about 64 MiB of features.
        rows : None, slice or array-like of int
            Restrict to these rows, visited in the given order.
        allocate : callable, optional
            ``allocate(shape, dtype)`` returns a writable C-contiguous array for a
            block's features, which are then read straight from the file into it
            (pinned memory for a copy to a GPU, say: ``GDAClassifier.fit_store``
            does so). This is done where the file allows it: all rows (``rows``
            None) of a float32 feature set, as this store writes them. Other
            blocks' features come in new arrays, as without ``allocate``.

        Yields
        ------
        Chunk
            ``rows`` (b,) int64, ``features`` (b, d) float32, ``labels`` (b,) int64.

        Raises
        ------
        InvalidParameterError
            If ``chunk_rows`` is not a positive integer (raised on the call, before any read).
        """
        integer = isinstance(chunk_rows, (int, np.integer)) and not isinstance(chunk_rows, bool)
        if chunk_rows is not None and not (integer and chunk_rows >= 1):
            raise InvalidParameterError(
                f"{self.path}: chunk_rows must be a positive number of rows, not {chunk_rows!r}", param="chunk_rows"
            )
        _, state = self._split_feature_set(split, feature_set)
        n = state.feature_rows[feature_set]
        order = np.arange(n) if rows is None else normalize_rows(rows, n, f"{self.path}: split {split!r}")
        if isinstance(order, slice):
            order = np.arange(n)[order]
        step = int(chunk_rows or max(1, _ITER_BYTES // (4 * self._feature_set(feature_set).dim)))
        return self._iter_blocks(split, feature_set, order, step, contiguous=rows is None, n=n, allocate=allocate)

    def _iter_blocks(
        self, split: str, feature_set: str, order: np.ndarray, step: int, contiguous: bool, n: int, allocate=None
    ) -> Iterator[Chunk]:
        column = f"features/{feature_set}"
        for start in range(0, len(order), step):
            block = order[start : start + step]
            sel = slice(int(block[0]), int(block[-1]) + 1) if contiguous else block
            sp = self._split(split)  # anew for each block: the caller may write to the store in between
            yield Chunk(block, self._read(sp, column, sel, n, allocate), self._read(sp, "labels", sel, n))

    def to_numpy(self, split: str, feature_set: str) -> tuple[np.ndarray, np.ndarray]:
        """All features and labels of a split: ``(X (n, d) float32, y (n,) int64)``."""
        sp, state = self._split_feature_set(split, feature_set)
        n = state.feature_rows[feature_set]
        return self._read(sp, f"features/{feature_set}", None, n), self._read(sp, "labels", None, n)

    def skipped(self, split: str) -> list[tuple[str, str, str]]:
        """Samples that were skipped, as ``(id, path, reason)``."""
        sp, state = self._state(split)
        try:
            return sp.skipped.read(state.skipped)
        except OSError as exc:
            raise StoreFormatError(f"{self.path}: cannot read {split}/skipped; the file is corrupt ({exc})") from None

    def fingerprint(self, split: str, feature_set: str) -> str:
        """A digest that changes when the file is recreated, rows are added, or the model changes."""
        info = self._feature_set(feature_set)
        payload = [self.uuid, split, self.feature_rows(split, feature_set), info.identity()]
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
        value = check_text(
            self.path, name, embeddings, class_index, prompts, templates, provenance, normalized, self.classes
        )
        if name in self.h5["text"] and not overwrite:
            raise StoreError(
                f"{self.path}: text embeddings {name!r} exist; set overwrite to replace them, or give another name",
                param="overwrite",
            )
        with self._change(f"write text embeddings {name!r}", value.stored_bytes) as h5:
            replace_text(h5["text"], value, _now())

    def check_text_matches(self, text: str, feature_set: str) -> None:
        """Raise StoreMismatchError unless text embeddings ``text`` come from the model of ``feature_set``.

        The dimensions must agree, and so must every model-identifying provenance
        key (backbone, model, pretrained, weights_sha256) that both record.
        """
        emb, info = self._text(text, param="text"), self._feature_set(feature_set)
        if emb.embeddings.shape[1] != info.dim:
            raise StoreMismatchError(
                f"{self.path}: text embeddings {text!r} have dimension {emb.embeddings.shape[1]} but feature set "
                f"{feature_set!r} has {info.dim}; pick text and image features of the same CLIP model"
            )
        for key in schema.MODEL_KEYS:
            a, b = emb.provenance.get(key), info.provenance.get(key)
            if a is not None and b is not None and a != b:
                raise StoreMismatchError(
                    f"{self.path}: text embeddings {text!r} have {key} {a!r} but feature set {feature_set!r} has "
                    f"{b!r}; features from different models cannot be compared, pick matching text and features"
                )

    def text(self, name: str) -> TextEmbeddings:
        """Read a set of text embeddings."""
        return self._text(name, param="name")

    def _text(self, name: str, param: str) -> TextEmbeddings:
        for attempt in range(2):
            group = None if name.startswith(".") else self._member("text", name)
            if group is None:
                raise StoreError(
                    f"{self.path}: no text embeddings {name!r} (the store has: {', '.join(self.text_names) or 'none'})",
                    param=param,
                )
            try:
                return REGISTRY[schema.TEXT_EMBEDDINGS].open(self.path, group)
            except (OSError, KeyError) as exc:  # replaced by a writer while being read
                if attempt or self.mode != "r":
                    raise StoreFormatError(f"{self.path}: cannot read text embeddings {name!r}; the file is corrupt ({exc})") from None
            self._reopen()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- summary -----------------------------------------------------------------------

    def describe(self) -> dict:
        """Everything ``clipcache info`` shows, as a JSON-serialisable dict."""
        return describe(self)

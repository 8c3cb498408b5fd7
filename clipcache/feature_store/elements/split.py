"""The split element: per-sample columns, one column per feature set, skipped records, and the commit state.

A split's ``state`` vector is the only truth about how many rows exist:
``[rows, complete, skipped, rows of each feature set]`` with the feature-set
names in its ``features`` attribute. Columns may hold more rows after a crash;
:meth:`Split.truncate` cuts them back. Writing the state vector is the commit
(one chunk, one write); when to write it is the facade's business
(:class:`clipcache.feature_store.FeatureStore`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from clipcache.errors import StoreFormatError
from clipcache.feature_store import _hdf5, schema
from clipcache.feature_store.elements import feature_set, strings
from clipcache.feature_store.elements._view import GroupView
from clipcache.feature_store.elements.skipped import SkippedRecords
from clipcache.feature_store.registry import Encoding

__all__ = ["ENCODING", "HIDDEN_PREFIX", "STRING_COLUMNS", "Split", "SplitState"]

logger = logging.getLogger(__name__)

#: Per-sample string columns.
STRING_COLUMNS = ("ids", "paths")
#: A split under construction has this prefix before its name; readers never list it.
HIDDEN_PREFIX = ".new-"
#: Per-sample numeric columns and their on-disk dtypes.
_NUMERIC_COLUMNS = (("labels", "i8"), ("views", "i2"))


@dataclass(frozen=True)
class SplitState:
    """The committed counts of a split, as its ``state`` vector records them.

    Attributes
    ----------
    rows : int
        Committed rows of the per-sample columns.
    complete : bool
        Whether the split was marked complete.
    skipped : int
        Committed skipped records.
    feature_rows : dict of str to int
        Committed rows of each feature set, in column order.
    """

    rows: int
    complete: bool
    skipped: int
    feature_rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def decode(cls, vector: np.ndarray, names: Sequence[str]) -> SplitState:
        """From the ``state`` vector, shape (3 + F,) int64, and its F feature-set names."""
        return cls(
            rows=int(vector[schema.STATE_ROWS]),
            complete=bool(vector[schema.STATE_COMPLETE]),
            skipped=int(vector[schema.STATE_SKIPPED]),
            feature_rows={name: int(vector[schema.STATE_FIXED + i]) for i, name in enumerate(names)},
        )

    def encode(self) -> np.ndarray:
        """The ``state`` vector: ndarray of shape (3 + F,), int64."""
        return np.array([self.rows, int(self.complete), self.skipped, *self.feature_rows.values()], dtype=np.int64)

    @property
    def feature_sets(self) -> list[str]:
        """The feature sets that have a column in the split, in column order."""
        return list(self.feature_rows)

    def level(self) -> list[str]:
        """The feature sets that cover every committed row (those an append must fill)."""
        return [name for name, n in self.feature_rows.items() if n == self.rows]


class Split(GroupView):
    """Reader and writer of one split group, encoding ``split`` version 1 (see :class:`GroupView` for the parameters).

    Without ``refresh``, each member is looked up once and kept: the writer keeps
    its splits open from one append to the next (``FeatureStore._split``).
    """

    def __init__(self, group: h5py.Group, path: Path, refresh: bool = False):
        super().__init__(group, path, refresh)
        self._members: dict[str, h5py.Dataset | strings.StringColumn] = {}

    @classmethod
    def write(cls, group: h5py.Group, path: Path, created: str) -> Split:
        """Lay out an empty split, without feature sets, in the new, marked ``group``."""
        group.attrs["created"] = created
        for name in STRING_COLUMNS:
            strings.ENCODING.create(group, name, schema.COLUMN_CHUNK_ROWS)
        for name, dtype in _NUMERIC_COLUMNS:
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(schema.COLUMN_CHUNK_ROWS,))
        SkippedRecords.write(group, path)
        group.create_group("features")
        state = group.create_dataset(
            "state", shape=(schema.STATE_FIXED,), maxshape=(None,), dtype="i8", chunks=(schema.STATE_CHUNK_ROWS,)
        )
        state.attrs["features"] = "[]"
        return cls(group, path)

    # -- members -----------------------------------------------------------------------

    def dataset(self, name: str) -> h5py.Dataset:
        """A numeric member: ``labels``, ``views``, ``state`` or ``features/<name>``."""
        ds = self._members.get(name)
        if ds is not None:
            return ds
        ds = self.group.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise StoreFormatError(f"{self.path}: {self.group.name}/{name} is missing; the store is corrupt")
        if self.refresh:
            ds.refresh()
        else:
            self._members[name] = ds
        return ds

    def string_column(self, name: str) -> strings.StringColumn:
        """A per-sample string column, ``ids`` or ``paths``."""
        column = self._members.get(name)
        if column is None:
            column = strings.open_column(self.path, self.group, name, self.refresh)
            if not self.refresh:
                self._members[name] = column
        return column

    @property
    def skipped(self) -> SkippedRecords:
        return SkippedRecords(self.group["skipped"], self.path, self.refresh)

    def check_layout(self) -> None:
        """Raise StoreFormatError unless the group has every member a version-1 split has."""
        for name in STRING_COLUMNS:
            self.string_column(name)
        self.skipped.columns()
        for name in ("labels", "views", "state"):
            self.dataset(name)

    # -- state -------------------------------------------------------------------------

    @property
    def feature_sets(self) -> list[str]:
        """The feature sets that have a column in the split, in column order."""
        return json.loads(self.dataset("state").attrs["features"])

    def state(self) -> SplitState:
        """The committed counts, as last written."""
        ds = self.dataset("state")
        return SplitState.decode(ds[:], json.loads(ds.attrs["features"]))

    def write_state(self, state: SplitState) -> None:
        """Write the state vector in one write: the commit. Its feature sets must be the split's."""
        ds = self.dataset("state")
        ds[:] = state.encode()
        ds.flush()

    def missing_sources(self, name: str) -> list[str]:
        """The source files of feature set ``name``'s virtual dataset that are not beside the store (none if not virtual)."""
        ds = self.dataset(f"features/{name}")
        if not ds.is_virtual:
            return []
        base = Path(self.path).resolve().parent
        files = dict.fromkeys(source.file_name for source in ds.virtual_sources())
        return [f for f in files if f != "." and not (base / f).is_file()]

    def check_sources(self, name: str) -> None:
        """Raise StoreFormatError if feature set ``name`` maps rows of source files that are missing."""
        missing = self.missing_sources(name)
        if missing:
            raise StoreFormatError(
                f"{self.path}: feature set {name!r} of split {self.name!r} maps rows of {', '.join(missing)}, "
                "which is missing beside the store; put the shard stores back beside it, or merge them with layout 'copy'"
            )

    # -- writing -----------------------------------------------------------------------


    def add_feature_columns(self, infos: Sequence[feature_set.FeatureSetInfo]) -> None:
        """Add an empty column per feature set; a split that has rows is then no longer complete."""
        state_ds = self.dataset("state")
        names = json.loads(state_ds.attrs["features"])
        for info in infos:
            self.group["features"].create_dataset(
                info.name,
                shape=(0, info.dim),
                maxshape=(None, info.dim),
                dtype=info.dtype,
                chunks=(feature_set.chunk_rows(info), info.dim),
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

    def append_rows(
        self,
        start: int,
        ids: Sequence[str],
        paths: Sequence[str],
        labels: np.ndarray,
        views: np.ndarray,
        features: dict[str, np.ndarray],
        reserve: Callable[[int], None],
    ) -> None:
        """Write rows after the ``start`` committed ones into every column given (uncommitted until the state says so).

        ``reserve(n)`` is called first with the bytes of the chunks the write
        allocates in the file; it raises to refuse the write.
        """
        stop = start + len(ids)
        encoded_ids = strings.encode(ids)
        encoded_paths = encoded_ids if paths is ids else strings.encode(paths)  # the extraction loop's keys are both
        strings_ = [(self.string_column(c), rows) for c, rows in zip(STRING_COLUMNS, (encoded_ids, encoded_paths), strict=True)]
        numeric = [(self.dataset(c), values) for (c, _), values in zip(_NUMERIC_COLUMNS, (labels, views), strict=True)]
        numeric += [(self.dataset(f"features/{name}"), x) for name, x in features.items()]
        reserve(sum(col.bytes_to_append(start, rows) for col, rows in strings_)
                + sum(_hdf5.chunk_growth(ds, stop) for ds, _ in numeric))
        for col, rows in strings_:
            col.append(start, rows)
        for ds, values in numeric:
            _hdf5.write_rows(ds, start, values)

    def append_feature_rows(self, name: str, start: int, x: np.ndarray, reserve: Callable[[int], None]) -> None:
        """Write rows ``start, start + 1, ...`` of feature set ``name`` (uncommitted until the state says so); ``reserve`` as in :meth:`append_rows`."""
        ds = self.dataset(f"features/{name}")
        reserve(_hdf5.chunk_growth(ds, start + len(x)))
        _hdf5.write_rows(ds, start, x)

    def link_features(self, info: feature_set.FeatureSetInfo, sources: Sequence[tuple[str | Path, int]]) -> None:
        """Replace the column of ``info`` by an HDF5 virtual dataset over the same column of other stores.

        Sources are referenced by path relative to this store; the first n rows of
        each, in order, make the column.
        """
        total = sum(int(n) for _, n in sources)
        layout = h5py.VirtualLayout(shape=(total, info.dim), dtype=np.dtype(info.dtype))
        base, at = self.path.resolve().parent, 0
        for source_path, n in sources:
            if n:
                rel = os.path.relpath(Path(source_path).resolve(), base)
                source = h5py.VirtualSource(rel, f"splits/{self.name}/features/{info.name}", shape=(int(n), info.dim))
                layout[at : at + int(n)] = source[0 : int(n)]
            at += int(n)
        features = self.group["features"]
        self._members.pop(f"features/{info.name}", None)
        del features[info.name]
        features.create_virtual_dataset(info.name, layout, fillvalue=np.nan)

    def truncate(self) -> None:
        """Cut every column back to its committed length (after a crash, rows past it are partial)."""
        self.check_layout()
        state = self.state()
        for col in STRING_COLUMNS:
            self.string_column(col).truncate(state.rows)
        for col, _ in _NUMERIC_COLUMNS:
            ds = self.dataset(col)
            if ds.shape[0] != state.rows:
                ds.resize((state.rows,))
        self.skipped.truncate(state.skipped)
        for name, rows in state.feature_rows.items():
            ds = self.dataset(f"features/{name}")
            if ds.shape[0] != rows:
                logger.info("%s: dropping %d uncommitted rows of %s/%s", self.path, ds.shape[0] - rows, self.name, name)
                ds.resize((rows, ds.shape[1]))


ENCODING = Encoding(schema.SPLIT, 1, write=Split.write, readers={1: Split})

"""The string-column element: an appendable column of UTF-8 strings, stored as bytes plus offsets.

Variable-length HDF5 strings live in a global heap that a killed writer can
leave half-updated; two fixed-size datasets can always be cut back exactly:
``offsets`` (n + 1,) int64 starting at 0, and ``utf8`` (offsets[n],) uint8
(like an Arrow string array). Row i is ``utf8[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from clipcache.errors import StoreFormatError
from clipcache.feature_store import _hdf5
from clipcache.feature_store.registry import Encoding
from clipcache.feature_store.rows import read_rows
from clipcache.feature_store.schema import STRING_COLUMN

__all__ = ["ENCODING", "Encoded", "StringColumn", "encode", "open_column"]

#: Bytes per row assumed when sizing the chunks of ``utf8``.
_BYTES_PER_ROW = 32


class Encoded(NamedTuple):
    """Rows of strings as a column stores them: each row's UTF-8 byte count, and the rows' bytes end to end."""

    lengths: np.ndarray  # (n,) int64
    data: bytes


def encode(values: Sequence) -> Encoded:
    """The UTF-8 bytes of ``str(v)`` for each value, as :meth:`StringColumn.append` takes them.

    ASCII rows (keys and paths, nearly always) are encoded in one call and
    counted by ``len``; a batch with other characters, one row at a time.
    """
    try:
        joined = "".join(values)
    except TypeError:  # not all str
        values = [str(v) for v in values]
        joined = "".join(values)
    if joined.isascii():
        return Encoded(np.fromiter(map(len, values), np.int64, len(values)), joined.encode("ascii"))
    rows = [str(v).encode("utf-8") for v in values]
    return Encoded(np.fromiter(map(len, rows), np.int64, len(rows)), b"".join(rows))


class StringColumn:
    """Reader and appender of one string-column group (version 1).

    Parameters
    ----------
    group : h5py.Group
        A group marked ``string-column``.
    path : Path, optional
        The store file, for messages.
    """

    def __init__(self, group: h5py.Group, path: Path | None = None):
        self.group = group
        self.path = path
        self._datasets: tuple[h5py.Dataset, h5py.Dataset] | None = None

    @classmethod
    def write(cls, group: h5py.Group, chunk_rows: int) -> StringColumn:
        """Lay out an empty column in the new, marked ``group``; ``chunk_rows`` rows per offsets chunk."""
        offsets = group.create_dataset("offsets", shape=(1,), maxshape=(None,), dtype="i8", chunks=(chunk_rows,))
        offsets[0] = 0
        group.create_dataset(
            "utf8", shape=(0,), maxshape=(None,), dtype="u1", chunks=(chunk_rows * _BYTES_PER_ROW,)
        )
        return cls(group)

    def refresh(self) -> None:
        """See rows a SWMR writer appended since the file was opened."""
        self.group["offsets"].refresh()
        self.group["utf8"].refresh()

    @property
    def _offsets(self) -> h5py.Dataset:
        if self._datasets is None:
            self._datasets = (self.group["offsets"], self.group["utf8"])
        return self._datasets[0]

    @property
    def _utf8(self) -> h5py.Dataset:
        self._offsets  # noqa: B018 (opens both)
        return self._datasets[1]

    def bytes_to_append(self, start: int, rows: Encoded) -> int:
        """Bytes of the chunks that appending ``rows`` (:func:`encode`) after row ``start`` allocates in the file."""
        n = len(rows.lengths)
        return _hdf5.chunk_growth(self._offsets, start + 1 + n) + _hdf5.chunk_growth(self._utf8, self._utf8.shape[0] + len(rows.data))

    def append(self, start: int, rows: Encoded) -> None:
        """Write ``rows`` (:func:`encode`) as rows ``start, start + 1, ...``; the column then ends there."""
        if not len(rows.lengths):
            return
        offsets = self._offsets
        base = int(offsets[start])
        _hdf5.write_rows(self._utf8, base, np.frombuffer(rows.data, dtype=np.uint8))
        _hdf5.write_rows(offsets, start + 1, base + np.cumsum(rows.lengths))

    def truncate(self, n: int) -> None:
        """Cut the column back to its first ``n`` rows."""
        offsets = self.group["offsets"]
        if offsets.shape[0] != n + 1:
            offsets.resize((n + 1,))
        end = int(offsets[n])
        if self.group["utf8"].shape[0] != end:
            self.group["utf8"].resize((end,))

    def read(self, sel: slice | np.ndarray) -> np.ndarray:
        """Rows ``sel`` (a step-1 slice or an int64 index array) as an ndarray of shape (k,), dtype object (str)."""
        if isinstance(sel, slice):
            bounds = self.group["offsets"][sel.start : sel.stop + 1] if sel.stop > sel.start else np.zeros(1, np.int64)
            starts, ends = bounds[:-1], bounds[1:]
        else:
            starts = read_rows(self.group["offsets"], sel)
            ends = read_rows(self.group["offsets"], sel + 1)
        out = np.empty(len(starts), dtype=object)
        if len(starts) == 0:
            return out
        lo, hi = int(starts.min()), int(ends.max())
        blob = self.group["utf8"][lo:hi].tobytes() if hi > lo else b""
        for i, (s, e) in enumerate(zip(starts - lo, ends - lo, strict=True)):
            out[i] = blob[s:e].decode("utf-8")
        return out


ENCODING = Encoding(STRING_COLUMN, 1, write=StringColumn.write, readers={1: StringColumn})


def open_column(path: Path, parent: h5py.Group, name: str, refresh: bool = False) -> StringColumn:
    """The string column ``name`` of ``parent``; StoreFormatError if it is missing or something else."""
    member = parent.get(name)
    if not isinstance(member, h5py.Group):
        raise StoreFormatError(f"{path}: {parent.name}/{name} is not a string column; the store is corrupt")
    column = ENCODING.open(path, member)
    if refresh:
        column.refresh()
    return column

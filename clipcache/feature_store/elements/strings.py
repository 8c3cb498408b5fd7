"""The string-column element: an appendable column of UTF-8 strings, stored as bytes plus offsets.

Variable-length HDF5 strings live in a global heap that a killed writer can
leave half-updated; two fixed-size datasets can always be cut back exactly:
``offsets`` (n + 1,) int64 starting at 0, and ``utf8`` (offsets[n],) uint8
(like an Arrow string array). Row i is ``utf8[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from clipcache.errors import StoreFormatError
from clipcache.feature_store._hdf5 import chunk_growth
from clipcache.feature_store.registry import Encoding
from clipcache.feature_store.rows import read_rows
from clipcache.feature_store.schema import STRING_COLUMN

__all__ = ["ENCODING", "StringColumn", "open_column"]

#: Bytes per row assumed when sizing the chunks of ``utf8``.
_BYTES_PER_ROW = 32


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

    def bytes_to_append(self, start: int, values: list[str]) -> int:
        """Bytes of the chunks that appending ``values`` after row ``start`` allocates in the file."""
        size = sum(len(v.encode("utf-8")) for v in values)
        return chunk_growth(self._offsets, start + 1 + len(values)) + chunk_growth(self._utf8, self._utf8.shape[0] + size)

    def append(self, start: int, values: list[str]) -> None:
        """Write ``values`` as rows ``start, start + 1, ...`` (cutting anything after ``start``)."""
        if not values:
            return
        encoded = [v.encode("utf-8") for v in values]
        offsets = self._offsets
        base = int(offsets[start])
        ends = base + np.cumsum([len(e) for e in encoded], dtype=np.int64)
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        utf8 = self._utf8
        utf8.resize((int(ends[-1]),))
        if data.size:
            utf8[base : int(ends[-1])] = data
        offsets.resize((start + 1 + len(values),))
        offsets[start + 1 :] = ends
        utf8.flush()  # now, so that a failed write raises here
        offsets.flush()

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

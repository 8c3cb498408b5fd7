"""Skipped records of a split: samples that could not be read, and why.

They live in the group ``skipped`` of a split, as three string columns
``ids``, ``paths`` and ``reasons`` that add no rows to the split. The group is
part of the split's layout and carries no encoding of its own; the split's
``state[2]`` says how many records are committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import h5py

from clipcache.feature_store import schema
from clipcache.feature_store.elements import strings
from clipcache.feature_store.elements._view import GroupView

__all__ = ["COLUMNS", "SkippedRecords"]

COLUMNS = ("ids", "paths", "reasons")


class SkippedRecords(GroupView):
    """Reader and appender of a split's ``skipped`` group (see :class:`GroupView` for the parameters)."""

    @classmethod
    def write(cls, split_group: h5py.Group, path: Path) -> SkippedRecords:
        """Lay out an empty ``skipped`` group in ``split_group``."""
        group = split_group.create_group("skipped")
        for name in COLUMNS:
            strings.ENCODING.create(group, name, schema.SKIPPED_CHUNK_ROWS)
        return cls(group, path)

    def columns(self) -> list[strings.StringColumn]:
        """The ids, paths and reasons columns; StoreFormatError if one is missing or not a string column."""
        return [strings.open_column(self.path, self.group, name, self.refresh) for name in COLUMNS]

    def append(
        self, k: int, ids: Sequence[str], paths: Sequence[str], reasons: Sequence[str], reserve: Callable[[int], None]
    ) -> None:
        """Write records after the ``k`` committed ones (uncommitted until the split's state says so).

        ``reserve(n)`` is called first with the bytes of the chunks the write allocates; it raises to refuse it.
        """
        columns = [(column, strings.encode(values)) for column, values in zip(self.columns(), (ids, paths, reasons), strict=True)]
        reserve(sum(column.bytes_to_append(k, rows) for column, rows in columns))
        for column, rows in columns:
            column.append(k, rows)

    def truncate(self, k: int) -> None:
        """Cut the columns back to the ``k`` committed records."""
        for column in self.columns():
            column.truncate(k)

    def read(self, k: int) -> list[tuple[str, str, str]]:
        """The first ``k`` records, as ``(id, path, reason)``."""
        return list(zip(*(column.read(slice(0, k)) for column in self.columns()), strict=True))

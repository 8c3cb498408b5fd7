"""Element encodings: one writer and a reader per version, for each stored element type.

Shaped after anndata's ``_io/specs/registry.py``. Every element group carries
``encoding_type`` and ``encoding_version`` attributes; :meth:`Encoding.create`
is the only code that writes them (always the newest version), and
:meth:`Encoding.open` the only code that checks them, dispatching to the
reader of the version found. A later release that changes an element adds a
reader for the new version and keeps the old ones, so old files stay readable.

The registry is an immutable table built once from the element modules
(:data:`clipcache.feature_store.elements.REGISTRY`); nothing registers itself
at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py

from clipcache.errors import StoreFormatError, StoreVersionError
from clipcache.feature_store.schema import UPGRADE_HINT

__all__ = ["Encoding", "Registry"]


@dataclass(frozen=True)
class Encoding:
    """How one element type is stored.

    Attributes
    ----------
    type : str
        The ``encoding_type`` attribute, e.g. ``"split"``.
    version : int
        The newest ``encoding_version``: the one :meth:`create` writes.
    write : callable
        ``write(group, *args, **kwargs)`` fills a new, marked group; its result is
        what :meth:`create` returns.
    readers : mapping of int to callable
        ``readers[v](group, path)`` reads an element of version ``v``; one entry
        for every version this release reads, ``version`` included.
    """

    type: str
    version: int
    write: Callable[..., Any]
    readers: Mapping[int, Callable[[h5py.Group, Path], Any]]

    def __post_init__(self) -> None:
        if self.version not in self.readers:
            raise TypeError(f"encoding {self.type!r} writes version {self.version} but cannot read it")
        object.__setattr__(self, "readers", MappingProxyType(dict(self.readers)))

    def create(self, parent: h5py.Group, name: str, *args, **kwargs) -> Any:
        """Create group ``name`` in ``parent``, mark it with this encoding, and write it."""
        group = parent.create_group(name)
        group.attrs["encoding_type"] = self.type
        group.attrs["encoding_version"] = self.version
        return self.write(group, *args, **kwargs)

    def open(self, path: Path, group: h5py.Group) -> Any:
        """Check that ``group`` is an element of this type at a version this release reads, and read it.

        Raises
        ------
        StoreFormatError
            If ``group`` is not an element of this type.
        StoreVersionError
            If its version has no reader here (a newer release wrote it).
        """
        kind = group.attrs.get("encoding_type")
        if kind is None or str(kind) != self.type:
            raise StoreFormatError(f"{path}: {group.name} is not a {self.type!r} element (found {kind!r})")
        version = int(group.attrs.get("encoding_version", -1))
        reader = self.readers.get(version)
        if reader is None:
            raise StoreVersionError(
                f"{path}: {group.name} is a {self.type!r} element of encoding version {version}, but this "
                f"clipcache reads versions {_ranges(self.readers)}; {UPGRADE_HINT}"
            )
        return reader(group, path)


class Registry(Mapping[str, Encoding]):
    """An immutable table of encodings, by encoding type."""

    def __init__(self, encodings: Iterable[Encoding]):
        table = {}
        for encoding in encodings:
            if encoding.type in table:
                raise TypeError(f"encoding {encoding.type!r} is given twice")
            table[encoding.type] = encoding
        self._table = MappingProxyType(table)

    def __getitem__(self, encoding_type: str) -> Encoding:
        return self._table[encoding_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def versions(self) -> dict[str, int]:
        """The newest version of every encoding type: what this release writes."""
        return {kind: encoding.version for kind, encoding in self._table.items()}


def _ranges(readers: Mapping[int, Any]) -> str:
    versions = sorted(readers)
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"{versions[0]} to {versions[-1]}"
    return ", ".join(map(str, versions))

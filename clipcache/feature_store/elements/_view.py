"""The base of the readers that stay bound to a group: splits and their skipped records."""

from __future__ import annotations

from pathlib import Path

import h5py

__all__ = ["GroupView"]


class GroupView:
    """A reader bound to one group of an open store.

    Parameters
    ----------
    group : h5py.Group
    path : Path
        The store file, for messages.
    refresh : bool
        Refresh datasets before reading them (a SWMR reader of a file being written).
    """

    def __init__(self, group: h5py.Group, path: Path, refresh: bool = False):
        self.group = group
        self.path = path
        self.refresh = refresh

    @property
    def name(self) -> str:
        """The group's name in its parent."""
        return self.group.name.rsplit("/", 1)[-1]

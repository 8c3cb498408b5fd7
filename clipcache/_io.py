"""Writing output files safely: write beside the target, then rename over it.

Every file clipcache writes goes through :func:`atomic_output`, so a reader
sees either the old file or the complete new one, never a half-written one,
and a failed or killed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "temporary_path"]


def temporary_path(path: str | os.PathLike) -> Path:
    """The name a file is written under before it replaces ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure delete it.

    Examples
    --------
    >>> with atomic_output("out.json") as tmp:        # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise

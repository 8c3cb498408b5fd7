"""Writing output files safely: never over an input, never half-written, never silently over another file.

Every file clipcache writes goes through :func:`atomic_output` (or
:func:`atomic_outputs` for a set of files), so a reader sees either the old
file or the complete new one, never a half-written one, and a failed or killed
write leaves the old file as it was. A write that fails because the disk is
full, or the folder is missing or read-only, raises
:class:`~clipcache.errors.OutputWriteError`: one sentence naming the file, the
cause and the fix, with no temporary file left behind.

Commands check their output paths first with :func:`check_output`: an output
that resolves to one of the inputs (the same path, a symlink or a hard link) is
refused, and so is an existing file that is not of the command's own output
kind unless the caller asks to overwrite it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from clipcache.errors import OutputPathError, OutputWriteError

__all__ = [
    "OutputKind",
    "atomic_output",
    "atomic_outputs",
    "check_output",
    "same_file",
    "temporary_path",
    "write_failure",
]

_FREE = "free disk space or write it elsewhere"
_WRITABLE = "check that the folder is writable"
_EXISTS = "check that the folder exists and is writable"
#: The errors that mean "this output cannot be written here", and what the user can do about each.
_WRITE_ERRORS = {
    errno.ENOSPC: _FREE,
    errno.EDQUOT: _FREE,
    errno.EFBIG: _FREE,
    errno.EROFS: _WRITABLE,
    errno.EACCES: _WRITABLE,
    errno.EPERM: _WRITABLE,
    errno.ENOENT: _EXISTS,
    errno.ENOTDIR: _EXISTS,
    errno.EISDIR: "give a file name, not a folder",
}
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


class OutputKind(NamedTuple):
    """What a command writes, and how to recognise an existing file of that kind.

    Attributes
    ----------
    name : str
        With its article, as messages use it: ``"a clipcache model file"``.
    recognise : callable
        ``recognise(path) -> bool``: cheap (reads a header, an attribute or a
        sidecar); an OSError it raises counts as "not of this kind".
    """

    name: str
    recognise: Callable[[Path], bool]


def temporary_path(path: str | os.PathLike) -> Path:
    """The name a file is written under before it replaces ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal ``(st_dev, st_ino)`` when both exist, else equal resolved paths.

    Symlinks, hard links, ``..`` and relative paths are all seen through; two
    distinct files with equal contents are not the same file.
    """
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _inside(path: Path, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (existing or not) lies somewhere below the existing folder ``folder``."""
    try:
        target = os.stat(folder)
    except OSError:
        return False
    for parent in path.resolve().parents:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(parent), target):
                return True
    return False


def check_output(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    param: str = "output",
    kind: OutputKind | None = None,
    overwrite: bool = False,
    folder: bool = False,
) -> Path:
    """Refuse an output path that would destroy an input, or replace a file of another kind unasked.

    Call it before any work. The checks, in order:

    1. ``output`` is one of ``inputs`` (:func:`same_file`: the same path, a
       symlink or a hard link to it): refused.
    2. With ``folder=True`` (``output`` is a folder the call fills), ``output``
       inside one of the ``inputs`` folders is refused as well.
    3. ``output`` exists, ``kind`` is given and ``kind.recognise(output)`` is
       false: refused unless ``overwrite``. A file of the command's own kind is
       replaced without asking, as a rerun should.

    Parameters
    ----------
    output : path
        The file (or folder) about to be written.
    inputs : iterable of path or None
        Every file or folder the call reads; None entries are skipped.
    param : str
        The API parameter that names ``output``; errors of checks 1 and 2 carry it.
    kind : OutputKind, optional
        What the call writes; None skips check 3.
    overwrite : bool
        Replace an existing file of another kind.
    folder : bool
        ``output`` is a folder: also refuse it inside an input folder.

    Returns
    -------
    Path
        ``output``.

    Raises
    ------
    OutputPathError
        ``param=param`` for checks 1 and 2, ``param="overwrite"`` for check 3.
    """
    output = Path(output)
    noun = "folder" if folder else "file"
    for source in inputs:
        if source is None:
            continue
        if same_file(output, source):
            raise OutputPathError(f"{output}: is the input {source}; write the output to another {noun}", param=param)
        if folder and _inside(output, source):
            raise OutputPathError(
                f"{output}: is inside the input folder {source}; write the output to another folder", param=param
            )
    if kind is not None and not overwrite and os.path.lexists(output):
        try:
            own = bool(kind.recognise(output))
        except OSError:
            own = False
        if not own:
            raise OutputPathError(
                f"{output}: exists and is not {kind.name}; give another file name or overwrite it", param="overwrite"
            )
    return output


def write_failure(exc: BaseException, paths: Sequence[str | os.PathLike] = ()) -> int | None:
    """The errno of ``exc`` when it means "the output cannot be written here"; None otherwise.

    Recognised: disk full or quota exceeded, read-only or forbidden folder,
    missing folder, a folder where a file belongs. The errno comes from an
    OSError's ``errno`` (h5py sets it), from ``errno = N`` in its text, or, for
    a faiss RuntimeError, from the system message at the end of its text.
    An OSError about another file than ``paths`` (an input that failed to
    read, say) is not a write failure.
    """
    if isinstance(exc, OSError):
        if exc.filename is not None and paths and not any(_same_name(exc.filename, p) for p in paths):
            return None
        code = exc.errno
        if code is None and (found := _ERRNO_IN_TEXT.search(str(exc))):
            code = int(found.group(1))
        return code if code in _WRITE_ERRORS else None
    if isinstance(exc, RuntimeError):  # faiss: "... write error in FILE: 61395 != 512000 (No space left on device)"
        text = str(exc)
        return next((code for code in _WRITE_ERRORS if os.strerror(code) in text), None)
    return None


def _same_name(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths spell the same location (absolute, normalised; the files need not exist)."""
    return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike], what: str = "the file") -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; on success rename each over its path, in order; on failure delete them.

    Every file is written completely before the first rename, so a failure
    while writing (a full disk) leaves all of ``paths`` as they were. The
    renames themselves are one call each: a crash between two of them leaves
    some files new and some old, so readers of a set must be able to tell (the
    last file of the set should name the others' contents, as an index sidecar
    names their hashes).

    Parameters
    ----------
    paths : sequence of path
        The files to replace; the first names the set in error messages.
    what : str
        How messages call the output: ``"the model file"``, ``"the index"``.

    Raises
    ------
    OutputWriteError
        When writing or renaming fails for a reason of :func:`write_failure`;
        other errors pass through unchanged. Either way no temporary file is left.
    """
    paths = [Path(p) for p in paths]
    tmps = [temporary_path(p) for p in paths]
    done = 0
    try:
        yield tmps
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
            done += 1
    except BaseException as exc:
        for tmp in tmps[done:]:
            with contextlib.suppress(OSError):
                tmp.unlink()
        code = write_failure(exc, [*paths, *tmps])
        if code is None:
            raise
        raise OutputWriteError(f"{paths[0]}: cannot write {what} ({os.strerror(code)}); {_WRITE_ERRORS[code]}") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "the file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure delete it.

    A full disk, or a missing or read-only folder, raises
    :class:`~clipcache.errors.OutputWriteError` naming ``path`` (see
    :func:`atomic_outputs`).

    Examples
    --------
    >>> with atomic_output("out.json") as tmp:        # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    with atomic_outputs([path], what) as (tmp,):
        yield tmp

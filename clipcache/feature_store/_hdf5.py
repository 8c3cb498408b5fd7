"""Low-level HDF5 file handling: opening, locking, crash recovery, free space, error messages.

A store is written in HDF5's single-writer/multiple-reader (SWMR) mode, which
orders every flush so that the file on disk is always consistent; a writer
leaves SWMR mode only for the moment of a structural change, which ends with a
flush. A killed writer therefore leaves a readable file whose superblock still
carries the "open for writing" flags. :func:`clear_open_flags` does what
``h5clear -s -i`` does, in pure Python, so that the next writer can reopen it;
the committed row counters (see :mod:`clipcache.feature_store.elements.split`)
then say which rows are whole. Readers need no write access for that: a file
left with the flags of a writer that died outside SWMR mode is read through
:class:`CrashedFile`, which clears them in memory only.

Writers serialise on an advisory exclusive ``flock`` of the store file itself;
HDF5's own file locking is off, because a SWMR writer drops it once appending
starts. A reader of a crashed file holds a shared ``flock``, so that no writer
recovers the file under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
from h5py import h5s

from clipcache.errors import StoreError, StoreFormatError, StoreLockedError, StoreWriteError

__all__ = [
    "LIBVER",
    "SPACE_MARGIN",
    "CrashedFile",
    "FileLock",
    "WriterLock",
    "check_free_space",
    "chunk_growth",
    "clear_open_flags",
    "describe_open_failure",
    "io_cause",
    "lookup3",
    "open_for_read",
    "open_for_write",
    "quiet_dealloc_errors",
    "write_error",
    "writer_flags",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Lowest format that supports SWMR, highest we need: readable by HDF5 >= 1.10.
LIBVER = ("v110", "v110")

_FLAGS_OFFSET = 11
_SUPERBLOCK_BYTES = 48
#: Superblock status flags: a writer has the file open, in SWMR mode or not.
WRITE_ACCESS, SWMR_WRITE_ACCESS = 0x01, 0x04
#: How long a reader waits for a live writer to finish a structural change, and a writer for readers of a crashed file.
_WAIT_S = 10.0
_UINT32 = 0xFFFFFFFF
#: Free bytes a write must leave on the file system, beyond the chunks it allocates (HDF5 metadata).
SPACE_MARGIN = 256 << 10


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _UINT32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum HDF5 puts on its metadata.

    Parameters
    ----------
    data : bytes
        The bytes to hash.
    initval : int
        Seed, 0 for HDF5.

    Returns
    -------
    int
        The 32-bit checksum.
    """
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _UINT32
    i = 0
    word = int.from_bytes
    while n > 12:
        a = (a + word(data[i : i + 4], "little")) & _UINT32
        b = (b + word(data[i + 4 : i + 8], "little")) & _UINT32
        c = (c + word(data[i + 8 : i + 12], "little")) & _UINT32
        a = (a - c) & _UINT32; a ^= _rot(c, 4); c = (c + b) & _UINT32  # noqa: E702
        b = (b - a) & _UINT32; b ^= _rot(a, 6); a = (a + c) & _UINT32  # noqa: E702
        c = (c - b) & _UINT32; c ^= _rot(b, 8); b = (b + a) & _UINT32  # noqa: E702
        a = (a - c) & _UINT32; a ^= _rot(c, 16); c = (c + b) & _UINT32  # noqa: E702
        b = (b - a) & _UINT32; b ^= _rot(a, 19); a = (a + c) & _UINT32  # noqa: E702
        c = (c - b) & _UINT32; c ^= _rot(b, 4); b = (b + a) & _UINT32  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + word(tail[0:4], "little")) & _UINT32
    b = (b + word(tail[4:8], "little")) & _UINT32
    c = (c + word(tail[8:12], "little")) & _UINT32
    c ^= b; c = (c - _rot(b, 14)) & _UINT32  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _UINT32  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _UINT32  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _UINT32  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _UINT32  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _UINT32  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _UINT32  # noqa: E702
    return c


def _cleared_superblock(path: Path, head: bytes, size: int) -> bytes | None:
    """The first 48 bytes of ``path`` with the status flags cleared, as ``h5clear -s -i`` writes them.

    The flags are zeroed, the end-of-allocation address is raised to the file's
    ``size`` (so that space written after the last superblock update is inside
    the file), and the checksum is redone. Returns None when no flag is set.
    """
    sb = bytearray(head[:_SUPERBLOCK_BYTES])
    if len(sb) < _SUPERBLOCK_BYTES or sb[:8] != HDF5_SIGNATURE or sb[8] not in (2, 3) or sb[9] != 8:
        raise StoreFormatError(
            f"{path}: cannot recover the file after a crash: its HDF5 superblock is not "
            "version 2 or 3 with 8-byte addresses"
        )
    if lookup3(bytes(sb[:44])) != int.from_bytes(sb[44:48], "little"):
        raise StoreFormatError(f"{path}: the HDF5 superblock checksum is wrong; the file is corrupt")
    if sb[_FLAGS_OFFSET] == 0:
        return None
    sb[_FLAGS_OFFSET] = 0
    eoa = int.from_bytes(sb[28:36], "little")
    sb[28:36] = max(eoa, size).to_bytes(8, "little")
    sb[44:48] = lookup3(bytes(sb[:44])).to_bytes(4, "little")
    return bytes(sb)


def clear_open_flags(path: Path) -> bool:
    """Clear the "open for writing" flags a killed writer left in the superblock.

    Like ``h5clear -s -i``: the status flags are zeroed, the end-of-allocation
    address is raised to the file's size (so that space written after the last
    superblock update is never handed out again), and the checksum is redone.
    The caller must hold the writer lock.

    Parameters
    ----------
    path : Path
        An HDF5 file with a version 2 or 3 superblock at offset 0.

    Returns
    -------
    bool
        True if flags were set and have been cleared.
    """
    with open(path, "r+b") as fh:
        sb = _cleared_superblock(path, fh.read(_SUPERBLOCK_BYTES), os.path.getsize(path))
        if sb is None:
            return False
        fh.seek(0)
        fh.write(sb)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class CrashedFile(io.RawIOBase):
    """A read-only view of a file whose writer died outside SWMR mode, its superblock flags cleared in memory.

    HDF5 refuses to open a file whose superblock says a writer has it open
    (unless the writer was in SWMR mode), and clearing the flags on disk needs
    write access. This view serves the file's bytes with the first 48 replaced
    by the superblock :func:`clear_open_flags` would write, so h5py's
    ``fileobj`` driver opens the file as the next writer would find it. That is
    safe because a writer outside SWMR mode only makes structural changes, each
    ended by a flush, so the file holds the state of its last flush; the caller
    holds a shared lock so that no writer changes the file meanwhile.
    """

    def __init__(self, path: Path):
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            sb = _cleared_superblock(path, self._fh.read(_SUPERBLOCK_BYTES), os.fstat(self._fh.fileno()).st_size)
        except BaseException:
            self._fh.close()
            raise
        self._superblock = sb or b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = os.preadv(self._fh.fileno(), [view], self._pos)
        head = len(self._superblock)
        if self._pos < head and n:
            k = min(head, self._pos + n) - self._pos
            view[:k] = self._superblock[self._pos : self._pos + k]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


#: The descriptors of the locks this process holds. A child forked meanwhile (a DataLoader worker) closes its
#: copies: a ``flock`` lasts until the last copy of its descriptor is closed, so a child that outlived its
#: parent's close (an interrupted run whose workers a traceback keeps alive) would otherwise keep the store locked.
_HELD: set[int] = set()


def _close_held_locks() -> None:
    """In a forked child: close the inherited descriptors of the parent's locks (the parent's stay)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_locks)


class FileLock:
    """An advisory ``flock`` on a store file: exclusive for its writer, shared for readers of a crashed file.

    The kernel releases it when the process dies, so a killed writer never
    leaves a stale lock behind. It is this process's alone: a child forked while
    it is held does not keep it (:data:`_HELD`).

    Parameters
    ----------
    path : Path
    shared : bool
        A reader's shared lock (only taken with :meth:`try_acquire`).
    """

    def __init__(self, path: Path, shared: bool = False):
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the exclusive lock, waiting a while for readers of a crashed file; StoreLockedError if a writer has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the store for writing ({exc.strerror})") from None
        deadline = time.monotonic() + _WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            try:  # succeeds only when every holder is a reader
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreLockedError(
                    f"{self.path}: another process is writing this store; wait for it to finish"
                ) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
            if time.monotonic() > deadline:
                os.close(fd)
                raise StoreLockedError(
                    f"{self.path}: readers have the store open as a crashed writer left it; "
                    "close them, then open it for writing"
                )
            time.sleep(0.05)
        self._fd = fd
        _HELD.add(fd)

    def try_acquire(self) -> bool:
        """Take the lock without waiting and without write access; False if another process holds it exclusively."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        _HELD.add(fd)
        return True

    def release(self) -> None:
        """Unlock, then close: the unlock frees the lock even while a child forked meanwhile has not yet closed its copy."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


#: The writer's lock (kept as a name: it is the exclusive :class:`FileLock`).
WriterLock = FileLock


def describe_open_failure(path: Path, exc: Exception) -> StoreError:
    """Turn an h5py open failure into a one-line error that names the file."""
    if not path.exists():
        return StoreError(f"{path}: no such file")
    if path.is_dir():
        return StoreFormatError(f"{path}: is a directory, not a feature store file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        return StoreFormatError(f"{path}: not an HDF5 file, so not a clipcache feature store")
    reason = str(exc).split("(")[0].strip().rstrip(":") or type(exc).__name__
    return StoreFormatError(f"{path}: the HDF5 file is truncated or corrupt ({reason})")


def writer_flags(path: Path) -> int:
    """The superblock's file-consistency flags: non-zero while a writer has the file open, or died."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return 0
    if len(head) < 12 or head[:8] != HDF5_SIGNATURE or head[8] not in (2, 3):
        return 0
    return head[_FLAGS_OFFSET]


def _open_crashed(path: Path) -> tuple[h5py.File, Callable[[], None]] | None:
    """Open a file left by a writer that died outside SWMR mode, holding a shared lock; None if a writer is alive."""
    lock = FileLock(path, shared=True)
    if not lock.try_acquire():
        return None
    flags = writer_flags(path)  # no writer can start now; see whether one finished meanwhile
    if not flags or flags & SWMR_WRITE_ACCESS:
        lock.release()
        return None
    raw = None
    try:
        raw = CrashedFile(path)
        h5 = h5py.File(raw, "r")
    except BaseException:
        if raw is not None:
            raw.close()
        lock.release()
        raise

    def release() -> None:
        raw.close()
        lock.release()

    return h5, release


def open_for_read(path: Path) -> tuple[h5py.File, Callable[[], None] | None]:
    """Open a store read-only; works while a writer has it, after a crash, and without write access.

    SWMR reading is used only when a writer holds (or held) the file in SWMR mode:
    it skips HDF5's end-of-file check, so a truncated file would otherwise go
    unnoticed. A file whose writer holds it outside SWMR mode (a structural
    change, a moment long) is waited for; one whose writer died there is read
    through :class:`CrashedFile`.

    Returns
    -------
    h5py.File
    release : callable or None
        To call after closing the file (it closes the crashed-file view and its lock).
    """
    deadline = time.monotonic() + _WAIT_S
    delay, error = 0.01, None
    while True:
        flags = writer_flags(path)
        if flags and not flags & SWMR_WRITE_ACCESS:
            opened = _open_crashed(path)
            if opened is not None:
                return opened
            error = None  # a live writer is making a structural change (or has just finished it)
        else:
            try:
                return h5py.File(path, "r", locking=False, **({"swmr": True} if flags else {})), None
            except (OSError, ValueError) as exc:
                error = exc
            # A writer opening the file, or switching to SWMR, can make a reader fail for a moment.
            if not (flags or writer_flags(path)):
                break
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(0.2, 2 * delay)
    if error is None:
        raise StoreLockedError(
            f"{path}: a writer has held the store outside SWMR mode for {_WAIT_S:.0f} s; try again when it has finished"
        )
    raise describe_open_failure(path, error) from None


def open_for_write(path: Path, create: bool) -> h5py.File:
    """Open (or create, truncating) a store for writing; the caller holds the lock."""
    if create:
        return h5py.File(path, "w", libver=LIBVER, locking=False)
    try:
        return h5py.File(path, "r+", libver=LIBVER, locking=False)
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise describe_open_failure(path, exc) from None
    # A writer died holding the file: clear its flags, then open normally.
    clear_open_flags(path)
    try:
        return h5py.File(path, "r+", libver=LIBVER, locking=False)
    except OSError as exc:
        raise describe_open_failure(path, exc) from None


# -- write failures and free space ----------------------------------------------------


def io_cause(exc: BaseException) -> str:
    """The cause of a failed write, in a few words: the OS error of an h5py failure, or its first line."""
    code = getattr(exc, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code:
        return os.strerror(code)
    return str(exc).splitlines()[0].split(" (")[0] if str(exc) else type(exc).__name__


def write_error(path: Path, what: str, *, reopen: bool = False) -> StoreWriteError:
    """The one error of a write that failed: ``cannot WHAT (CAUSE)``, and what is kept or what to do."""
    if reopen:
        return StoreWriteError(f"{path}: cannot {what}; close the store and open it again")
    return StoreWriteError(f"{path}: cannot {what}; what was committed before is kept")


@contextlib.contextmanager
def quiet_dealloc_errors() -> Iterator[None]:
    """Silence h5py's "Exception ignored" reports while objects whose flush failed are freed.

    After a failed write, HDF5 retries the flush of each dirty dataset when its
    handle is freed, fails again, and h5py can only print the error. The caller
    has already raised one error that names the file and the cause.
    """
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def quiet_unraisable(report) -> None:
        if not isinstance(report.exc_value, (OSError, RuntimeError)):
            unraisable(report)

    def quiet_excepthook(kind, value, tb) -> None:  # Cython prints a __dealloc__ error through it first
        if not isinstance(value, (OSError, RuntimeError)):
            excepthook(kind, value, tb)

    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = unraisable, excepthook


def write_rows(ds: h5py.Dataset, start: int, values: np.ndarray) -> None:
    """Write ``values`` as rows ``start, start + 1, ...`` of ``ds`` (chunked along axis 0), which then ends there; flush it.

    What ``ds.resize`` and ``ds[start:stop] = values`` do, in h5py's low-level
    calls: the store's writer thread runs this for every column of every batch,
    and the high-level selection machinery costs more Python time, with the GIL
    held, than the write, during which h5py releases it. The flush comes now, so
    that a failed write raises here (a dataset freed later can only print it).
    """
    values = np.ascontiguousarray(values)
    dsid = ds.id
    stop = start + len(values)
    extent = dsid.shape
    if extent[0] != stop:
        dsid.set_extent((stop, *extent[1:]))
    if len(values) == 0:  # nothing to write or flush; the extent says where the column ends
        return
    file_space = dsid.get_space()
    file_space.select_hyperslab((start,) + (0,) * (values.ndim - 1), values.shape)
    dsid.write(h5s.create_simple(values.shape), file_space, values)
    ds.flush()


def chunk_growth(ds: h5py.Dataset, rows: int) -> int:
    """Bytes of the chunks HDF5 allocates when ``ds`` (chunked along axis 0) grows to ``rows`` rows."""
    chunks = ds.chunks
    have = ds.id.shape[0]
    if chunks is None or rows <= have:
        return 0
    new_chunks = -(-rows // chunks[0]) - (-(-have // chunks[0]))
    return new_chunks * ds.dtype.itemsize * math.prod(chunks)


def check_free_space(path: Path, need: int) -> None:
    """Raise StoreWriteError (ENOSPC) unless the file system of ``path`` has ``need`` bytes and the margin free.

    HDF5 can crash, or leave its metadata half-written, when a write meets a full
    disk; checking before each write stops a run cleanly before that.
    """
    try:
        st = os.statvfs(path.parent if path.parent != Path("") else Path("."))
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < need + SPACE_MARGIN:
        raise StoreWriteError(
            f"{path}: {os.strerror(errno.ENOSPC)}: the next write needs about {_size(need + SPACE_MARGIN)} "
            f"and the file system has {_size(free)} free; what was committed before is kept"
        )


def _size(n: int) -> str:
    """``n`` bytes in binary units, e.g. ``4.2 MiB``."""
    if n < 1024:
        return f"{n} bytes"
    value, units = n / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]}"

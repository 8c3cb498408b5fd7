"""Low-level HDF5 file handling: opening, locking, crash recovery, error messages.

A store is written in HDF5's single-writer/multiple-reader (SWMR) mode, which
orders every flush so that the file on disk is always consistent. A writer
killed mid-append therefore leaves a readable file whose superblock still
carries the "open for writing" flags. :func:`clear_open_flags` does what
``h5clear -s -i`` does, in pure Python, so that the next writer can reopen it;
the committed row counters (see :mod:`clipcache.feature_store.elements.split`) then say
which rows are whole.

Writers serialise on an advisory ``flock`` of the store file itself; HDF5's own
file locking is off, because a SWMR writer drops it once appending starts.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import h5py

from clipcache.errors import StoreError, StoreFormatError, StoreLockedError

__all__ = [
    "LIBVER",
    "WriterLock",
    "clear_open_flags",
    "describe_open_failure",
    "lookup3",
    "open_for_read",
    "open_for_write",
    "writer_flags",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Lowest format that supports SWMR, highest we need: readable by HDF5 >= 1.10.
LIBVER = ("v110", "v110")

_FLAGS_OFFSET = 11
_READ_ATTEMPTS = 10
_UINT32 = 0xFFFFFFFF


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
        sb = bytearray(fh.read(48))
        if sb[:8] != HDF5_SIGNATURE or sb[8] not in (2, 3) or sb[9] != 8:
            raise StoreFormatError(
                f"{path}: cannot recover the file after a crash: its HDF5 superblock is not "
                "version 2 or 3 with 8-byte addresses"
            )
        if lookup3(bytes(sb[:44])) != int.from_bytes(sb[44:48], "little"):
            raise StoreFormatError(f"{path}: the HDF5 superblock checksum is wrong; the file is corrupt")
        if sb[_FLAGS_OFFSET] == 0:
            return False
        sb[_FLAGS_OFFSET] = 0
        eoa = int.from_bytes(sb[28:36], "little")
        sb[28:36] = max(eoa, os.path.getsize(path)).to_bytes(8, "little")
        sb[44:48] = lookup3(bytes(sb[:44])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(sb)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class WriterLock:
    """An exclusive advisory lock on a store file, held for a writer's lifetime.

    The kernel releases it when the process dies, so a killed writer never
    leaves a stale lock behind.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the store for writing ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{self.path}: another process is writing this store; wait for it to finish"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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


def open_for_read(path: Path) -> h5py.File:
    """Open a store read-only; works while a SWMR writer appends, and after a crash.

    SWMR reading is used only when a writer holds (or held) the file: it skips
    HDF5's end-of-file check, so a truncated file would otherwise go unnoticed.
    """
    for attempt in range(_READ_ATTEMPTS):
        flags = writer_flags(path)
        try:
            return h5py.File(path, "r", locking=False, **({"swmr": True} if flags else {}))
        except (OSError, ValueError) as exc:
            error = exc
        # A writer opening the file, or switching to SWMR, can make a reader fail for a moment.
        if not (flags or writer_flags(path)):
            break
        time.sleep(0.02 * (attempt + 1))
    if "already open for write" in str(error):
        raise StoreLockedError(
            f"{path}: a writer has the store open and is not appending yet, or died before it "
            "appended; try again, or open it for writing to recover it"
        ) from None
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

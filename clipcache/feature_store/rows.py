"""Row selections and chunk-aware reads of HDF5 datasets.

h5py's fancy indexing needs increasing, unique indices and builds one
hyperslab per index, which is slow for thousands of rows. :func:`read_rows`
instead groups the wanted rows by HDF5 chunk, reads one contiguous span per
chunk, and gathers, so a random subset costs at most one read per chunk it
touches, and the rows come back in the order asked, repeats included.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from clipcache.errors import InvalidParameterError, StoreError

__all__ = ["Rows", "normalize_rows", "read_rows"]

#: A row selection: None (all rows), a slice, an index array or list (any order,
#: repeats allowed), or a boolean mask over the rows.
Rows = None | slice | np.ndarray | list


def normalize_rows(rows: Rows, n: int, where: str) -> slice | np.ndarray:
    """Check a row selection against ``n`` committed rows.

    Returns a step-1 slice within ``[0, n)`` or an int64 index array.
    """
    if rows is None:
        return slice(0, n)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step == 1:
            return slice(start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    idx = np.asarray(rows)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise StoreError(f"{where}: a boolean row mask must have shape ({n},), not {idx.shape}", param="rows")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise StoreError(f"{where}: rows must be integers, not {idx.dtype}", param="rows")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise StoreError(f"{where}: row {bad} is outside the {n} committed rows", param="rows")
    return idx


def read_rows(ds: h5py.Dataset, sel: slice | np.ndarray, allocate=None) -> np.ndarray:
    """Read rows ``sel`` of ``ds``; float features come back as float32.

    Parameters
    ----------
    ds : h5py.Dataset of shape (N, ...) or (N,)
    sel : slice (step 1) or ndarray of shape (k,), int64
        From :func:`normalize_rows`.
    allocate : callable, optional
        ``allocate(shape, dtype)`` gives a writable C-contiguous array (pinned
        memory, say) that a span of rows is read straight into, when it can be:
        ``sel`` a slice, and ``ds`` float32 (or another type that is returned as
        stored) in whole-row chunks without filters (:func:`_raw_span_reader`).
        Otherwise the rows come back in a new array, as without it.

    Returns
    -------
    ndarray of shape (k, ...)
    """
    out_dtype = np.float32 if ds.dtype.kind == "f" else ds.dtype
    raw = _raw_span_reader(ds)
    read_span = raw or (lambda lo, hi: ds[lo:hi])
    if isinstance(sel, slice):
        if sel.stop <= sel.start:
            return np.empty((0,) + ds.shape[1:], dtype=out_dtype)
        if allocate is not None and raw is not None and ds.dtype == out_dtype:
            shape = (sel.stop - sel.start, *ds.shape[1:])
            out = allocate(shape, ds.dtype)
            if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == ds.dtype
                    and out.flags.c_contiguous and out.flags.writeable):
                got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
                raise InvalidParameterError(
                    f"allocate{shape, np.dtype(ds.dtype).name} returned {got}; it must return a writable C-contiguous "
                    "array of that shape and dtype",
                    param="allocate",
                )
            return raw(sel.start, sel.stop, out)
        return np.asarray(read_span(sel.start, sel.stop)).astype(out_dtype, copy=False)
    if sel.size == 0:
        return np.empty((0,) + ds.shape[1:], dtype=out_dtype)
    uniq, inverse = np.unique(sel, return_inverse=True)
    chunk_rows = ds.chunks[0] if ds.chunks else max(1, len(uniq))
    # Split the sorted rows wherever the next one lies in another chunk.
    cuts = np.flatnonzero(np.diff(uniq // chunk_rows)) + 1
    gathered = np.empty((len(uniq),) + ds.shape[1:], dtype=out_dtype)
    start = 0
    for stop in [*cuts.tolist(), len(uniq)]:
        lo, hi = int(uniq[start]), int(uniq[stop - 1]) + 1
        gathered[start:stop] = read_span(lo, hi)[uniq[start:stop] - lo]
        start = stop
    return gathered[inverse]


#: Spans of at least this many bytes are read by several threads (:func:`_raw_span_reader`).
PARALLEL_READ_BYTES = 8 << 20
#: The most threads one span read uses.
READ_THREADS = 8


def _raw_span_reader(ds: h5py.Dataset):
    """A reader of rows [lo, hi) that bypasses HDF5's chunk pipeline, or None if unsafe.

    For chunks that are unfiltered, native-endian and span whole rows, the bytes
    of rows a..b of a chunk are one contiguous run in the file, so they can be
    ``preadv``-ed straight into the output array: about 1.3x faster than
    ``read_direct`` on a full read (see benchmarks/store_io.py). HDF5 is asked
    where each chunk lies, in the calling thread; a span of at least
    :data:`PARALLEL_READ_BYTES` is then read by up to :data:`READ_THREADS`
    threads (``preadv`` takes its offset, so they share one descriptor, and it
    releases the GIL), which copies from the page cache about twice as fast as
    one thread on two cores.
    """
    if (
        ds.chunks is None
        or ds.chunks[1:] != ds.shape[1:]
        or ds.compression is not None
        or ds.shuffle
        or ds.fletcher32
        or not ds.dtype.isnative
        or ds.dtype.kind not in "fiu"
        or ds.file.driver != "sec2"
        or ds.file.userblock_size
    ):
        return None
    chunk_rows = ds.chunks[0]
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))

    def read_span(lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [lo, hi) in ``out`` (checked by the caller: shape (hi - lo, ...), ``ds``'s dtype, C-contiguous) or
        in a new array."""
        if out is None:
            out = np.empty((hi - lo,) + ds.shape[1:], dtype=ds.dtype)
        flat = memoryview(out.reshape(-1)).cast("B")
        pieces = []  # (view, file offset) of each chunk's part of the span
        for first in range(lo - lo % chunk_rows, hi, chunk_rows):
            a, b = max(lo, first), min(hi, first + chunk_rows)
            info = ds.id.get_chunk_info_by_coord((first,) + (0,) * (ds.ndim - 1))
            if info.byte_offset is None:  # never written: HDF5 knows the fill value
                part = ds[a:b]
                if len(part) != b - a:  # a reader's view of a file a writer changed meanwhile: the caller reopens it
                    raise OSError(f"{ds.name}: rows {a}..{b} lie past its {ds.shape[0]} rows")
                out[a - lo : b - lo] = part
                continue
            pieces.append((flat[(a - lo) * row_bytes : (b - lo) * row_bytes], info.byte_offset + (a - first) * row_bytes))
        fd = os.open(ds.file.filename, os.O_RDONLY)
        try:
            threads = min(READ_THREADS, os.cpu_count() or 1, len(pieces))
            if threads < 2 or out.nbytes < PARALLEL_READ_BYTES:
                for view, offset in pieces:
                    _pread_all(fd, view, offset)
            else:  # a pool per span: a pool made before a fork would have no threads in the child
                with ThreadPoolExecutor(threads, thread_name_prefix="clipcache-read") as pool:
                    for done in [pool.submit(_pread_all, fd, view, offset) for view, offset in pieces]:
                        done.result()
        finally:
            os.close(fd)
        return out

    return read_span


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` on; OSError at an early end of file."""
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        view, offset = view[got:], offset + got

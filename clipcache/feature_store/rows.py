"""Row selections and chunk-aware reads of HDF5 datasets.

h5py's fancy indexing needs increasing, unique indices and builds one
hyperslab per index, which is slow for thousands of rows. :func:`read_rows`
instead groups the wanted rows by HDF5 chunk, reads one contiguous span per
chunk, and gathers, so a random subset costs at most one read per chunk it
touches, and the rows come back in the order asked, repeats included.
"""

from __future__ import annotations

import h5py
import numpy as np

from clipcache.errors import StoreError

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
            raise StoreError(f"{where}: a boolean row mask must have shape ({n},), not {idx.shape}")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise StoreError(f"{where}: rows must be integers, not {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise StoreError(f"{where}: row {bad} is outside the {n} committed rows")
    return idx


def read_rows(ds: h5py.Dataset, sel: slice | np.ndarray) -> np.ndarray:
    """Read rows ``sel`` of ``ds``; float features come back as float32, strings as str.

    Parameters
    ----------
    ds : h5py.Dataset of shape (N, ...) or (N,)
    sel : slice (step 1) or ndarray of shape (k,), int64
        From :func:`normalize_rows`.

    Returns
    -------
    ndarray of shape (k, ...)
    """
    is_str = h5py.check_string_dtype(ds.dtype) is not None
    out_dtype = object if is_str else (np.float32 if ds.dtype.kind == "f" else ds.dtype)
    reader = ds.asstr() if is_str else ds
    if isinstance(sel, slice):
        if sel.stop <= sel.start:
            return np.empty((0,) + ds.shape[1:], dtype=out_dtype)
        if not is_str and ds.dtype == out_dtype:
            out = np.empty((sel.stop - sel.start,) + ds.shape[1:], dtype=out_dtype)
            ds.read_direct(out, source_sel=np.s_[sel.start : sel.stop])
            return out
        return np.asarray(reader[sel.start : sel.stop]).astype(out_dtype, copy=False)
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
        span = np.asarray(reader[lo:hi])
        gathered[start:stop] = span[uniq[start:stop] - lo]
        start = stop
    return gathered[inverse]

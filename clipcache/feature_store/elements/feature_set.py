"""The feature-set element: what one backbone's embeddings are (dim, dtype, normalisation, provenance).

A feature set is a group ``/feature_sets/<name>`` with attributes only; its
rows live in each split (:mod:`clipcache.feature_store.elements.split`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from clipcache.errors import StoreError
from clipcache.feature_store import schema
from clipcache.feature_store.registry import Encoding

__all__ = ["DTYPES", "ENCODING", "FeatureSetInfo", "check_rows", "chunk_rows"]

#: On-disk dtypes a feature set may have.
DTYPES = ("float32", "float16")
#: How far from 1 the norm of a row of a normalised feature set may be.
_NORM_TOL = 1e-3
#: The largest finite value of each on-disk dtype.
_DTYPE_MAX = {"float32": float(np.finfo(np.float32).max), "float16": float(np.finfo(np.float16).max)}


@dataclass(frozen=True)
class FeatureSetInfo:
    """Description of one feature set (one backbone's embeddings).

    Attributes
    ----------
    name : str
    dim : int
        Embedding dimension d.
    dtype : str
        On-disk dtype, ``"float32"`` or ``"float16"``; reads always return float32.
    normalized : bool
        Whether every row is L2-normalised.
    provenance : dict
        Model, pretrained tag, weights sha256, preprocessing, library versions, time.
    """

    name: str
    dim: int
    dtype: str
    normalized: bool
    provenance: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The description that must match for rows to share this feature set's name (see ``schema.identity``)."""
        return schema.identity(self.provenance, self.dim, self.dtype, self.normalized)


def _read(group: h5py.Group, path: Path) -> FeatureSetInfo:
    a = group.attrs
    return FeatureSetInfo(
        name=group.name.rsplit("/", 1)[-1],
        dim=int(a["dim"]),
        dtype=str(a["dtype"]),
        normalized=bool(a["normalized"]),
        provenance=json.loads(a["provenance"]),
    )


def _write(group: h5py.Group, info: FeatureSetInfo) -> FeatureSetInfo:
    group.attrs.update(
        dim=info.dim, dtype=info.dtype, normalized=info.normalized, provenance=schema.dump_json(info.provenance)
    )
    return info


ENCODING = Encoding(schema.FEATURE_SET, 1, write=_write, readers={1: _read})


def chunk_rows(info: FeatureSetInfo) -> int:
    """Rows per HDF5 chunk of this feature set's column in a split: about ``schema.FEATURE_CHUNK_BYTES``."""
    return max(1, schema.FEATURE_CHUNK_BYTES // (info.dim * np.dtype(info.dtype).itemsize))


def check_rows(path: Path, split: str, info: FeatureSetInfo, x, b: int | None) -> np.ndarray:
    """Check rows about to be appended to feature set ``info`` in ``split``.

    Parameters
    ----------
    path : Path
        The store, for messages.
    split : str
    info : FeatureSetInfo
    x : array-like of shape (b, d), floating point
    b : int or None
        The number of rows required, or None for any.

    Returns
    -------
    ndarray of shape (b, d), float32

    Raises
    ------
    StoreError
        On a wrong shape or dtype, NaN or inf, values so large that a row's squared
        norm overflows float32 (or that float16 storage cannot hold), or a row that
        is not unit-norm in a normalised feature set.
    """
    name = info.name
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != info.dim or (b is not None and x.shape[0] != b):
        want = f"({'b' if b is None else b}, {info.dim})"
        raise StoreError(
            f"{path}: split {split!r}: features {name!r} have shape {x.shape}, expected {want}", param="features"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise StoreError(f"{path}: features {name!r} must be floating point, not {x.dtype}", param="features")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise StoreError(f"{path}: split {split!r}: features {name!r} contain NaN or inf", param="features")
    _check_magnitude(path, split, info, x)
    if info.normalized and len(x):
        norms = np.linalg.norm(x, axis=1)
        if np.abs(norms - 1).max() > _NORM_TOL:
            raise StoreError(
                f"{path}: feature set {name!r} is marked normalized but a row has norm "
                f"{norms[np.abs(norms - 1).argmax()]:.4f}; L2-normalise the features first",
                param="features",
            )
    return x


def _check_magnitude(path: Path, split: str, info: FeatureSetInfo, x: np.ndarray) -> None:
    """Refuse rows whose squared norm overflows float32, or values the on-disk dtype cannot hold.

    Every reader computes inner products, norms and covariances in float32; a
    finite value of 1e30 turns them into inf and NaN far from where it entered.
    """
    if not len(x):
        return
    largest = float(np.abs(x).max())
    with np.errstate(over="ignore"):
        squared = np.einsum("ij,ij->i", x, x)
    if largest > _DTYPE_MAX[info.dtype]:
        why = f"larger than {info.dtype} storage holds"
    elif not np.isfinite(squared).all():
        why = "so large that a row's squared norm overflows float32"
    else:
        return
    raise StoreError(
        f"{path}: split {split!r}: features {info.name!r} hold a value of {largest:.3g}, {why}; scale the features down",
        param="features",
    )

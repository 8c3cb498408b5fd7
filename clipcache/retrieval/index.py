"""FAISS indexes over one feature set of one split of a feature store.

An index is built block by block from :meth:`FeatureStore.iter_chunks`, so the
store is never read whole (the index itself holds the vectors, as FAISS does).
It searches with faiss or, for the exact ``"Flat"`` index, with the torch
backend on any torch device (:mod:`clipcache.retrieval.backends`,
:mod:`clipcache.retrieval.torch_flat`). A faiss index is saved beside the store
as three files::

    <store stem>.<split>.<feature set>.faiss            faiss.write_index
    <store stem>.<split>.<feature set>.faiss.rows.npy   faiss id -> store row, int64
    <store stem>.<split>.<feature set>.faiss.json       sidecar: fingerprint, metric, ...

A Flat index built by the torch backend is saved as the last two only
(sidecar format version 2, ``"vectors": "store"``): its vectors are the
store's, read again when it is loaded (after the fingerprint check). Either
backend loads either kind of Flat index.

The files commit as a set (:func:`clipcache._io.atomic_outputs`): all
three are written to temporary files first, so a failed write (a full disk)
leaves the previous set whole; then they are renamed over the old ones, the
sidecar last. The sidecar names the SHA-256 of the index and row files it
belongs to, and :func:`load_index` checks both while it reads them, so a crash
between two renames, which leaves files of two builds, is refused with
:class:`~clipcache.errors.IndexMismatchError`; it is never served as a mix.

Loading checks the store's fingerprint (:meth:`FeatureStore.fingerprint`): an
index built before rows were added, or from a recreated store, is refused with
:class:`~clipcache.errors.IndexMismatchError`.

Defaults, chosen with ``benchmarks/search_speed.py``:

* the factory is ``"Flat"`` (exact inner product);
* IVF indexes search ``nprobe = max(1, nlist // 16)`` lists;
* HNSW indexes search with ``efSearch = 128``;
* indexes that need training are trained on a random sample of
  ``max(64 * nlist, 20000)`` rows (all rows when the split is smaller).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from clipcache._io import OutputKind, atomic_outputs, check_output
from clipcache._version import __version__
from clipcache.errors import (
    ClipCacheError,
    IndexMismatchError,
    InvalidFeaturesError,
    InvalidParameterError,
    OutputWriteError,
    QueryError,
)
from clipcache.feature_store import FeatureStore
from clipcache.retrieval.backends import (
    BackendChoice,
    check_backend,
    choose_backend,
    is_flat,
)
from clipcache.retrieval.torch_flat import TorchFlatIndex, check_torch_sizes

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EF_SEARCH",
    "DEFAULT_FACTORY",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "INDEX_FORMAT_VERSIONS",
    "QueryError",
    "SearchResult",
    "StoreIndex",
    "build_index",
    "check_feature_set",
    "check_positive",
    "default_feature_set",
    "default_nprobe",
    "gpu_available",
    "index_path",
    "check_index_output",
    "index_store",
    "is_index",
    "load_index",
    "read_sidecar",
    "resolve_index_path",
    "rows_path",
    "sidecar_path",
]

INDEX_FORMAT = "clipcache-faiss-index"
INDEX_FORMAT_VERSION = 1
#: Sidecar format versions and where each keeps the vectors: 1 in the faiss file, 2 in the store (torch backend).
INDEX_FORMAT_VERSIONS = {1: "index_file", 2: "store"}
DEFAULT_FACTORY = "Flat"
DEFAULT_EF_SEARCH = 128
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_MIN_TRAIN = 20_000
_TRAIN_PER_LIST = 64
_GPU_MAX_K = 2048
_HASH_BLOCK = 1 << 20
#: The structure fields of an exact Flat index (no IVF lists, no graph).
_FLAT = {"nlist": 0, "hnsw": False}
#: The fix that messages about a missing, stale or damaged index name.
_REBUILD = "rebuild it with build_index and StoreIndex.save (clipcache index)"
# faiss's exact search multiplies blocks of (queries x database rows) with BLAS.
# Its defaults (4096 x 1024) make many small sgemm calls; 1024 x 16384 (64 MiB of
# scratch) measured 1.5-2x faster on 2 busy cores (benchmarks/search_speed.py).
_BLAS_QUERY_BLOCK = 1024
_BLAS_DATABASE_BLOCK = 16384


@dataclass(frozen=True)
class SearchResult:
    """Raw result of :meth:`StoreIndex.search`.

    Attributes
    ----------
    scores : ndarray of shape (q, k), float32
        Inner products (metric ``"ip"``, larger is nearer) or squared L2
        distances (metric ``"l2"``, smaller is nearer), best first.
    rows : ndarray of shape (q, k), int64
        Store rows of the neighbours in the indexed split; -1 where the index
        returned fewer than k neighbours (an IVF search that probed too few lists).
    """

    scores: np.ndarray
    rows: np.ndarray


@contextmanager
def _blas_blocks():
    """Use larger faiss BLAS blocks for one search, then restore faiss's (process-wide) values."""
    cvar = faiss.cvar
    saved = (cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs)
    cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = _BLAS_QUERY_BLOCK, _BLAS_DATABASE_BLOCK
    try:
        yield
    finally:
        cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = saved


def gpu_available() -> bool:
    """Whether faiss was built with GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_positive(value, param: str, *, optional: bool = True) -> int | None:
    """``value`` as an int when it is a positive integer (or None when ``optional``).

    Raises
    ------
    InvalidParameterError
        With ``param`` set, for 0, a negative number, a bool or a non-integer.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{param} must be a positive integer, not {value!r}", param=param)
    return int(value)


def check_feature_set(store, feature_set: str) -> str:
    """``feature_set``, or ClipCacheError (``param="feature_set"``) when the store does not have it."""
    if feature_set not in store.feature_sets:
        known = ", ".join(store.feature_sets) or "none"
        raise ClipCacheError(f"{store.path}: no feature set {feature_set!r} (the store has: {known})", param="feature_set")
    return feature_set


def default_feature_set(store, split: str, feature_set: str | None = None) -> str:
    """``feature_set`` (checked with :func:`check_feature_set`), or when it is None the only feature set of ``split``.

    Raises
    ------
    ClipCacheError
        ``param="feature_set"``, when the store has no such feature set, or
        ``split`` has several and none is named.
    """
    if feature_set is not None:
        return check_feature_set(store, feature_set)
    if split not in store.splits:
        raise ClipCacheError(
            f"{store.path}: no split {split!r} (the store has: {', '.join(store.splits) or 'none'})", param="split"
        )
    present = store.split_feature_sets(split)
    if len(present) != 1:
        raise ClipCacheError(
            f"{store.path}: split {split!r} has feature sets {', '.join(present) or 'none'}; give feature_set",
            param="feature_set",
        )
    return present[0]


def index_path(store_path: str | os.PathLike, split: str, feature_set: str) -> Path:
    """Default index file of ``split``/``feature_set``, beside the store.

    Returns
    -------
    Path
        ``<store dir>/<store stem>.<split>.<feature_set>.faiss``
    """
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.stem}.{split}.{feature_set}.faiss")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of an index file: ``<index>.json``."""
    return Path(f"{path}.json")


def rows_path(path: str | os.PathLike) -> Path:
    """The row mapping of an index file: ``<index>.rows.npy``."""
    return Path(f"{path}.rows.npy")


def default_nprobe(nlist: int) -> int:
    """Lists probed by default for an IVF index of ``nlist`` lists: ``max(1, nlist // 16)``."""
    return max(1, int(nlist) // 16)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _ivf(index: faiss.Index):
    """The IVF layer of an index (possibly wrapped in a pre-transform), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: faiss.Index):
    index = faiss.downcast_index(index)
    return index if hasattr(index, "hnsw") else None


def _new_index(dim: int, factory: str, metric: str) -> faiss.Index:
    _check_build(factory, metric)
    try:
        return faiss.index_factory(int(dim), factory, _METRICS[metric])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InvalidParameterError(
            f"faiss cannot build factory {factory!r} for dimension {dim} ({first}); "
            "see https://github.com/facebookresearch/faiss/wiki/The-index-factory",
            param="factory",
        ) from None


def _check_build(
    factory: str, metric: str, seed=0, *, backend: str = "auto", device=None, dtype: str = "float32", **sizes
) -> None:
    """Refuse a metric, factory string, seed, backend or size (``sizes``: name -> None or positive int) before the store is read."""
    for param, value in sizes.items():
        check_positive(value, param)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidParameterError(f"seed must be an integer of 0 or more, not {seed!r}", param="seed")
    if metric not in _METRICS:
        raise InvalidParameterError(f"metric must be one of {', '.join(_METRICS)}, not {metric!r}", param="metric")
    if not isinstance(factory, str) or not factory.strip():
        raise InvalidParameterError(
            "the index factory string is empty; give e.g. 'Flat', 'IVF1024,Flat' or 'HNSW32'", param="factory"
        )
    if "IDMap" in factory:
        raise InvalidParameterError(
            f"factory {factory!r}: IDMap is not needed, clipcache keeps the row mapping itself; drop it",
            param="factory",
        )
    check_backend(backend, factory=factory, device=device, dtype=dtype)


def _structure(index: faiss.Index) -> dict:
    """``{"nlist": IVF lists or 0, "hnsw": bool}`` of a CPU index."""
    ivf = _ivf(index)
    return {"nlist": int(ivf.nlist) if ivf is not None else 0, "hnsw": _hnsw(index) is not None}


def _search_params(structure: dict, nprobe: int | None, ef_search: int | None) -> dict:
    """The search parameters of an index of this structure: given values, or the defaults.

    ``nprobe`` and ``ef_search`` must be None or positive integers (checked
    whatever the index type, so that a 0 is never silently ignored).
    """
    nprobe, ef_search = check_positive(nprobe, "nprobe"), check_positive(ef_search, "ef_search")
    params = {}
    if structure["nlist"]:
        params["nprobe"] = nprobe if nprobe is not None else default_nprobe(structure["nlist"])
    if structure["hnsw"]:
        params["efSearch"] = ef_search if ef_search is not None else DEFAULT_EF_SEARCH
    return params


def _place_faiss(index: faiss.Index, choice: BackendChoice) -> tuple[faiss.Index, BackendChoice]:
    """``index`` on the device ``choice`` names, and the choice as it ended (a CPU fallback when cloning fails)."""
    index, device = _to_gpu(index, choice.device == "gpu")
    if device != choice.device:
        choice = choice.on(device, f"{choice.reason}; faiss has no GPU implementation of this index")
    return index, choice


def _to_gpu(index: faiss.Index, gpu: bool) -> tuple[faiss.Index, str]:
    """Clone ``index`` to the GPU(s) when asked and possible; the CPU index otherwise."""
    if not gpu:
        return index, "cpu"
    if not gpu_available():
        logger.warning("a GPU was asked for, but faiss has no GPU support or sees no GPU; using the CPU")
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), "gpu"
    except RuntimeError as exc:
        logger.warning("this index type has no faiss GPU implementation (%s); using the CPU", exc)
        return index, "cpu"


class StoreIndex:
    """An index over one feature set of one split, with its store row mapping.

    Build one with :func:`build_index` or :func:`load_index`; the constructor is
    for those functions.

    Parameters
    ----------
    index : faiss.Index or TorchFlatIndex
        faiss on the CPU or the GPU, or the torch backend's exact index
        (:class:`~clipcache.retrieval.torch_flat.TorchFlatIndex`); ids are ``0 .. ntotal - 1``.
    rows : ndarray of shape (ntotal,), int64
        Store row (in ``meta["split"]``) of each id.
    meta : dict
        The sidecar fields (see ``docs/retrieval.md``).
    device : str
        faiss: ``"cpu"`` or ``"gpu"``; torch: the torch device.
    backend : BackendChoice, optional
        How the backend was chosen; by default faiss on ``device``.

    Attributes
    ----------
    backend : BackendChoice
        Recorded in the JSON outputs of ``index``, ``search`` and ``support``.
    """

    def __init__(self, index, rows: np.ndarray, meta: dict, device: str = "cpu", backend: BackendChoice | None = None):
        self.index = index
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.meta = meta
        self.device = device
        self.backend = backend or BackendChoice("faiss", "faiss", device, "float32", "asked for")
        self._apply_params()

    def __repr__(self) -> str:
        return (
            f"StoreIndex({self.meta['split']!r}/{self.meta['feature_set']!r}, factory={self.factory!r}, "
            f"ntotal={self.ntotal}, backend={self.backend.name!r}, device={self.device!r})"
        )

    @property
    def uses_torch(self) -> bool:
        """Whether the torch backend searches this index."""
        return self.backend.name == "torch"

    # -- description ---------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self.index.d)

    @property
    def split(self) -> str:
        return str(self.meta["split"])

    @property
    def feature_set(self) -> str:
        return str(self.meta["feature_set"])

    @property
    def factory(self) -> str:
        return str(self.meta["factory"])

    @property
    def metric(self) -> str:
        """``"ip"`` (inner product, larger is nearer) or ``"l2"`` (squared distance)."""
        return str(self.meta["metric"])

    @property
    def search_params(self) -> dict:
        """``{"nprobe": ...}`` for IVF, ``{"efSearch": ...}`` for HNSW, ``{}`` otherwise."""
        return dict(self.meta.get("search_params", {}))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the IVF ``nprobe`` or HNSW ``efSearch`` used by :meth:`search` (and saved).

        Parameters
        ----------
        nprobe, ef_search : int, optional
            Positive; None keeps the current value. A value the index type does
            not use (``nprobe`` of an HNSW index) is checked, then ignored.

        Raises
        ------
        InvalidParameterError
            When a value is 0, negative or not an integer.
        """
        current = self.search_params
        structure = {"nlist": int(self.meta.get("nlist", 0)), "hnsw": bool(self.meta.get("hnsw", False))}
        params = _search_params(
            structure,
            nprobe if nprobe is not None else current.get("nprobe"),
            ef_search if ef_search is not None else current.get("efSearch"),
        )
        self.meta["search_params"] = params
        self._apply_params()

    def _cpu_view(self) -> faiss.Index:
        return self.index if self.device == "cpu" else faiss.index_gpu_to_cpu(self.index)

    def _apply_params(self) -> None:
        if self.uses_torch:  # exact Flat: no search parameters
            return
        space = faiss.GpuParameterSpace() if self.device == "gpu" else faiss.ParameterSpace()
        for key, value in self.search_params.items():
            space.set_index_parameter(self.index, key, value)

    # -- search --------------------------------------------------------------------

    def check_queries(self, queries: np.ndarray) -> np.ndarray:
        """Validate queries and convert them to what faiss needs.

        Parameters
        ----------
        queries : array-like of shape (q, d) or (d,), floating point

        Returns
        -------
        ndarray of shape (q, d), float32, C-contiguous
        """
        x = np.asarray(queries)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise QueryError(f"queries must have shape (q, {self.dim}), not {x.shape}")
        if x.shape[1] != self.dim:
            raise QueryError(
                f"query dimension {x.shape[1]} does not match the index of feature set "
                f"{self.feature_set!r} (dimension {self.dim}); encode queries with the same model"
            )
        if x.size and not np.issubdtype(x.dtype, np.floating):
            raise QueryError(f"queries must be floating point, not {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise QueryError("queries contain NaN or inf; check how they were computed")
        return x

    def check_k(self, k: int) -> int:
        """Check that ``1 <= k <= ntotal``; return k as an int."""
        if self.ntotal == 0:
            raise QueryError(
                f"the index of {self.split!r}/{self.feature_set!r} is empty; index a split that has rows"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, not {k!r}", param="k")
        if k > self.ntotal:
            raise QueryError(
                f"k={k} is larger than the {self.ntotal} vectors in the index of "
                f"{self.split!r}/{self.feature_set!r}; ask for at most {self.ntotal}",
                param="k",
            )
        if self.device == "gpu" and k > _GPU_MAX_K:
            raise QueryError(
                f"k={k} is more than the {_GPU_MAX_K} neighbours faiss-gpu returns; ask for at most {_GPU_MAX_K} "
                "or search on the CPU",
                param="k",
            )
        return int(k)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """The k nearest indexed rows of each query.

        Parameters
        ----------
        queries : array-like of shape (q, d) or (d,), float
            Converted to float32. For metric ``"ip"`` on a normalised feature
            set, normalise the queries to get cosine similarities as scores.
        k : int
            ``1 <= k <= ntotal``.

        Returns
        -------
        SearchResult
            ``scores`` (q, k) float32 and ``rows`` (q, k) int64, best first.

        Notes
        -----
        On the CPU, faiss's BLAS block sizes (process-wide settings) are set to
        1024 queries x 16384 vectors for the call and restored afterwards;
        results are the same, only faster. The torch backend searches block by
        block (:func:`clipcache.retrieval.torch_flat.knn_blocks`).
        """
        k = self.check_k(k)
        x = self.check_queries(queries)
        if self.uses_torch:
            scores, ids = self.index.search(x, k)
        elif self.device == "cpu":
            with _blas_blocks():
                scores, ids = self.index.search(x, k)
        else:
            scores, ids = self.index.search(x, k)
        rows = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1).astype(np.int64)
        return SearchResult(scores.astype(np.float32, copy=False), rows)

    # -- persistence -----------------------------------------------------------------

    def check_store(self, store) -> None:
        """Refuse an index that does not match ``store``'s current contents.

        Raises
        ------
        IndexMismatchError
            When the store was recreated, rows were added to the split, or the
            feature set's model changed since the index was built.
        """
        _check_fingerprint(store, self.meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index, its row mapping and its sidecar as one set (:func:`clipcache._io.atomic_outputs`).

        The files are written to temporary files beside ``path`` first,
        then renamed, the sidecar last; the sidecar records the SHA-256 of the
        others (``index_sha256``, ``rows_sha256``). A failed write leaves the
        previous set whole; a crash between two renames leaves a set that
        :func:`load_index` refuses.

        An index of the torch backend writes no ``.faiss`` file: its sidecar
        (format version 2, ``"vectors": "store"``) and row mapping are the set,
        and :func:`load_index` reads the vectors from the store. A file left at
        ``path`` by an earlier faiss build is removed once the new set is in place.

        Parameters
        ----------
        path : path
            The ``.faiss`` file (the name of the set, even when the torch
            backend writes no file there); the sidecar is ``<path>.json`` and
            the row mapping ``<path>.rows.npy``.

        Returns
        -------
        Path

        Raises
        ------
        OutputWriteError
            The disk is full, or the folder is missing or read-only (faiss's
            RuntimeError included); no temporary file is left.
        """
        path = Path(path)
        meta = dict(self.meta)
        meta["index_file"] = path.name
        meta["rows_file"] = rows_path(path).name
        meta["saved"] = _now()
        if meta.get("vectors") == "store":
            return self._save_store_backed(path, meta)
        cpu = self._cpu_view()
        try:
            with atomic_outputs([path, rows_path(path), sidecar_path(path)], "the index") as (tmp, tmp_rows, tmp_side):
                faiss.write_index(cpu, str(tmp))
                with open(tmp_rows, "wb") as fh:
                    np.save(fh, self.rows, allow_pickle=False)
                meta["index_sha256"], meta["rows_sha256"] = _sha256_file(tmp), _sha256_file(tmp_rows)
                tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        except (OSError, RuntimeError) as exc:  # not a disk or folder problem (those are OutputWriteError)
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
            raise OutputWriteError(f"{path}: cannot write the index ({reason})") from None
        self.meta = meta
        logger.info("wrote %s (%d vectors, %s)", path, self.ntotal, self.factory)
        return path

    def _save_store_backed(self, path: Path, meta: dict) -> Path:
        """The sidecar and row mapping of a torch index (no vector file), as one set; then drop a stale ``path``."""
        try:
            with atomic_outputs([rows_path(path), sidecar_path(path)], "the index") as (tmp_rows, tmp_side):
                with open(tmp_rows, "wb") as fh:
                    np.save(fh, self.rows, allow_pickle=False)
                meta["rows_sha256"] = _sha256_file(tmp_rows)
                tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        except OSError as exc:  # not a disk or folder problem (those are OutputWriteError)
            raise OutputWriteError(f"{path}: cannot write the index ({exc.strerror or exc})") from None
        if path.is_file() or path.is_symlink():
            path.unlink()  # the vectors of an earlier faiss build: the sidecar no longer names them
        self.meta = meta
        logger.info("wrote %s and %s (%d vectors read from the store at load)", sidecar_path(path), rows_path(path).name,
                    self.ntotal)
        return path


def _check_fingerprint(store, meta: dict) -> None:
    """Refuse a store whose split/feature set is not the one the index with sidecar ``meta`` was built from."""
    split, name = meta["split"], meta["feature_set"]
    if split not in store.splits:
        raise IndexMismatchError(
            f"{store.path}: the index was built on split {split!r}, which the store no longer has; {_REBUILD}"
        )
    if name not in store.feature_sets:
        raise IndexMismatchError(
            f"{store.path}: the index was built on feature set {name!r}, which the store no longer has; {_REBUILD}"
        )
    now = store.fingerprint(split, name)
    if now != meta["fingerprint"]:
        raise IndexMismatchError(
            f"{meta.get('index_file', 'the index')}: it was built from {split!r}/{name!r} with "
            f"{meta['store_rows']} rows of store {meta['store_uuid'][:8]}, but the store "
            f"{store.path} has changed since (now {store.feature_rows(split, name)} rows, store "
            f"{store.uuid[:8]}); {_REBUILD}"
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _train_rows(n: int, index: faiss.Index, train_size: int | None, seed: int) -> np.ndarray:
    ivf = _ivf(index)
    nlist = ivf.nlist if ivf is not None else 0
    want = train_size if train_size is not None else max(_TRAIN_PER_LIST * nlist, _MIN_TRAIN)
    m = min(n, want)
    if m < nlist:
        raise ClipCacheError(
            f"an IVF index with {nlist} lists needs at least {nlist} training rows, but only {m} are "
            f"available; use fewer lists (e.g. IVF{max(1, m // 39)},Flat)",
            param="factory",
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)


def _check_finite(store, split: str, feature_set: str, x: np.ndarray, rows: np.ndarray) -> None:
    """Refuse a block of features (b, d) with NaN or inf; ``rows`` (b,) int64 are their store rows."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InvalidFeaturesError(
            f"{store.path}: split {split!r} of feature set {feature_set!r} has NaN or inf at row "
            f"{int(np.asarray(rows)[bad].min())}; re-extract the split or repair the store before indexing it"
        )


def build_index(
    store,
    split: str,
    feature_set: str,
    *,
    factory: str = DEFAULT_FACTORY,
    metric: str = "ip",
    gpu: bool = False,
    train_size: int | None = None,
    chunk_rows: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    device=None,
    dtype: str = "float32",
    block_rows: int | None = None,
    device_memory: int | None = None,
) -> StoreIndex:
    """Index one feature set of one split, adding the vectors block by block.

    Parameters
    ----------
    store : FeatureStore
        Open for reading.
    split, feature_set : str
        What to index; faiss id i is row ``i`` of the split.
    factory : str
        A faiss index-factory string: ``"Flat"`` (exact, default),
        ``"IVF1024,Flat"``, ``"IVF1024,PQ64"``, ``"HNSW32"``, ...
    metric : {"ip", "l2"}
        Inner product (cosine similarity on normalised features) or L2.
    gpu : bool
        Ask for a GPU: with ``backend="faiss"``, build and search on faiss-gpu
        when it is installed and sees one; with any backend, a warning is
        logged when the index ends up on the CPU.
    train_size : int, optional
        Positive; rows sampled to train IVF/PQ indexes; default ``max(64 * nlist, 20000)``.
    chunk_rows : int, optional
        Positive; rows per block read from the store and added; by default about 64 MiB.
    nprobe, ef_search : int, optional
        Positive; search parameters recorded with the index (IVF and HNSW);
        defaults :func:`default_nprobe` and :data:`DEFAULT_EF_SEARCH`.
    seed : int
        Seed of the training sample.
    backend : {"auto", "faiss", "torch"}
        Who searches (:func:`~clipcache.retrieval.backends.choose_backend`):
        ``auto`` takes faiss-gpu when it passes a probe search, then torch on
        CUDA (Flat only), then faiss on the CPU. torch builds exact ``"Flat"``
        indexes only.
    device : str, optional
        The torch backend's device (``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA
        when torch sees a GPU); with faiss a CUDA device means faiss-gpu; with
        auto, ``"cpu"`` keeps to the CPU.
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype of the torch backend's vectors (half the memory; the
        recall lost is measured in ``docs/benchmarks.md``).
    block_rows, device_memory : int, optional
        The torch backend's vectors per block and device-memory budget in bytes
        (:class:`~clipcache.retrieval.torch_flat.TorchFlatIndex`); blocks beyond
        the budget stream through the device at each search.

    Returns
    -------
    StoreIndex
        With ``backend`` (a :class:`~clipcache.retrieval.backends.BackendChoice`)
        saying where it searches.

    Raises
    ------
    InvalidParameterError
        Before the store is read: a metric, factory string, backend or dtype
        that cannot work (torch with IVF, PQ or HNSW), or a size or search
        parameter that is not a positive integer.
    QueryError
        When the split has no rows.
    InvalidFeaturesError
        When a row holds NaN or inf (nothing is indexed).
    ClipCacheError
        When the feature set is unknown or the index cannot be trained.
    """
    _check_build(
        factory, metric, seed, backend=backend, device=device, dtype=dtype, train_size=train_size,
        chunk_rows=chunk_rows, nprobe=nprobe, ef_search=ef_search,
    )
    check_torch_sizes(block_rows=block_rows, device_memory=device_memory)
    info = store.feature_sets[check_feature_set(store, feature_set)]
    n = store.feature_rows(split, feature_set)
    if n == 0:
        raise QueryError(
            f"{store.path}: split {split!r} has no rows of {feature_set!r}, so the index would be empty; "
            "extract features first",
            param="split",
        )
    if not store.is_complete(split):
        logger.warning("%s: split %r is not complete; the index will be stale once rows are added", store.path, split)
    choice = choose_backend(backend, factory=factory, device=device, dtype=dtype, gpu=gpu)
    if choice.name == "torch":
        index = TorchFlatIndex(
            info.dim, metric, device=choice.device, dtype=choice.dtype, block_rows=block_rows, device_memory=device_memory
        )
        for chunk in store.iter_chunks(split, feature_set, chunk_rows=chunk_rows):
            _check_finite(store, split, feature_set, chunk.features, chunk.rows)
            index.add(chunk.features)
        meta = _build_meta(store, split, feature_set, info, n, metric, factory, index.ntotal, 0, seed, {}, _FLAT)
        meta.update(format_version=2, vectors=INDEX_FORMAT_VERSIONS[2])
        return StoreIndex(index, np.arange(n, dtype=np.int64), meta, choice.device, choice)
    cpu_index = _new_index(info.dim, factory, metric)
    structure = _structure(cpu_index)
    params = _search_params(structure, nprobe, ef_search)
    index, choice = _place_faiss(cpu_index, choice)
    n_train = 0
    if not index.is_trained:
        sample = _train_rows(n, cpu_index, train_size, seed)
        n_train = len(sample)
        x = store.features(split, feature_set, sample)
        _check_finite(store, split, feature_set, x, sample)
        logger.info("training %s on %d sampled rows", factory, n_train)
        try:
            index.train(x)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1]
            raise ClipCacheError(
                f"faiss cannot train {factory!r} on {n_train} rows ({first}); use a smaller index or more rows",
                param="factory",
            ) from None
        del x
    for chunk in store.iter_chunks(split, feature_set, chunk_rows=chunk_rows):
        _check_finite(store, split, feature_set, chunk.features, chunk.rows)
        index.add(np.ascontiguousarray(chunk.features, dtype=np.float32))
    meta = _build_meta(
        store, split, feature_set, info, n, metric, factory, int(index.ntotal), n_train, seed, params, structure
    )
    return StoreIndex(index, np.arange(n, dtype=np.int64), meta, choice.device, choice)


def _build_meta(store, split, feature_set, info, n, metric, factory, ntotal, n_train, seed, params, structure) -> dict:
    """The sidecar fields of a new index (format version 1: its vectors are in the faiss file)."""
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "store": str(store.path),
        "store_uuid": store.uuid,
        "fingerprint": store.fingerprint(split, feature_set),
        "split": split,
        "feature_set": feature_set,
        "store_rows": n,
        "dim": info.dim,
        "normalized": info.normalized,
        "metric": metric,
        "factory": factory,
        "ntotal": int(ntotal),
        "train_rows": n_train,
        "train_seed": seed,
        "search_params": params,
        **structure,
        "vectors": INDEX_FORMAT_VERSIONS[INDEX_FORMAT_VERSION],
        "created": _now(),
        "clipcache_version": __version__,
        "faiss_version": faiss.__version__,
    }


_SIDECAR_REQUIRED = ("fingerprint", "store_uuid", "store_rows", "split", "feature_set", "metric", "factory", "ntotal", "dim")


def read_sidecar(path: str | os.PathLike) -> dict:
    """Read and check the JSON sidecar of the index file ``path`` (the one place sidecars are parsed).

    Returns
    -------
    dict
        The sidecar fields (see ``docs/retrieval.md``).

    Raises
    ------
    IndexMismatchError
        When the index is missing, the index has no sidecar (a build
        interrupted before its last rename), the sidecar is corrupt or is not a
        clipcache index sidecar, has an unknown format version, or lacks a
        required field, or (format version 1) the faiss file it names is missing.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not side.exists() and not path.exists():
        raise IndexMismatchError(
            f"{path}: no index there (or its sidecar {side.name} is missing); "
            "build it with build_index and StoreIndex.save (clipcache index)"
        )
    if not side.exists():
        raise IndexMismatchError(f"{path}: the index has no sidecar {side.name} (an interrupted build?); {_REBUILD}")
    try:
        text = side.read_text(encoding="utf-8")
    except OSError as exc:
        raise IndexMismatchError(f"{side}: the sidecar cannot be read ({exc.strerror or exc}); {_REBUILD}") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise IndexMismatchError(f"{side}: the index sidecar is corrupt ({exc}); {_REBUILD}") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise IndexMismatchError(f"{side}: not a clipcache index sidecar; {_REBUILD}")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in INDEX_FORMAT_VERSIONS:
        raise IndexMismatchError(
            f"{side}: index format version {version} is not one of "
            f"{', '.join(map(str, INDEX_FORMAT_VERSIONS))}, those clipcache {__version__} reads; {_REBUILD}"
        )
    missing = [k for k in _SIDECAR_REQUIRED if k not in meta]
    if missing:
        raise IndexMismatchError(f"{side}: the sidecar lacks {', '.join(missing)}; {_REBUILD}")
    meta["vectors"] = INDEX_FORMAT_VERSIONS[version]
    if meta["vectors"] == "index_file" and not path.exists():
        raise IndexMismatchError(f"{path}: the index file is missing (its sidecar {side.name} is there); {_REBUILD}")
    if meta["vectors"] == "store" and not is_flat(meta["factory"]):
        raise IndexMismatchError(f"{side}: a {meta['factory']!r} index must keep its vectors in its own file; {_REBUILD}")
    return meta


def is_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a saved clipcache index, judged by its sidecar alone (its ``format`` field).

    Cheap: the index itself is not read. The files of an index are replaced
    without asking by ``clipcache index``; any other file needs ``overwrite``.
    """
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT


def check_index_output(path: str | os.PathLike, store_path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check the three files an index saved at ``path`` writes, with :func:`clipcache._io.check_output`.

    None may be the store ``store_path``; existing ones are replaced without
    asking when ``path`` is a saved index (:func:`is_index`), otherwise only
    with ``overwrite``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputPathError
    """
    kind = OutputKind("a file of a clipcache index", lambda _: is_index(path))
    for file in (path, rows_path(path), sidecar_path(path)):
        check_output(file, [store_path], kind=kind, overwrite=overwrite)
    return Path(path)


def _read_checked(path: Path, expected: str | None, what: str, read):
    """``read(reader)`` of the file ``path``, where ``reader(n)`` returns its next n bytes, hashing them on the way.

    Raises IndexMismatchError when the file's SHA-256 is not ``expected`` (None:
    a sidecar written before hashes were recorded, not checked).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:

        def reader(n: int) -> bytes:
            block = fh.read(n)
            digest.update(block)
            return block

        value = read(reader)
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    if expected is not None and digest.hexdigest() != expected:
        raise IndexMismatchError(
            f"{path}: the {what} does not match its sidecar (content hash differs; an interrupted build?); {_REBUILD}"
        )
    return value


def _read_files(path: Path, meta: dict, with_index: bool) -> tuple[faiss.Index | None, np.ndarray]:
    """The faiss index (when ``with_index``) and row mapping of ``path``, each checked against the hash its sidecar records.

    Each file is hashed from the very bytes that are parsed (one open file
    each), so a concurrent rebuild cannot slip another build's bytes in between.
    """
    if "rows_sha256" not in meta:
        logger.warning(
            "%s: the sidecar records no content hashes (written by an older clipcache); rebuild the index "
            "so that a set of files from two builds can be detected", path,
        )
    cpu = None
    if with_index:
        cpu = _read_checked(
            path, meta.get("index_sha256"), "index file",
            lambda reader: faiss.read_index(faiss.PyCallbackIOReader(reader)),
        )
    rows = _read_checked(
        rows_path(path), meta.get("rows_sha256"), "row mapping",
        lambda reader: np.load(io.BytesIO(reader(-1)), allow_pickle=False),
    )
    return cpu, rows


def _store_chunks(store, meta: dict, rows: np.ndarray, chunk_rows: int | None):
    """The indexed vectors, read from the store block by block in id order: iterator of (b, d) float32."""
    split, feature_set = meta["split"], meta["feature_set"]
    whole = len(rows) == store.feature_rows(split, feature_set) and np.array_equal(rows, np.arange(len(rows)))
    for chunk in store.iter_chunks(split, feature_set, chunk_rows=chunk_rows, rows=None if whole else rows):
        yield chunk.features


def _index_from_store(store, meta: dict, rows: np.ndarray, choice: BackendChoice, chunk_rows, block_rows, device_memory):
    """A Flat index of ``choice``'s backend holding the store's vectors of ``rows`` (the store's fingerprint checked first)."""
    _check_fingerprint(store, meta)
    if choice.name == "torch":
        index = TorchFlatIndex(
            int(meta["dim"]), meta["metric"], device=choice.device, dtype=choice.dtype, block_rows=block_rows,
            device_memory=device_memory,
        )
    else:
        index = _new_index(int(meta["dim"]), "Flat", meta["metric"])
    for x in _store_chunks(store, meta, rows, chunk_rows):
        index.add(np.ascontiguousarray(x, dtype=np.float32))
    return index


def resolve_index_path(path: str | os.PathLike) -> Path:
    """The name of a saved index given as its ``.faiss`` path or as its sidecar (``<name>.json``).

    A torch index writes no ``.faiss`` file, so its sidecar is the file a user sees.
    """
    path = Path(path)
    if path.suffix == ".json" and is_index(path.with_suffix("")):
        return path.with_suffix("")
    return path


def load_index(
    store,
    split: str | None = None,
    feature_set: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    gpu: bool = False,
    backend: str = "auto",
    device=None,
    dtype: str = "float32",
    chunk_rows: int | None = None,
    block_rows: int | None = None,
    device_memory: int | None = None,
) -> StoreIndex:
    """Load a saved index and check it against the store.

    Parameters
    ----------
    store : FeatureStore
    split, feature_set : str, optional
        Which index; needed unless ``path`` is given. When they are given with
        ``path``, the sidecar must name them.
    path : path, optional
        The ``.faiss`` file (or the sidecar ``<path>.json``); default :func:`index_path`.
    gpu : bool
        Ask for a GPU (faiss-gpu with ``backend="faiss"``; see :func:`build_index`).
    backend, device, dtype, block_rows, device_memory
        As in :func:`build_index`. A Flat index loads on either backend,
        whichever built it: torch reads the vectors from the store (the faiss
        file, if any, is not read); faiss reads its file, or the store for an
        index the torch backend saved. IVF, PQ and HNSW load on faiss only.
    chunk_rows : int, optional
        Positive; rows per block read from the store when the vectors come from it.

    Returns
    -------
    StoreIndex

    Raises
    ------
    InvalidParameterError
        A backend, dtype or size that cannot work, e.g. ``backend="torch"`` for an IVF index.
    IndexMismatchError
        When the files are missing or inconsistent, or the index is stale.
    """
    check_backend(backend, device=device, dtype=dtype)
    check_torch_sizes(block_rows=block_rows, device_memory=device_memory)
    check_positive(chunk_rows, "chunk_rows")
    if path is None:
        if split is None or feature_set is None:
            raise InvalidParameterError("load_index needs split and feature_set, or the index path", param="path")
        path = index_path(store.path, split, feature_set)
    path = resolve_index_path(path)
    meta = read_sidecar(path)
    for key, want in (("split", split), ("feature_set", feature_set)):
        if want is not None and meta[key] != want:
            raise IndexMismatchError(
                f"{path}: the index is of {key} {meta[key]!r}, not {want!r}; give the index of {want!r}", param=key
            )
    choice = choose_backend(backend, factory=meta["factory"], device=device, dtype=dtype, gpu=gpu)
    from_file = choice.name == "faiss" and meta["vectors"] == "index_file"
    try:
        cpu, rows = _read_files(path, meta, with_index=from_file)
    except (OSError, RuntimeError, ValueError) as exc:
        raise IndexMismatchError(
            f"{path}: the index or its row mapping cannot be read ({str(exc).strip().splitlines()[-1]}); {_REBUILD}"
        ) from None
    if cpu is None:
        cpu = _index_from_store(store, meta, rows, choice, chunk_rows, block_rows, device_memory)
    _check_loaded(path, meta, cpu, rows)
    if choice.name == "torch":
        result = StoreIndex(cpu, rows, meta, choice.device, choice)
    else:
        index, choice = _place_faiss(cpu, choice)
        result = StoreIndex(index, rows, meta, choice.device, choice)
    result.check_store(store)
    return result


def _check_loaded(path: Path, meta: dict, index, rows: np.ndarray) -> None:
    """Refuse an index, row mapping and sidecar that disagree (counts, dimension, structure, metric)."""
    if index.ntotal != meta["ntotal"] or len(rows) != index.ntotal or index.d != meta["dim"] or rows.dtype != np.int64:
        raise IndexMismatchError(
            f"{path}: the index ({index.ntotal} vectors of dimension {index.d}), its row mapping ({len(rows)} rows) "
            f"and its sidecar ({meta['ntotal']} vectors of dimension {meta['dim']}) disagree; {_REBUILD}"
        )
    if not isinstance(index, faiss.Index):
        return
    structure = _structure(index)
    if (structure["nlist"], structure["hnsw"]) != (meta.get("nlist", 0), meta.get("hnsw", False)) or (
        index.metric_type != _METRICS.get(meta["metric"])
    ):
        raise IndexMismatchError(
            f"{path}: the index is not the {meta['factory']!r} ({meta['metric']}) index its sidecar describes; {_REBUILD}"
        )


def index_store(
    store_path: str | os.PathLike,
    split: str,
    feature_set: str | None = None,
    *,
    factory: str = DEFAULT_FACTORY,
    metric: str = "ip",
    gpu: bool = False,
    output: str | os.PathLike | None = None,
    train_size: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    backend: str = "auto",
    device=None,
) -> dict:
    """Build an index of ``split``/``feature_set`` and save it beside the store (``clipcache index``).

    Parameters are those of :func:`build_index`; ``feature_set`` defaults to
    the only feature set of ``split`` (:func:`default_feature_set`), and
    ``output`` overrides the default :func:`index_path`. With the torch
    backend only the sidecar and the row mapping are written (the vectors stay
    in the store; see :meth:`StoreIndex.save`).

    Before the store is read, the three output files (``output``, its row
    mapping and its sidecar) are checked with :func:`clipcache._io.check_output`:
    none may be the store itself, and existing files that do not belong to a
    saved index (:func:`is_index`) are replaced only when ``overwrite`` is true.
    A saved index is rebuilt in place without it.

    Returns
    -------
    dict
        The sidecar fields, plus ``path`` (the ``.faiss`` name of the set),
        ``files`` (the files written), ``device``, ``backend`` (the
        :class:`~clipcache.retrieval.backends.BackendChoice` as a dict) and
        ``seconds`` (build time).

    Raises
    ------
    OutputPathError
        An output file is the store, or an existing file of another kind and ``overwrite`` is false.
    OutputWriteError
        The disk is full or the folder is missing or read-only; the previous index is left whole.
    """
    _check_build(
        factory, metric, seed, backend=backend, device=device, train_size=train_size, nprobe=nprobe, ef_search=ef_search
    )
    if output is not None:
        check_index_output(output, store_path, overwrite=overwrite)
    start = time.perf_counter()
    with FeatureStore(store_path, "r") as store:
        feature_set = default_feature_set(store, split, feature_set)
        if output is None:
            output = check_index_output(index_path(store.path, split, feature_set), store_path, overwrite=overwrite)
        index = build_index(
            store, split, feature_set, factory=factory, metric=metric, gpu=gpu, train_size=train_size,
            nprobe=nprobe, ef_search=ef_search, seed=seed, backend=backend, device=device,
        )
        seconds = time.perf_counter() - start
        path = index.save(output)
    files = [rows_path(path), sidecar_path(path)]
    if index.meta["vectors"] == "index_file":
        files.insert(0, path)
    return {
        **index.meta, "path": str(path), "files": [str(f) for f in files], "device": index.device,
        "backend": index.backend.to_dict(), "seconds": round(seconds, 3),
    }

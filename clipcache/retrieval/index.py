"""FAISS indexes over one feature set of one split of a feature store.

An index is built block by block from :meth:`FeatureStore.iter_chunks`, so the
store is never read whole (the index itself holds the vectors, as FAISS does).
It is saved beside the store as three files::

    <store stem>.<split>.<feature set>.faiss            faiss.write_index
    <store stem>.<split>.<feature set>.faiss.rows.npy   faiss id -> store row, int64
    <store stem>.<split>.<feature set>.faiss.json       sidecar: fingerprint, metric, ...

The three files commit as a set (:func:`clipcache._io.atomic_outputs`): all
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

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EF_SEARCH",
    "DEFAULT_FACTORY",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
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
    "rows_path",
    "sidecar_path",
]

INDEX_FORMAT = "clipcache-faiss-index"
INDEX_FORMAT_VERSION = 1
DEFAULT_FACTORY = "Flat"
DEFAULT_EF_SEARCH = 128
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_MIN_TRAIN = 20_000
_TRAIN_PER_LIST = 64
_GPU_MAX_K = 2048
_HASH_BLOCK = 1 << 20
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


def _check_build(factory: str, metric: str, seed=0, **sizes) -> None:
    """Refuse a metric, factory string, seed or size (``sizes``: name -> None or positive int) before the store is read."""
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
    """A FAISS index over one feature set of one split, with its store row mapping.

    Build one with :func:`build_index` or :func:`load_index`; the constructor is
    for those functions.

    Parameters
    ----------
    index : faiss.Index
        On the CPU or the GPU; faiss ids are ``0 .. ntotal - 1``.
    rows : ndarray of shape (ntotal,), int64
        Store row (in ``meta["split"]``) of each faiss id.
    meta : dict
        The sidecar fields (see ``docs/retrieval.md``).
    device : {"cpu", "gpu"}
    """

    def __init__(self, index: faiss.Index, rows: np.ndarray, meta: dict, device: str = "cpu"):
        self.index = index
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.meta = meta
        self.device = device
        self._apply_params()

    def __repr__(self) -> str:
        return (
            f"StoreIndex({self.meta['split']!r}/{self.meta['feature_set']!r}, factory={self.factory!r}, "
            f"ntotal={self.ntotal}, device={self.device!r})"
        )

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
        results are the same, only faster.
        """
        k = self.check_k(k)
        x = self.check_queries(queries)
        if self.device == "cpu":
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
        split, name = self.split, self.feature_set
        if split not in store.splits:
            raise IndexMismatchError(
                f"{store.path}: the index was built on split {split!r}, which the store no longer has; {_REBUILD}"
            )
        if name not in store.feature_sets:
            raise IndexMismatchError(
                f"{store.path}: the index was built on feature set {name!r}, which the store no longer has; {_REBUILD}"
            )
        now = store.fingerprint(split, name)
        if now != self.meta["fingerprint"]:
            raise IndexMismatchError(
                f"{self.meta.get('index_file', 'the index')}: it was built from {split!r}/{name!r} with "
                f"{self.meta['store_rows']} rows of store {self.meta['store_uuid'][:8]}, but the store "
                f"{store.path} has changed since (now {store.feature_rows(split, name)} rows, store "
                f"{store.uuid[:8]}); {_REBUILD}"
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index, its row mapping and its sidecar as one set (:func:`clipcache._io.atomic_outputs`).

        The three files are written to temporary files beside ``path`` first,
        then renamed, the sidecar last; the sidecar records the SHA-256 of the
        other two (``index_sha256``, ``rows_sha256``). A failed write leaves the
        previous set whole; a crash between two renames leaves a set that
        :func:`load_index` refuses.

        Parameters
        ----------
        path : path
            The ``.faiss`` file; the sidecar is ``<path>.json`` and the row
            mapping ``<path>.rows.npy``.

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
        Build and search on the GPU when faiss-gpu is installed and sees one;
        the CPU otherwise (with a logged warning).
    train_size : int, optional
        Positive; rows sampled to train IVF/PQ indexes; default ``max(64 * nlist, 20000)``.
    chunk_rows : int, optional
        Positive; rows per block read from the store and added; by default about 64 MiB.
    nprobe, ef_search : int, optional
        Positive; search parameters recorded with the index (IVF and HNSW);
        defaults :func:`default_nprobe` and :data:`DEFAULT_EF_SEARCH`.
    seed : int
        Seed of the training sample.

    Returns
    -------
    StoreIndex

    Raises
    ------
    InvalidParameterError
        Before the store is read: a metric or factory string that cannot
        work, or a size or search parameter that is not a positive integer.
    QueryError
        When the split has no rows.
    InvalidFeaturesError
        When a row holds NaN or inf (nothing is indexed).
    ClipCacheError
        When the feature set is unknown or the index cannot be trained.
    """
    _check_build(factory, metric, seed, train_size=train_size, chunk_rows=chunk_rows, nprobe=nprobe, ef_search=ef_search)
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
    cpu_index = _new_index(info.dim, factory, metric)
    structure = _structure(cpu_index)
    params = _search_params(structure, nprobe, ef_search)
    index, device = _to_gpu(cpu_index, gpu)
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
    meta = {
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
        "ntotal": int(index.ntotal),
        "train_rows": n_train,
        "train_seed": seed,
        "search_params": params,
        **structure,
        "created": _now(),
        "clipcache_version": __version__,
        "faiss_version": faiss.__version__,
    }
    return StoreIndex(index, np.arange(n, dtype=np.int64), meta, device)


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
        clipcache index sidecar, has another format version, or lacks a
        required field.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.exists():
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
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexMismatchError(
            f"{side}: index format version {meta.get('format_version')} is not {INDEX_FORMAT_VERSION}, "
            f"the one clipcache {__version__} reads; {_REBUILD}"
        )
    missing = [k for k in _SIDECAR_REQUIRED if k not in meta]
    if missing:
        raise IndexMismatchError(f"{side}: the sidecar lacks {', '.join(missing)}; {_REBUILD}")
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


def _read_files(path: Path, meta: dict) -> tuple[faiss.Index, np.ndarray]:
    """The faiss index and row mapping of ``path``, each checked against the hash its sidecar records.

    Each file is hashed from the very bytes that are parsed (one open file
    each), so a concurrent rebuild cannot slip another build's bytes in between.
    """
    if "index_sha256" not in meta:
        logger.warning(
            "%s: the sidecar records no content hashes (written by an older clipcache); rebuild the index "
            "so that a set of files from two builds can be detected", path,
        )
    cpu = _read_checked(
        path, meta.get("index_sha256"), "index file", lambda reader: faiss.read_index(faiss.PyCallbackIOReader(reader))
    )
    rows = _read_checked(
        rows_path(path), meta.get("rows_sha256"), "row mapping",
        lambda reader: np.load(io.BytesIO(reader(-1)), allow_pickle=False),
    )
    return cpu, rows


def load_index(
    store,
    split: str | None = None,
    feature_set: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    gpu: bool = False,
) -> StoreIndex:
    """Load a saved index and check it against the store.

    Parameters
    ----------
    store : FeatureStore
    split, feature_set : str, optional
        Which index; needed unless ``path`` is given. When they are given with
        ``path``, the sidecar must name them.
    path : path, optional
        The ``.faiss`` file; default :func:`index_path`.
    gpu : bool
        Search on the GPU when faiss-gpu is available.

    Returns
    -------
    StoreIndex

    Raises
    ------
    IndexMismatchError
        When the files are missing or inconsistent, or the index is stale.
    """
    if path is None:
        if split is None or feature_set is None:
            raise InvalidParameterError("load_index needs split and feature_set, or the index path", param="path")
        path = index_path(store.path, split, feature_set)
    path = Path(path)
    meta = read_sidecar(path)
    for key, want in (("split", split), ("feature_set", feature_set)):
        if want is not None and meta[key] != want:
            raise IndexMismatchError(
                f"{path}: the index is of {key} {meta[key]!r}, not {want!r}; give the index of {want!r}", param=key
            )
    try:
        cpu, rows = _read_files(path, meta)
    except (OSError, RuntimeError, ValueError) as exc:
        raise IndexMismatchError(
            f"{path}: the index or its row mapping cannot be read ({str(exc).strip().splitlines()[-1]}); {_REBUILD}"
        ) from None
    if cpu.ntotal != meta["ntotal"] or len(rows) != cpu.ntotal or cpu.d != meta["dim"] or rows.dtype != np.int64:
        raise IndexMismatchError(
            f"{path}: the index ({cpu.ntotal} vectors of dimension {cpu.d}), its row mapping ({len(rows)} rows) "
            f"and its sidecar ({meta['ntotal']} vectors of dimension {meta['dim']}) disagree; {_REBUILD}"
        )
    structure = _structure(cpu)
    if (structure["nlist"], structure["hnsw"]) != (meta.get("nlist", 0), meta.get("hnsw", False)) or (
        cpu.metric_type != _METRICS.get(meta["metric"])
    ):
        raise IndexMismatchError(
            f"{path}: the index is not the {meta['factory']!r} ({meta['metric']}) index its sidecar describes; {_REBUILD}"
        )
    index, device = _to_gpu(cpu, gpu)
    result = StoreIndex(index, rows, meta, device)
    result.check_store(store)
    return result


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
) -> dict:
    """Build an index of ``split``/``feature_set`` and save it beside the store (``clipcache index``).

    Parameters are those of :func:`build_index`; ``feature_set`` defaults to
    the only feature set of ``split`` (:func:`default_feature_set`), and
    ``output`` overrides the default :func:`index_path`.

    Before the store is read, the three output files (``output``, its row
    mapping and its sidecar) are checked with :func:`clipcache._io.check_output`:
    none may be the store itself, and existing files that do not belong to a
    saved index (:func:`is_index`) are replaced only when ``overwrite`` is true.
    A saved index is rebuilt in place without it.

    Returns
    -------
    dict
        The sidecar fields, plus ``path`` (the ``.faiss`` file), ``device`` and
        ``seconds`` (build time).

    Raises
    ------
    OutputPathError
        An output file is the store, or an existing file of another kind and ``overwrite`` is false.
    OutputWriteError
        The disk is full or the folder is missing or read-only; the previous index is left whole.
    """
    _check_build(factory, metric, seed, train_size=train_size, nprobe=nprobe, ef_search=ef_search)
    if output is not None:
        check_index_output(output, store_path, overwrite=overwrite)
    start = time.perf_counter()
    with FeatureStore(store_path, "r") as store:
        feature_set = default_feature_set(store, split, feature_set)
        if output is None:
            output = check_index_output(index_path(store.path, split, feature_set), store_path, overwrite=overwrite)
        index = build_index(
            store, split, feature_set, factory=factory, metric=metric, gpu=gpu, train_size=train_size,
            nprobe=nprobe, ef_search=ef_search, seed=seed,
        )
        seconds = time.perf_counter() - start
        path = index.save(output)
    return {**index.meta, "path": str(path), "device": index.device, "seconds": round(seconds, 3)}

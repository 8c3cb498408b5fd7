"""Queries against a store index: by stored id, image file, free text or raw vector.

Every kind of query becomes a float32 matrix of shape (q, d) in the indexed
feature set's space, then goes through :meth:`StoreIndex.search`; each
neighbour comes back as a :class:`Hit` carrying its row, id, path, label,
class name and score.

* ids: the stored vector of the sample (looked up in the indexed split first,
  then in the other splits that have the feature set);
* images: encoded with the backbone recorded in the feature set's provenance
  (:func:`clipcache.extract.load_backbone`), exactly as ``clipcache extract`` stores them;
* texts: encoded with that backbone's CLIP text tower (open_clip feature sets only);
* vectors: used as given, L2-normalised first when the feature set is normalised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipcache.errors import ClipCacheError, IndexMismatchError
from clipcache.feature_store import FeatureStore
from clipcache.ops import l2_normalize
from clipcache.retrieval.backends import check_backend
from clipcache.retrieval.index import (
    QueryError,
    StoreIndex,
    check_positive,
    index_path,
    load_index,
    read_sidecar,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Hit",
    "SearchReport",
    "find_ids",
    "find_index",
    "hits",
    "query_vectors",
    "search",
    "search_store",
]

_ID_BLOCK = 65536


@dataclass(frozen=True)
class Hit:
    """One neighbour of one query.

    Attributes
    ----------
    query : int
        Position of the query in the batch.
    rank : int
        0 for the nearest.
    row : int
        Row in the indexed split.
    id, path : str
        The sample's stored id and source path.
    label : int
        Stored label; -1 for unlabelled samples.
    class_name : str or None
        ``store.classes[label]``; None when unlabelled.
    score : float
        Inner product (metric ``"ip"``) or squared L2 distance (``"l2"``).
    """

    query: int
    rank: int
    row: int
    id: str
    path: str
    label: int
    class_name: str | None
    score: float

    def to_dict(self) -> dict:
        """The hit as a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True)
class SearchReport:
    """What :func:`search_store` returns.

    Attributes
    ----------
    index : dict
        Sidecar fields of the index searched (split, feature_set, factory, ...).
    queries : list of str
        A label per query (the id, image path, text, or ``"vector i"``).
    hits : list of list of Hit
        ``hits[i]`` are the neighbours of query i, best first.
    backend : dict or None
        The backend that searched (:meth:`BackendChoice.to_dict`: requested,
        name, device, dtype, reason).
    """

    index: dict
    queries: list
    hits: list
    backend: dict | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable form, as ``clipcache search --json`` prints it."""
        return {
            "index": {k: self.index.get(k) for k in ("split", "feature_set", "factory", "metric", "ntotal", "search_params")},
            "backend": self.backend,
            "results": [
                {"query": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(self.queries, self.hits, strict=True)
            ],
        }


def find_ids(store, split: str, ids: Sequence[str]) -> np.ndarray:
    """Rows of ``ids`` in ``split``, scanning the id column block by block.

    Parameters
    ----------
    store : FeatureStore
    split : str
    ids : sequence of str, length q

    Returns
    -------
    ndarray of shape (q,), int64
        The first row holding each id; -1 for ids the split does not have.
    """
    wanted = np.asarray([str(i) for i in ids], dtype=object)
    found = np.full(len(wanted), -1, dtype=np.int64)
    n = store.n_rows(split)
    for start in range(0, n, _ID_BLOCK):
        if (found >= 0).all():
            break
        block = store.ids(split, slice(start, min(n, start + _ID_BLOCK)))
        position = {value: i for i, value in reversed(list(enumerate(block)))}
        for j, value in enumerate(wanted):
            if found[j] < 0 and value in position:
                found[j] = start + position[value]
    return found


def _id_vectors(store, index: StoreIndex, ids: Sequence[str], id_split: str | None) -> np.ndarray:
    name = index.feature_set
    first = id_split or index.split
    splits = [first]
    if id_split is None:
        splits += [s for s in store.splits if s != first and name in store.split_feature_sets(s)]
    out = np.empty((len(ids), index.dim), dtype=np.float32)
    missing = np.ones(len(ids), dtype=bool)
    for split in splits:
        todo = np.flatnonzero(missing)
        if todo.size == 0:
            break
        rows = find_ids(store, split, [ids[i] for i in todo])
        hit = rows >= 0
        n_feat = store.feature_rows(split, name)
        if (rows[hit] >= n_feat).any():
            raise QueryError(
                f"{store.path}: id {ids[todo[hit][0]]!r} has no {name!r} features yet in split {split!r}", param="ids"
            )
        if hit.any():
            out[todo[hit]] = store.features(split, name, rows[hit])
            missing[todo[hit]] = False
    if missing.any():
        where = f"split {first!r}" if id_split else f"splits {', '.join(splits)}"
        raise QueryError(
            f"{store.path}: unknown id {ids[int(np.flatnonzero(missing)[0])]!r} (not in {where}); check the id",
            param="ids",
        )
    return out


def _load_images(paths: Sequence[str | os.PathLike]) -> list:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise QueryError(
                f"{path}: cannot read the query image ({type(exc).__name__}); give a readable image file",
                param="images",
            ) from None
    return images


def _backbone(store, name: str):
    from clipcache.extract import load_backbone

    return load_backbone(store.feature_sets[name].provenance)


def query_vectors(
    store,
    index: StoreIndex,
    *,
    ids: Sequence[str] | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    texts: Sequence[str] | None = None,
    vectors: np.ndarray | None = None,
    id_split: str | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Turn exactly one kind of query into vectors of the indexed feature set.

    Parameters
    ----------
    store : FeatureStore
    index : StoreIndex
    ids : sequence of str, optional
        Stored sample ids.
    images : sequence of path, optional
        Image files, encoded with the feature set's recorded backbone.
    texts : sequence of str, optional
        Free text, encoded with the backbone's CLIP text tower.
    vectors : array-like of shape (q, d) or (d,), float, optional
        Raw query vectors.
    id_split : str, optional
        The split holding ``ids``; default: the indexed split, then the others.
    normalize : bool
        L2-normalise raw ``vectors`` when the feature set is normalised.

    Returns
    -------
    ndarray of shape (q, d), float32
    """
    given = {k: v for k, v in (("ids", ids), ("images", images), ("texts", texts), ("vectors", vectors)) if v is not None}
    if len(given) != 1:
        raise QueryError(f"give exactly one kind of query (ids, images, texts or vectors), not {sorted(given) or 'none'}")
    kind, value = next(iter(given.items()))
    if kind != "vectors" and (isinstance(value, (str, bytes, os.PathLike)) or len(value) == 0):
        raise QueryError(f"{kind} must be a non-empty list, not {value!r}", param=kind)
    if kind == "ids":
        return _id_vectors(store, index, list(value), id_split)
    if kind == "images":
        return index.check_queries(_backbone(store, index.feature_set).encode_images(_load_images(value)))
    if kind == "texts":
        return index.check_queries(_backbone(store, index.feature_set).encode_text([str(t) for t in value]))
    x = index.check_queries(value)
    if x.shape[0] == 0:
        raise QueryError("vectors has no rows; give at least one query vector", param="vectors")
    if normalize and store.feature_sets[index.feature_set].normalized:
        zero = np.flatnonzero(np.linalg.norm(x, axis=1) == 0)
        if zero.size:
            raise QueryError(
                f"query vector {int(zero[0])} is all zeros and cannot be normalised; give a nonzero vector",
                param="vectors",
            )
        x = l2_normalize(x).astype(np.float32, copy=False)
    return x


def hits(store, index: StoreIndex, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
    """Attach the stored id, path, label and class name to search results.

    Parameters
    ----------
    store : FeatureStore
    index : StoreIndex
    scores : ndarray of shape (q, k), float32
    rows : ndarray of shape (q, k), int64
        Rows of ``index.split``; -1 entries (no neighbour) are dropped.

    Returns
    -------
    list of list of Hit
    """
    valid = rows[rows >= 0]
    uniq = np.unique(valid)
    ids = store.ids(index.split, uniq)
    paths = store.paths(index.split, uniq)
    labels = store.labels(index.split, uniq)
    classes = store.classes
    out = []
    for q in range(rows.shape[0]):
        found = []
        for rank, (row, score) in enumerate(zip(rows[q].tolist(), scores[q].tolist(), strict=True)):
            if row < 0:
                continue
            j = int(np.searchsorted(uniq, row))
            label = int(labels[j])
            name = classes[label] if 0 <= label < len(classes) else None
            found.append(Hit(q, rank, int(row), str(ids[j]), str(paths[j]), label, name, float(score)))
        out.append(found)
    return out


def search(
    store,
    index: StoreIndex,
    *,
    k: int = 10,
    ids: Sequence[str] | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    texts: Sequence[str] | None = None,
    vectors: np.ndarray | None = None,
    id_split: str | None = None,
    normalize: bool = True,
) -> list[list[Hit]]:
    """Search an index with a batch of queries of one kind.

    Parameters
    ----------
    store : FeatureStore
        The store the index was built from (checked with :meth:`StoreIndex.check_store`).
    index : StoreIndex
    k : int
        Neighbours per query, ``1 <= k <= index.ntotal``.
    ids, images, texts, vectors, id_split, normalize
        As in :func:`query_vectors`; exactly one of the four query kinds.

    Returns
    -------
    list of list of Hit
        One list of k hits per query, best first.
    """
    index.check_k(k)
    index.check_store(store)
    x = query_vectors(
        store, index, ids=ids, images=images, texts=texts, vectors=vectors, id_split=id_split, normalize=normalize
    )
    result = index.search(x, k)
    return hits(store, index, result.scores, result.rows)


def find_index(store, split: str | None = None, feature_set: str | None = None) -> Path:
    """The saved index of ``store`` to search when the user did not name one.

    With ``split`` and ``feature_set``, the default path (:func:`index_path`).
    Otherwise the indexes saved beside the store that match what was given
    (found by their ``.faiss`` file or, for a torch index, which has none, by
    their sidecar); there must be exactly one. When none does, an index file whose name
    matches but whose sidecar is corrupt or missing is reported as such, not
    as "no saved index".

    Returns
    -------
    Path
    """
    if split is not None and feature_set is not None:
        return index_path(store.path, split, feature_set)
    found, broken = [], []
    stem = store.path.stem
    names = {*store.path.parent.glob(f"{stem}.*.faiss"), *(p.with_suffix("") for p in store.path.parent.glob(f"{stem}.*.faiss.json"))}
    for path in sorted(names):
        try:
            meta = read_sidecar(path)
        except IndexMismatchError as exc:  # corrupt or missing sidecar: reported when its name matches and nothing else does
            if path.name.startswith(f"{stem}.{split}." if split else f"{stem}.") and (
                feature_set is None or path.name.endswith(f".{feature_set}.faiss")
            ):
                broken.append(exc)
            continue
        # Matched by file name, not uuid, so that an index of a recreated store is found and refused as stale.
        if Path(str(meta.get("store"))).name != store.path.name:
            continue
        if split not in (None, meta["split"]) or feature_set not in (None, meta["feature_set"]):
            continue
        found.append((path, meta))
    if not found and broken:
        raise broken[0]
    if not found:
        raise IndexMismatchError(
            f"{store.path}: no saved index{' of split ' + repr(split) if split else ''}"
            f"{' of feature set ' + repr(feature_set) if feature_set else ''} beside the store; "
            "build one with build_index and StoreIndex.save (clipcache index)"
        )
    if len(found) > 1:
        names = ", ".join(f"{m['split']}/{m['feature_set']}" for _, m in found)
        raise ClipCacheError(f"{store.path}: several indexes match ({names}); give split and feature_set to choose one")
    return found[0][0]


def search_store(
    store_path: str | os.PathLike,
    *,
    k: int = 10,
    split: str | None = None,
    feature_set: str | None = None,
    index_file: str | os.PathLike | None = None,
    ids: Sequence[str] | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    texts: Sequence[str] | None = None,
    vectors: np.ndarray | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    gpu: bool = False,
    backend: str = "auto",
    device=None,
    dtype: str = "float32",
) -> SearchReport:
    """Open a store, load its index, and run one batch of queries (``clipcache search``).

    Parameters
    ----------
    store_path : path
    k : int
    split, feature_set : str, optional
        Which saved index; optional when exactly one index is saved beside the store.
    index_file : path, optional
        An index elsewhere: its ``.faiss`` name or its sidecar (``.faiss.json``).
    ids, images, texts, vectors
        Exactly one kind of query (see :func:`query_vectors`).
    nprobe, ef_search : int, optional
        Positive; override the saved IVF / HNSW search parameters for this call.
    gpu : bool
        Ask for a GPU (faiss-gpu with ``backend="faiss"``).
    backend, device, dtype
        Who searches, as in :func:`~clipcache.retrieval.index.load_index`
        (``auto``: faiss-gpu, then torch on CUDA for a Flat index, then faiss on the CPU).

    Returns
    -------
    SearchReport
        With ``backend``, the choice that searched.
    """
    nprobe, ef_search = check_positive(nprobe, "nprobe"), check_positive(ef_search, "ef_search")
    check_backend(backend, device=device, dtype=dtype)
    with FeatureStore(store_path, "r") as store:
        path = Path(index_file) if index_file is not None else find_index(store, split, feature_set)
        index = load_index(store, split, feature_set, path=path, gpu=gpu, backend=backend, device=device, dtype=dtype)
        if nprobe is not None or ef_search is not None:
            index.set_search_params(nprobe=nprobe, ef_search=ef_search)
        found = search(store, index, k=k, ids=ids, images=images, texts=texts, vectors=vectors)
    if ids is not None:
        labels = [str(i) for i in ids]
    elif images is not None:
        labels = [str(p) for p in images]
    elif texts is not None:
        labels = [str(t) for t in texts]
    else:
        labels = [f"vector {i}" for i in range(len(found))]
    return SearchReport(dict(index.meta), labels, found, index.backend.to_dict())

"""Support-set retrieval in the SuS-X style (Udandarao et al., ICCV 2023).

Given the class names (their prompt embeddings, stored by ``clipcache text``)
and an unlabelled pool split, the k pool images nearest to each class's text
embedding become that class's pseudo-labelled support samples. The result is
written back to the store as a new, complete split, so that any classifier
(Tip-Adapter with a retrieved cache, GDA, ...) can ``fit`` on it like on a
labelled split.

Scores are inner products between the ensemble class embedding
(:meth:`TextEmbeddings.class_embeddings`) and the pool features. The exact
search scans the pool block by block (``faiss.knn`` per block, merged in a
``faiss.ResultHeap``; or, with the torch backend, a matrix product and
``torch.topk`` per block on any torch device), so the pool is never read whole;
a saved pool index can be used instead.

With ``exclusive=True`` (the default) a pool image joins at most one class:
all (class, image) pairs are visited in decreasing score and a pair is taken
when the image is still free and the class has fewer than k images. The
candidates per class start at ``4 k`` and double until every class is full;
at ``k * C`` candidates every class can always be filled, so the result equals
this greedy rule applied to the whole pool.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import faiss
import numpy as np

from clipcache.errors import ClipCacheError
from clipcache.feature_store import FeatureStore, schema
from clipcache.retrieval.backends import BackendChoice, check_backend, choose_backend
from clipcache.retrieval.index import (
    QueryError,
    StoreIndex,
    check_feature_set,
    check_positive,
    default_feature_set,
    load_index,
)
from clipcache.retrieval.torch_flat import knn_blocks

logger = logging.getLogger(__name__)

__all__ = ["SupportSet", "class_text_embeddings", "retrieve_support", "write_support", "build_support_split"]


@dataclass(frozen=True)
class SupportSet:
    """A pseudo-labelled support set drawn from a pool split.

    Attributes
    ----------
    pool : str
        The pool split.
    feature_set : str
        The feature set the retrieval used.
    text : str
        The text embeddings that named the classes.
    rows : ndarray of shape (m,), int64
        Pool rows, grouped by class, best first within a class.
    labels : ndarray of shape (m,), int64
        Pseudo-label of each row.
    scores : ndarray of shape (m,), float32
        Similarity of each row to its class's text embedding.
    k : int
        Images asked for per class.
    exclusive : bool
    backend : dict or None
        The backend that searched (:meth:`BackendChoice.to_dict`).
    """

    pool: str
    feature_set: str
    text: str
    rows: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    k: int
    exclusive: bool
    backend: dict | None = None

    def counts(self, n_classes: int) -> np.ndarray:
        """Support images per class, ndarray of shape (C,), int64."""
        return np.bincount(self.labels, minlength=n_classes).astype(np.int64)


def _choose_text(store, feature_set: str, text: str | None) -> str:
    if text is not None:
        return text
    dim = store.feature_sets[feature_set].dim
    names = [t for t in store.text_names if store.text(t).embeddings.shape[1] == dim]
    if len(names) != 1:
        found = ", ".join(store.text_names) or "none"
        raise ClipCacheError(
            f"{store.path}: cannot choose the class text embeddings for {feature_set!r} (the store has: {found}); "
            "give text, or store them first with embed_prompts (clipcache text)",
            param="text",
        )
    return names[0]


def class_text_embeddings(store, feature_set: str, text: str | None = None) -> tuple[str, np.ndarray]:
    """The per-class text embeddings used as support queries.

    Parameters
    ----------
    store : FeatureStore
    feature_set : str
        The image feature set they must match.
    text : str, optional
        Name of the stored text embeddings; the only one of the right dimension by default.

    Returns
    -------
    name : str
    embeddings : ndarray of shape (C, d), float32
        L2-normalised prompt-ensemble class embeddings, ordered as ``store.classes``.

    Raises
    ------
    StoreMismatchError
        When the text embeddings come from another model or dimension.
    """
    check_feature_set(store, feature_set)
    name = _choose_text(store, feature_set, text)
    store.check_text_matches(name, feature_set)
    emb = store.text(name)
    n_classes = len(store.classes)
    if n_classes == 0:
        raise ClipCacheError(f"{store.path}: the store has no class names; set them before retrieving a support set")
    return name, emb.class_embeddings(n_classes)


def _top_candidates(
    store, pool: str, feature_set: str, queries: np.ndarray, kk: int, chunk_rows: int | None, choice: BackendChoice
):
    """Exact top-kk pool rows per query, block by block: (scores (C, kk) float32, rows (C, kk) int64)."""
    if choice.name == "torch":
        blocks = (
            (int(chunk.rows[0]), chunk.features, None)  # contiguous blocks: row = first row + position
            for chunk in store.iter_chunks(pool, feature_set, chunk_rows=chunk_rows)
        )
        return knn_blocks(queries, blocks, kk, device=choice.device, dtype=choice.dtype)
    heap = faiss.ResultHeap(nq=len(queries), k=kk, keep_max=True)
    for chunk in store.iter_chunks(pool, feature_set, chunk_rows=chunk_rows):
        x = np.ascontiguousarray(chunk.features, dtype=np.float32)
        d, i = faiss.knn(queries, x, min(kk, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, chunk.rows[np.maximum(i, 0)], -1).astype(np.int64))
    heap.finalize()
    return heap.D.astype(np.float32, copy=False), heap.I.astype(np.int64, copy=False)


def _greedy(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exclusive assignment: pairs by decreasing score (ties: class, then row); returns (rows, labels, scores)."""
    n_classes = scores.shape[0]
    cls = np.repeat(np.arange(n_classes), scores.shape[1])
    flat_rows, flat_scores = rows.ravel(), scores.ravel()
    keep = flat_rows >= 0
    cls, flat_rows, flat_scores = cls[keep], flat_rows[keep], flat_scores[keep]
    order = np.lexsort((flat_rows, cls, -flat_scores))
    taken: set[int] = set()
    count = np.zeros(n_classes, dtype=np.int64)
    picked = []
    full = 0
    for j in order.tolist():
        c, r = int(cls[j]), int(flat_rows[j])
        if count[c] >= k or r in taken:
            continue
        taken.add(r)
        count[c] += 1
        picked.append(j)
        if count[c] == k:
            full += 1
            if full == n_classes:
                break
    picked = np.asarray(picked, dtype=np.int64)
    return flat_rows[picked], cls[picked], flat_scores[picked]


def retrieve_support(
    store,
    pool: str,
    feature_set: str,
    k: int,
    *,
    text: str | None = None,
    exclusive: bool = True,
    index: StoreIndex | None = None,
    chunk_rows: int | None = None,
    backend: str = "auto",
    device=None,
    dtype: str = "float32",
) -> SupportSet:
    """The k pool images nearest to each class's text embedding.

    Parameters
    ----------
    store : FeatureStore
    pool : str
        The unlabelled pool split; its stored labels are ignored.
    feature_set : str
        Image feature set to search (a CLIP feature set matching ``text``).
    k : int
        Positive; images per class.
    text : str, optional
        Stored text embeddings naming the classes.
    exclusive : bool
        Give each pool image to at most one class (see the module notes);
        False takes the plain top-k per class, so an image may serve several classes.
    index : StoreIndex, optional
        A (possibly approximate) index of ``pool``/``feature_set`` to search
        instead of the exact block-by-block scan.
    chunk_rows : int, optional
        Positive; rows per block of the exact scan.
    backend, device, dtype
        Who runs the exact scan (:func:`~clipcache.retrieval.backends.choose_backend`):
        ``auto`` takes torch on CUDA when torch sees a GPU, else ``faiss.knn`` on
        the CPU (faiss-gpu is not used for the scan). An ``index`` searches on
        the backend it was loaded with.

    Returns
    -------
    SupportSet
        Rows grouped by class in class order, best first within each class.
        With ``exclusive`` and a pool smaller than ``k * C``, some classes get fewer.
    """
    k = check_positive(k, "k", optional=False)
    check_positive(chunk_rows, "chunk_rows")
    check_backend(backend, device=device, dtype=dtype)
    n = store.feature_rows(pool, feature_set)
    if n == 0:
        raise QueryError(f"{store.path}: pool split {pool!r} has no rows of {feature_set!r}; extract it first", param="pool")
    if k > n:
        raise QueryError(
            f"{store.path}: k={k} is larger than the {n} images of pool split {pool!r}; ask for at most {n}", param="k"
        )
    if index is not None:
        if (index.split, index.feature_set) != (pool, feature_set):
            raise ClipCacheError(
                f"the index is of {index.split!r}/{index.feature_set!r}, not of the pool {pool!r}/{feature_set!r}",
                param="index",
            )
        if index.metric != "ip":
            raise ClipCacheError(
                f"the index of {pool!r} uses metric {index.metric!r}; support retrieval needs an inner-product ('ip') index",
                param="index",
            )
        index.check_store(store)
    name, queries = class_text_embeddings(store, feature_set, text)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_classes = len(queries)
    if index is not None:
        choice = index.backend
    else:
        choice = choose_backend(backend, device=device, dtype=dtype, faiss_gpu=False)

    def candidates(kk: int):
        if index is not None:
            result = index.search(queries, kk)
            return result.scores, result.rows
        return _top_candidates(store, pool, feature_set, queries, kk, chunk_rows, choice)

    if not exclusive:
        scores, rows = candidates(k)
        labels = np.repeat(np.arange(n_classes, dtype=np.int64), k)
        keep = rows.ravel() >= 0
        return SupportSet(
            pool, feature_set, name, rows.ravel()[keep], labels[keep], scores.ravel()[keep], int(k), False,
            choice.to_dict(),
        )
    cap = min(n, k * n_classes)
    kk = min(cap, 4 * k)
    while True:
        scores, rows = candidates(kk)
        sel_rows, sel_labels, sel_scores = _greedy(scores, rows, k)
        counts = np.bincount(sel_labels, minlength=n_classes)
        if (counts >= k).all() or kk >= cap:
            break
        kk = min(cap, 2 * kk)
    order = np.lexsort((-sel_scores, sel_labels))
    short = np.flatnonzero(counts < k)
    if short.size:
        logger.warning(
            "pool %r has %d images for %d classes x %d; %d classes got fewer than %d",
            pool, n, n_classes, k, short.size, k,
        )
    return SupportSet(
        pool, feature_set, name, sel_rows[order].astype(np.int64), sel_labels[order].astype(np.int64),
        sel_scores[order].astype(np.float32), int(k), True, choice.to_dict(),
    )


def _check_new_split(store, to_split: str) -> None:
    if to_split in store.splits:
        raise ClipCacheError(f"{store.path}: split {to_split!r} already exists; choose another name", param="to_split")


def write_support(store, support: SupportSet, to_split: str) -> int:
    """Write a support set into the store as a new complete split.

    Every feature set the pool split has in full is copied for the chosen rows,
    with the pool's ids, paths and views, and the pseudo-labels as labels. The
    retrieval settings are recorded in the store metadata under
    ``support_sets[to_split]``.

    Parameters
    ----------
    store : FeatureStore
        Open for writing.
    support : SupportSet
    to_split : str
        A split name the store does not have yet.

    Returns
    -------
    int
        Rows written.
    """
    _check_new_split(store, to_split)
    pool = support.pool
    n = store.n_rows(pool)
    names = [f for f in store.split_feature_sets(pool) if store.feature_rows(pool, f) == n]
    skipped = sorted(set(store.split_feature_sets(pool)) - set(names))
    if skipped:
        logger.warning("pool %r: feature sets %s do not cover every row and are not copied", pool, skipped)
    rows = support.rows
    features = {f: store.features(pool, f, rows) for f in names}
    ids, paths, views = store.ids(pool, rows), store.paths(pool, rows), store.views(pool, rows)
    store.create_split(to_split, names)
    store.append(to_split, ids=list(ids), paths=list(paths), labels=support.labels, features=features, views=views)
    store.mark_complete(to_split)
    record = dict(store.metadata.get(schema.METADATA_SUPPORT_SETS, {}))
    record[to_split] = {
        "pool": pool,
        "feature_set": support.feature_set,
        "text": support.text,
        "k": support.k,
        "exclusive": support.exclusive,
        "rows": int(len(rows)),
        "pool_fingerprint": store.fingerprint(pool, support.feature_set),
        "method": "SuS-X style text-to-image retrieval",
    }
    store.set_metadata(schema.METADATA_SUPPORT_SETS, record)
    return int(len(rows))


def build_support_split(
    store_path: str | os.PathLike,
    pool: str,
    to_split: str,
    k: int,
    *,
    feature_set: str | None = None,
    text: str | None = None,
    exclusive: bool = True,
    use_index: bool = False,
    backend: str = "auto",
    device=None,
    dtype: str = "float32",
) -> dict:
    """Retrieve a support set from a pool split and write it as a new split (``clipcache support``).

    Parameters
    ----------
    store_path : path
    pool, to_split : str
        The pool split, and the name of the new split (which must not exist).
    k : int
        Positive; images per class.
    feature_set : str, optional
        Feature set to search; default: the pool split's only feature set
        (an error when the pool has several).
    text : str, optional
        Stored text embeddings naming the classes; default: the only set whose
        dimension matches ``feature_set``.
    exclusive : bool
        Give each pool image to at most one class (see :func:`retrieve_support`).
    use_index : bool
        Search the pool's saved index instead of scanning it exactly.
    backend, device, dtype
        Who searches: the exact scan as in :func:`retrieve_support`, or the
        saved index as in :func:`~clipcache.retrieval.index.load_index`.

    Returns
    -------
    dict
        ``split``, ``rows``, ``per_class`` (class name -> count), ``min_score``,
        ``mean_score``, ``feature_set``, ``text``, ``backend`` (the choice, as a dict).
    """
    check_positive(k, "k", optional=False)
    check_backend(backend, device=device, dtype=dtype)
    with FeatureStore(store_path, "a") as store:
        _check_new_split(store, to_split)
        feature_set = default_feature_set(store, pool, feature_set)
        index = None
        if use_index:
            index = load_index(store, pool, feature_set, backend=backend, device=device, dtype=dtype)
        support = retrieve_support(
            store, pool, feature_set, k, text=text, exclusive=exclusive, index=index, backend=backend, device=device,
            dtype=dtype,
        )
        written = write_support(store, support, to_split)
        classes = store.classes
    counts = support.counts(len(classes))
    return {
        "split": to_split,
        "rows": written,
        "feature_set": support.feature_set,
        "text": support.text,
        "per_class": {c: int(v) for c, v in zip(classes, counts, strict=True)},
        "min_score": float(support.scores.min()) if written else None,
        "mean_score": float(support.scores.mean()) if written else None,
        "backend": support.backend,
    }

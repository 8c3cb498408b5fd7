"""clipcache.retrieval: FAISS indexes over a feature store, queries, and support-set retrieval.

Exact (Flat) search also runs on torch, on any torch device
(:mod:`clipcache.retrieval.backends`, :mod:`clipcache.retrieval.torch_flat`).
Importing this package imports faiss (not torch): torch is imported when the
torch backend runs; image and text queries import the extraction backbones
only when they run.
"""

from clipcache.retrieval.backends import BACKENDS, DTYPES, BackendChoice, choose_backend
from clipcache.retrieval.index import (
    DEFAULT_FACTORY,
    QueryError,
    SearchResult,
    StoreIndex,
    build_index,
    gpu_available,
    index_path,
    index_store,
    load_index,
)
from clipcache.retrieval.query import (
    Hit,
    SearchReport,
    find_ids,
    find_index,
    query_vectors,
    search,
    search_store,
)
from clipcache.retrieval.support import (
    SupportSet,
    build_support_split,
    class_text_embeddings,
    retrieve_support,
    write_support,
)
from clipcache.retrieval.torch_flat import TorchFlatIndex

__all__ = [
    "BACKENDS",
    "DEFAULT_FACTORY",
    "DTYPES",
    "BackendChoice",
    "Hit",
    "QueryError",
    "SearchReport",
    "SearchResult",
    "StoreIndex",
    "SupportSet",
    "TorchFlatIndex",
    "build_index",
    "build_support_split",
    "choose_backend",
    "class_text_embeddings",
    "find_ids",
    "find_index",
    "gpu_available",
    "index_path",
    "index_store",
    "load_index",
    "query_vectors",
    "retrieve_support",
    "search",
    "search_store",
    "write_support",
]

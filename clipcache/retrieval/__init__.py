"""clipcache.retrieval: FAISS indexes over a feature store, queries, and support-set retrieval.

Importing this package imports faiss (not torch); image and text queries
import the extraction backbones only when they run.
"""

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

__all__ = [
    "DEFAULT_FACTORY",
    "Hit",
    "QueryError",
    "SearchReport",
    "SearchResult",
    "StoreIndex",
    "SupportSet",
    "build_index",
    "build_support_split",
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

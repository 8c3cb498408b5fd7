"""The versioned HDF5 feature store; the format is specified in ``docs/file-format.md``.

Modules: ``store`` (the :class:`FeatureStore` facade: lifecycle, locking,
SWMR, the commit), ``elements`` (one module per stored element, and the
registry of their encodings), ``registry`` (the encoding table's machinery),
``schema`` (names and constants of the format), ``rows`` (row selections and
chunk-aware reads), ``_hdf5`` (opening, locking, crash recovery), ``describe``.
"""

from clipcache.feature_store.schema import FORMAT_NAME, FORMAT_VERSION
from clipcache.feature_store.store import (
    Chunk,
    FeatureSetInfo,
    FeatureStore,
    TextEmbeddings,
    replace_store,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Chunk", "FeatureSetInfo", "FeatureStore", "TextEmbeddings", "replace_store"]

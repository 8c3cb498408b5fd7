"""The versioned HDF5 feature store; the format is specified in ``docs/file-format.md``."""

from clipcache.feature_store.schema import FORMAT_NAME, FORMAT_VERSION
from clipcache.feature_store.store import Chunk, FeatureSetInfo, FeatureStore, TextEmbeddings

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Chunk", "FeatureSetInfo", "FeatureStore", "TextEmbeddings"]

"""clipcache: extract CLIP features once, adapt without gradients.

The public API is re-exported here; see ``docs/`` for the guides.
"""

from clipcache._version import __version__
from clipcache.errors import (
    ClipCacheError,
    IndexMismatchError,
    InvalidParameterError,
    ModelLoadError,
    NotFittedError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    StoreMismatchError,
    StoreVersionError,
    StoreWriteError,
)
from clipcache.feature_store import FeatureSetInfo, FeatureStore, TextEmbeddings

__all__ = [
    "__version__",
    "ClipCacheError",
    "FeatureSetInfo",
    "FeatureStore",
    "IndexMismatchError",
    "InvalidParameterError",
    "ModelLoadError",
    "NotFittedError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreVersionError",
    "StoreWriteError",
    "TextEmbeddings",
]

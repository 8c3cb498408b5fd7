"""clipcache: extract CLIP features once, adapt without gradients.

The public API is re-exported here; see ``docs/`` for the guides.
"""

__version__ = "0.1.0"

from clipcache.errors import (  # noqa: E402
    ClipCacheError,
    IndexMismatchError,
    ModelLoadError,
    NotFittedError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    StoreMismatchError,
    StoreVersionError,
)
from clipcache.feature_store import FeatureSetInfo, FeatureStore, TextEmbeddings  # noqa: E402

__all__ = [
    "__version__",
    "ClipCacheError",
    "FeatureSetInfo",
    "FeatureStore",
    "IndexMismatchError",
    "ModelLoadError",
    "NotFittedError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreVersionError",
    "TextEmbeddings",
]

"""The stored elements of a feature store, one module each, and the registry of their encodings.

=================  ======================  ==========================================
module             encoding_type           what it stores
=================  ======================  ==========================================
``root``           (root attributes)       format name and version, classes, metadata
``feature_set``    ``feature-set``         one backbone's dim, dtype, provenance
``split``          ``split``               per-sample columns, feature columns, state
``skipped``        (part of a split)       samples that could not be read, and why
``text``           ``text-embeddings``     prompt embeddings of the class names
``strings``        ``string-column``       an appendable column of UTF-8 strings
=================  ======================  ==========================================
"""

from __future__ import annotations

from clipcache.feature_store.elements import feature_set, root, skipped, split, strings, text
from clipcache.feature_store.registry import Registry

__all__ = ["REGISTRY", "feature_set", "root", "skipped", "split", "strings", "text"]

#: Every encoded element type, with the version this release writes and the versions it reads.
REGISTRY = Registry([split.ENCODING, feature_set.ENCODING, text.ENCODING, strings.ENCODING])

"""A JSON-serialisable summary of a store: what ``clipcache info`` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipcache.errors import StoreFormatError

if TYPE_CHECKING:
    from clipcache.feature_store.store import FeatureStore

__all__ = ["describe"]


def describe(store: FeatureStore) -> dict:
    """Everything ``clipcache info`` shows about ``store``, as a JSON-serialisable dict.

    Reads the per-split counts, labels and views, and the text embeddings; never
    the features. A split that cannot be read is given as ``{"damaged": message}``,
    and one whose virtual feature datasets map shard files that are missing gets
    ``"missing_sources": {feature_set: [file, ...]}``.
    """
    splits = {}
    for split in store.splits:
        try:
            sp, state = store._state(split)
        except StoreFormatError as exc:
            splits[split] = {"damaged": str(exc)}
            continue
        labels = store.labels(split)
        splits[split] = {
            "rows": state.rows,
            "complete": state.complete,
            "skipped": state.skipped,
            "labelled": int((labels >= 0).sum()),
            "views": int(store.views(split).max(initial=-1)) + 1,
            "features": dict(state.feature_rows),
        }
        missing = {name: files for name in state.feature_rows if (files := sp.missing_sources(name))}
        if missing:
            splits[split]["missing_sources"] = missing
    texts = {}
    for name in store.text_names:
        t = store.text(name)
        texts[name] = {
            "prompts": len(t.prompts),
            "dim": int(t.embeddings.shape[1]),
            "templates": None if t.templates is None else len(t.templates),
            "provenance": t.provenance,
        }
    a = store.h5.attrs  # after the reads: a reader may have reopened the file to see a writer's changes
    return {
        "path": str(store.path),
        "format": f"{a['clipcache_format']} v{int(a['format_version'])}",
        "uuid": store.uuid,
        "created": str(a.get("created", "")),
        "clipcache_version": str(a.get("clipcache_version", "")),
        "classes": store.classes,
        "splits": splits,
        "feature_sets": {
            name: {"dim": i.dim, "dtype": i.dtype, "normalized": i.normalized, "provenance": i.provenance}
            for name, i in store.feature_sets.items()
        },
        "text": texts,
        "metadata": store.metadata,
    }

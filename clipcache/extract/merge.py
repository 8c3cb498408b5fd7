"""Combine the per-shard stores of ``clipcache extract --shard i/n`` into one store.

Shards are contiguous, batch-aligned ranges of every split (see
:mod:`clipcache.extract.plan`), so concatenating them in shard order gives the
rows of a single run, in the same order. Two layouts are written:

``copy``
    every row is copied; the result stands alone.
``virtual``
    per-sample columns (ids, paths, labels, views) and skipped records are
    copied, and each feature dataset is an HDF5 virtual dataset that maps the
    shards' feature datasets; nothing large is copied, and the shard files must
    stay beside the merged file (they are referenced by relative path).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

from clipcache._io import check_output
from clipcache.errors import InvalidParameterError, StoreError, StoreMismatchError
from clipcache.feature_store import FeatureStore, replace_store, schema

__all__ = ["COPY_CHUNK_ROWS", "MergeReport", "merge_stores"]

logger = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 8192


@dataclasses.dataclass
class MergeReport:
    """What :func:`merge_stores` wrote.

    Attributes
    ----------
    path : str
    rows : dict of str to int
        Rows per split.
    shards : int
    layout : str
        ``"copy"`` or ``"virtual"``.
    """

    path: str
    rows: dict
    shards: int
    layout: str


def _shard_info(store: FeatureStore) -> dict:
    info = store.metadata.get(schema.METADATA_SHARD)
    if info is None:
        raise StoreError(f"{store.path}: has no shard record; only stores extracted with a shard can be merged", param="inputs")
    return info


def _check_shards(stores: Sequence[FeatureStore]) -> list[FeatureStore]:
    """Order shard stores by index and check that they belong to one run."""
    infos = [_shard_info(s) for s in stores]
    count = infos[0]["count"]
    by_index = {}
    for store, info in zip(stores, infos, strict=True):
        if info["count"] != count:
            raise StoreMismatchError(
                f"{store.path}: is shard {info['index']}/{info['count']}, but others are of {count}; merge shards of one run",
                param="inputs",
            )
        if info["index"] in by_index:
            raise StoreMismatchError(f"{store.path}: shard {info['index']} is given twice; pass each shard once", param="inputs")
        by_index[info["index"]] = store
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise StoreMismatchError(f"shard {missing[0]}/{count} is missing; pass all {count} shard stores", param="inputs")
    ordered = [by_index[i] for i in range(count)]
    first = ordered[0]
    reference = _run_identity(first)
    for store in ordered[1:]:
        _check_precisions(first, store)
        if _run_identity(store) != reference:
            raise StoreMismatchError(
                f"{store.path}: was extracted with other classes, feature sets or config than {first.path}; merge shards of one run",
                param="inputs",
            )
    for store in ordered:
        incomplete = [s for s in store.splits if not store.is_complete(s)]
        if incomplete:
            raise StoreError(f"{store.path}: split {incomplete[0]!r} is incomplete; finish it by extracting with resume=True first")
    return ordered


def _check_precisions(first: FeatureStore, store: FeatureStore) -> None:
    """Raise StoreMismatchError when a feature set of ``store`` was computed in another precision than in ``first``."""
    theirs = store.feature_sets
    for name, info in first.feature_sets.items():
        if name not in theirs:
            continue  # a different list of feature sets is reported by the run identity
        want, have = schema.precision_of(info.provenance), schema.precision_of(theirs[name].provenance)
        if have != want:
            where = "" if want == schema.FULL_PRECISION else " on a cuda device"
            raise StoreMismatchError(
                f"{store.path}: feature set {name!r} was computed in {have}, but in {want} in {first.path}; "
                f"merge shards computed in one precision (extract this shard again with amp {name}={want}{where})",
                param="inputs",
            )


def _run_identity(store: FeatureStore) -> tuple:
    config = dict(store.metadata.get(schema.METADATA_EXTRACT) or {})
    config.pop("shard", None)
    sets = {name: info.identity() for name, info in store.feature_sets.items()}
    return store.classes, sorted(store.splits), json.dumps(sets, sort_keys=True), json.dumps(config, sort_keys=True)


def _prepare_output(out: FeatureStore, first: FeatureStore, with_features: bool) -> None:
    out.set_classes(first.classes)
    for name, info in first.feature_sets.items():
        out.add_feature_set(name, info.dim, dtype=info.dtype, normalized=info.normalized, provenance=info.provenance)
    for split in first.splits:
        out.create_split(split, feature_sets=first.split_feature_sets(split) if with_features else [])
    config = dict(first.metadata.get(schema.METADATA_EXTRACT) or {})
    config["shard"] = [0, 1]
    out.set_metadata(schema.METADATA_EXTRACT, config)
    items = {}
    for split, (_, _, total) in _shard_info(first)["items"].items():
        items[split] = [0, total, total]
    out.set_metadata(schema.METADATA_SHARD, {"index": 0, "count": 1, "items": items})
    for name in first.text_names:
        t = first.text(name)
        out.write_text(name, t.embeddings, t.class_index, t.prompts, provenance=t.provenance, normalized=t.normalized, templates=t.templates)


def _copy_rows(out: FeatureStore, shard: FeatureStore, split: str, names: Sequence[str]) -> None:
    n = shard.n_rows(split)
    for start in range(0, n, COPY_CHUNK_ROWS):
        rows = slice(start, min(start + COPY_CHUNK_ROWS, n))
        out.append(
            split,
            ids=list(shard.ids(split, rows)),
            paths=list(shard.paths(split, rows)),
            labels=shard.labels(split, rows),
            views=shard.views(split, rows),
            features={name: shard.features(split, name, rows) for name in names},
        )
    skipped = shard.skipped(split)
    if skipped:
        ids, paths, reasons = zip(*skipped, strict=True)
        out.record_skipped(split, ids=list(ids), paths=list(paths), reasons=list(reasons))


def merge_stores(
    inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *, layout: str = "copy", overwrite: bool = False
) -> MergeReport:
    """Merge the shard stores of one extraction run into ``output``.

    Parameters
    ----------
    inputs : sequence of paths
        Every shard store of the run, in any order.
    output : path
        The merged store; must not exist unless ``overwrite``.
    layout : {"copy", "virtual"}
        Copy the features, or map them with HDF5 virtual datasets.
    overwrite : bool
        Replace an existing ``output``: the merged store is written beside it and
        moved over it when complete, so a failed merge leaves it as it was.

    Returns
    -------
    MergeReport

    Raises
    ------
    StoreMismatchError
        Shards of different runs (feature sets computed in different precisions
        included), repeated or missing shards.
    StoreError
        Incomplete shards, or ``output`` exists.
    """
    if layout not in ("copy", "virtual"):
        raise InvalidParameterError(f"layout {layout!r} is not copy or virtual", param="layout")
    if not inputs:
        raise InvalidParameterError("no shard stores were given; pass every shard of the run", param="inputs")
    output = os.fspath(output)
    check_output(output, inputs)
    stores = [FeatureStore(p, "r") for p in inputs]
    try:
        ordered = _check_shards(stores)
        if overwrite and os.path.exists(output):
            with replace_store(output) as tmp:
                rows = _write_merged(tmp, "x", ordered, layout)
        else:
            rows = _write_merged(output, "w" if overwrite else "x", ordered, layout)
    finally:
        for store in stores:
            store.close()
    return MergeReport(path=output, rows=rows, shards=len(ordered), layout=layout)


def _write_merged(path: str | os.PathLike, mode: str, ordered: Sequence[FeatureStore], layout: str) -> dict:
    """Write the merged store of the ordered shards to ``path``; return its rows per split."""
    first = ordered[0]
    with FeatureStore(path, mode) as out:
        _prepare_output(out, first, with_features=layout == "copy")
        for split in first.splits:
            names = first.split_feature_sets(split) if layout == "copy" else []
            for shard in ordered:
                _copy_rows(out, shard, split, names)
        rows = {split: out.n_rows(split) for split in first.splits}
        for split in first.splits:
            if layout == "virtual":
                out.create_split(split, feature_sets=first.split_feature_sets(split))
                sources = [(shard.path, shard.n_rows(split)) for shard in ordered]
                for name in first.split_feature_sets(split):
                    out.link_features(split, name, sources)
            out.mark_complete(split)
    return rows


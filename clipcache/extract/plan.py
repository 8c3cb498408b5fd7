"""Which samples an extraction run encodes, in which order, and which of them a shard owns.

A plan lists, per split, the samples of the dataset that are extracted (after
per-class limits and a validation split carved out of ``train``), expanded into
*items*: one item per (sample, augmented view). Items are encoded in batches of a
fixed size whose boundaries depend only on the item index, so a resumed run, a
sharded run and an uninterrupted run encode exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import numpy as np

from clipcache.errors import DatasetError, InvalidParameterError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from clipcache.extract.datasets import ImageDataset, Split

__all__ = [
    "VAL_SPLIT",
    "SplitPlan",
    "build_plans",
    "first_per_class",
    "parse_limits",
    "parse_shard",
    "select_samples",
    "shard_from_env",
    "shard_path",
    "shard_range",
]

VAL_SPLIT = "val"


@dataclasses.dataclass
class SplitPlan:
    """The items of one split that one shard encodes.

    Attributes
    ----------
    name : str
        Split name in the store.
    source : Split
        The dataset split the samples are decoded from.
    samples : numpy.ndarray, int64, shape (S,)
        Indices into ``source`` of the selected samples, in extraction order.
    views : int
        Items per sample (1 without augmentation).
    start, stop : int
        The item range ``[start, stop)`` this shard encodes; item ``k`` is view
        ``k % views`` of sample ``samples[k // views]``.
    """

    name: str
    source: Split
    samples: np.ndarray
    views: int
    start: int
    stop: int

    @property
    def n_items(self) -> int:
        """Items of the whole split, over all shards."""
        return len(self.samples) * self.views

    def sample_of(self, item: int) -> int:
        """Index into ``source`` of the sample of ``item``."""
        return int(self.samples[item // self.views])

    def key(self, item: int) -> str:
        """The id (and path) of the sample of ``item``."""
        return self.source.keys[self.sample_of(item)]

    @functools.cached_property
    def sample_keys(self) -> np.ndarray:
        """numpy.ndarray of object (str), shape (S,): the id (and path) of each selected sample, computed once."""
        keys = np.empty(len(self.source.keys), dtype=object)
        keys[:] = self.source.keys
        return keys[self.samples]

    @functools.cached_property
    def sample_labels(self) -> np.ndarray:
        """numpy.ndarray of int64, shape (S,): the label of each selected sample, computed once."""
        return np.asarray(self.source.labels, dtype=np.int64)[self.samples]

    def keys_of(self, items: np.ndarray) -> np.ndarray:
        """The ids of the samples of ``items`` (numpy.ndarray of int, shape (b,)); object array of str, shape (b,)."""
        return self.sample_keys[np.asarray(items, dtype=np.int64) // self.views]

    def labels_of(self, items: np.ndarray) -> np.ndarray:
        """The labels of the samples of ``items`` (numpy.ndarray of int, shape (b,)); int64, shape (b,)."""
        return self.sample_labels[np.asarray(items, dtype=np.int64) // self.views]

    def views_of(self, items: np.ndarray) -> np.ndarray:
        """The view index of each of ``items`` (numpy.ndarray of int, shape (b,)); int16, shape (b,)."""
        return (np.asarray(items, dtype=np.int64) % self.views).astype(np.int16)


def first_per_class(labels: np.ndarray, start: int, stop: int | None) -> np.ndarray:
    """Select, in order, the samples whose rank within their class lies in ``[start, stop)``.

    Parameters
    ----------
    labels : numpy.ndarray, int64, shape (N,)
    start : int
    stop : int or None
        None keeps every sample from ``start`` on.

    Returns
    -------
    numpy.ndarray, int64, shape (S,)
        Increasing indices into ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        rank[i] = seen.get(label, 0)
        seen[label] = rank[i] + 1
    keep = rank >= start
    if stop is not None:
        keep &= rank < stop
    return np.flatnonzero(keep).astype(np.int64)


def parse_limits(values: Mapping[str, int] | int | None) -> dict[str, int]:
    """Normalise per-class limits: an int applies to every split (key ``"*"``)."""
    if values is None:
        return {}
    if isinstance(values, int):
        return {"*": int(values)}
    return {str(k): int(v) for k, v in values.items()}


def select_samples(
    dataset: ImageDataset,
    *,
    splits: list[str] | None = None,
    max_per_class: Mapping[str, int] | int | None = None,
    val_per_class: int = 0,
) -> dict[str, tuple[Split, np.ndarray]]:
    """Choose the samples of each store split.

    Parameters
    ----------
    dataset : ImageDataset
    splits : list of str, optional
        Store splits to extract; all of them by default.
    max_per_class : int or dict of str to int, optional
        Keep the first N samples of each class (file order), for every split or per split.
    val_per_class : int
        Move the next ``val_per_class`` samples of each class of ``train`` (after its
        limit) into a ``val`` split.

    Returns
    -------
    dict of str to (Split, numpy.ndarray of int64)
        Store split name -> (dataset split, selected sample indices).
    """
    limits = parse_limits(max_per_class)
    chosen: dict[str, tuple[Split, np.ndarray]] = {}
    for name, split in dataset.splits.items():
        limit = limits.get(name, limits.get("*"))
        chosen[name] = (split, first_per_class(split.labels, 0, limit))
    if val_per_class:
        if "train" not in dataset.splits:
            raise DatasetError(
                f"{dataset.source}: val_per_class needs a 'train' split, found {list(dataset.splits)}", param="val_per_class"
            )
        if VAL_SPLIT in dataset.splits:
            raise DatasetError(f"{dataset.source}: the dataset already has a 'val' split; set val_per_class to 0", param="val_per_class")
        train = dataset.splits["train"]
        start = limits.get("train", limits.get("*"))
        if start is None:
            raise InvalidParameterError(
                "val_per_class needs a max_per_class limit for train, so that val is disjoint from it", param="max_per_class"
            )
        chosen[VAL_SPLIT] = (train, first_per_class(train.labels, start, start + val_per_class))
    unknown = sorted(set(limits) - set(chosen) - {"*"})
    if unknown:
        raise DatasetError(
            f"{dataset.source}: max_per_class names splits {unknown} that the dataset lacks ({list(chosen)})", param="max_per_class"
        )
    if splits:
        missing = [s for s in splits if s not in chosen]
        if missing:
            raise DatasetError(f"{dataset.source}: no split {missing[0]!r}; the dataset has {list(chosen)}", param="splits")
        chosen = {s: chosen[s] for s in splits}
    return dict(sorted(chosen.items(), key=lambda kv: _split_order(kv[0])))


def _split_order(name: str) -> tuple[int, str]:
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(name, 3), name


def shard_range(n_items: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Item range of shard ``index`` of ``count``, cut on batch boundaries.

    Returns
    -------
    (start, stop) : tuple of int
        Shards are contiguous, in order, and cover ``[0, n_items)`` together.
    """
    n_batches = -(-n_items // batch_size)
    first = n_batches * index // count
    last = n_batches * (index + 1) // count
    return min(first * batch_size, n_items), min(last * batch_size, n_items)


def build_plans(
    selected: dict[str, tuple[Split, np.ndarray]], *, views: int, batch_size: int, shard: tuple[int, int]
) -> list[SplitPlan]:
    """Expand selected samples into item ranges for shard ``shard = (index, count)``."""
    plans = []
    for name, (split, samples) in selected.items():
        n_items = len(samples) * views
        start, stop = shard_range(n_items, batch_size, *shard)
        plans.append(SplitPlan(name, split, samples, views, start, stop))
    return plans


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n)."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise InvalidParameterError(f"shard {text!r} is not understood; write i/n with 0 <= i < n, e.g. 0/4", param="shard")
    return i, n


def shard_from_env() -> tuple[int, int] | None:
    """The (rank, world size) of a torchrun launch, or None outside one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world


def shard_path(path: str | os.PathLike, index: int, count: int) -> str:
    """Per-shard store path: ``feats.h5`` -> ``feats.shard-01-of-04.h5``."""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.shard-{index:02d}-of-{count:02d}{ext or '.h5'}"

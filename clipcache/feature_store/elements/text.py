"""The text-embeddings element: prompt embeddings of the class names, one row per (class, prompt)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from clipcache.errors import StoreError
from clipcache.feature_store.registry import Encoding
from clipcache.feature_store.schema import TEXT_EMBEDDINGS, dump_json
from clipcache.ops import prompt_ensemble

__all__ = ["ENCODING", "TextEmbeddings", "check_text", "replace_text"]

_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class TextEmbeddings:
    """Prompt embeddings of the class names, one row per (class, prompt).

    Attributes
    ----------
    name : str
    embeddings : ndarray of shape (M, d), float32
    class_index : ndarray of shape (M,), int64
        The class of each row.
    prompts : list of str, length M
    templates : list of str or None
        The templates of a template ensemble; None for per-class descriptions.
    provenance : dict
    normalized : bool
    """

    name: str
    embeddings: np.ndarray
    class_index: np.ndarray
    prompts: list
    templates: list | None
    provenance: dict
    normalized: bool

    def class_embeddings(self, n_classes: int | None = None) -> np.ndarray:
        """Prompt-ensemble class weights.

        Parameters
        ----------
        n_classes : int, optional
            Number of classes C; defaults to ``class_index.max() + 1``.

        Returns
        -------
        ndarray of shape (C, d), float32
            Per class, the mean of its L2-normalised prompt embeddings, normalised again.
        """
        return prompt_ensemble(self.embeddings, self.class_index, n_classes)

    @property
    def stored_bytes(self) -> int:
        """About how many bytes writing this set adds to a store file."""
        strings = sum(len(p.encode("utf-8")) + 16 for p in [*self.prompts, *(self.templates or [])])
        return self.embeddings.nbytes + self.class_index.nbytes + strings


def _read(group: h5py.Group, path: Path) -> TextEmbeddings:
    templates = [str(t) for t in group["templates"].asstr()[:]] if "templates" in group else None
    return TextEmbeddings(
        name=group.name.rsplit("/", 1)[-1],
        embeddings=group["embeddings"][:].astype(np.float32, copy=False),
        class_index=group["class_index"][:].astype(np.int64, copy=False),
        prompts=[str(p) for p in group["prompts"].asstr()[:]],
        templates=templates,
        provenance=json.loads(group.attrs["provenance"]),
        normalized=bool(group.attrs["normalized"]),
    )


def _write(group: h5py.Group, value: TextEmbeddings, created: str) -> None:
    group.attrs.update(provenance=dump_json(dict(value.provenance)), normalized=bool(value.normalized), created=created)
    written = [
        group.create_dataset("embeddings", data=value.embeddings),
        group.create_dataset("class_index", data=value.class_index),
        group.create_dataset("prompts", data=[str(p) for p in value.prompts], dtype=_STR),
    ]
    if value.templates is not None:
        written.append(group.create_dataset("templates", data=[str(t) for t in value.templates], dtype=_STR))
    for ds in written:
        ds.flush()  # now, so that a failed write raises here


ENCODING = Encoding(TEXT_EMBEDDINGS, 1, write=_write, readers={1: _read})


def check_text(
    path: Path,
    name: str,
    embeddings,
    class_index,
    prompts: Sequence[str],
    templates: Sequence[str] | None,
    provenance: dict,
    normalized: bool,
    classes: Sequence[str],
) -> TextEmbeddings:
    """Check the arguments of ``FeatureStore.write_text`` and return the value to store.

    Raises
    ------
    StoreError
        If the shapes disagree, an embedding is NaN or inf, a class index is out
        of range, or a class has no prompt.
    """
    if not name or "/" in name or name.startswith("."):
        raise StoreError(f"{path}: {name!r} is not a valid text-embedding name", param="name")
    x = np.asarray(embeddings, dtype=np.float32)
    idx = np.asarray(class_index, dtype=np.int64).reshape(-1)
    n_classes = len(classes)
    if x.ndim != 2 or len(x) != len(idx) or len(prompts) != len(idx):
        raise StoreError(
            f"{path}: text {name!r}: embeddings {x.shape}, class_index ({len(idx)},) and "
            f"{len(prompts)} prompts do not agree"
        )
    if not np.isfinite(x).all():
        raise StoreError(f"{path}: text {name!r}: embeddings contain NaN or inf", param="embeddings")
    if n_classes == 0 or idx.min(initial=0) < 0 or idx.max(initial=-1) >= n_classes:
        raise StoreError(
            f"{path}: text {name!r}: class_index must lie in [0, {n_classes}); call set_classes first",
            param="class_index",
        )
    missing = sorted(set(range(n_classes)) - set(idx.tolist()))
    if missing:
        raise StoreError(f"{path}: text {name!r}: no prompt for class {classes[missing[0]]!r}", param="class_index")
    return TextEmbeddings(
        name=name,
        embeddings=x,
        class_index=idx,
        prompts=[str(p) for p in prompts],
        templates=None if templates is None else [str(t) for t in templates],
        provenance=dict(provenance),
        normalized=bool(normalized),
    )


def replace_text(parent: h5py.Group, value: TextEmbeddings, created: str) -> None:
    """Write ``value`` into ``parent`` (the ``/text`` group), replacing a set of that name in one move.

    The set is written under a hidden temporary name first, so that a writer
    killed midway never leaves a half-written set under the real name.
    """
    tmp = f".tmp-{value.name}"
    if tmp in parent:
        del parent[tmp]
    ENCODING.create(parent, tmp, value, created)
    parent.file.flush()
    if value.name in parent:
        del parent[value.name]
    parent.move(tmp, value.name)

"""Array formulas shared across layers: L2 normalisation and prompt-ensemble averaging.

They live here, below the feature store, the classifiers and retrieval, so that
each formula is written once and every layer imports it from one place.
"""

from __future__ import annotations

import numpy as np

from clipcache.errors import MissingTextError

__all__ = ["l2_normalize", "prompt_ensemble"]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero).

    Parameters
    ----------
    x : ndarray of shape (n, d), float

    Returns
    -------
    ndarray of shape (n, d), same dtype
    """
    norms = np.sqrt(np.add.reduce(x * x, axis=1, keepdims=True))  # np.linalg.norm's sum, without its overhead
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def prompt_ensemble(embeddings: np.ndarray, class_index: np.ndarray | None, n_classes: int | None = None) -> np.ndarray:
    """Class weights of a prompt ensemble, as open_clip's ``build_zero_shot_classifier``.

    Parameters
    ----------
    embeddings : ndarray of shape (M, d), float
        One text embedding per (class, template) prompt.
    class_index : ndarray of shape (M,), int, or None
        The class of each row; None means row i is class i (M = C).
    n_classes : int, optional
        C; by default ``class_index.max() + 1``.

    Returns
    -------
    ndarray of shape (C, d), float32
        Per class, the mean of its L2-normalised prompt embeddings, normalised again.

    Raises
    ------
    MissingTextError
        A class in ``range(n_classes)`` has no prompt.
    """
    e = l2_normalize(np.asarray(embeddings, dtype=np.float32))
    if class_index is None:
        return e
    idx = np.asarray(class_index, dtype=np.int64).reshape(-1)
    n_classes = int(idx.max()) + 1 if n_classes is None else int(n_classes)
    sums = np.zeros((n_classes, e.shape[1]), dtype=np.float64)
    np.add.at(sums, idx, e)
    counts = np.bincount(idx, minlength=n_classes)
    if (counts == 0).any():
        raise MissingTextError(
            f"text embeddings have no prompt for class index {int(np.flatnonzero(counts == 0)[0])}; "
            "embed prompts for every class"
        )
    return l2_normalize(sums.astype(np.float32))

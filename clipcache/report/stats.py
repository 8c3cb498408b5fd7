"""The numbers behind the model panels: confusion matrix, per-class recall, reliability bins."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "per_class_recall", "reliability_bins", "top_confusions"]


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Parameters
    ----------
    y, pred : ndarray of shape (n,), int
    n_classes : int

    Returns
    -------
    ndarray of shape (C, C), int64
        ``[i, j]`` is the number of rows of class i predicted as j.
    """
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    ).astype(np.int64)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class, shape (C,), float64; NaN for a class with no rows."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def top_confusions(cm: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal counts as ``(true, predicted, count)``, largest first (ties by index)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(flat, off.shape), strict=True)]
    return [p for p in pairs if p[2] > 0]


def reliability_bins(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins, as :func:`clipcache.evaluation.metrics.expected_calibration_error` forms them.

    Parameters
    ----------
    proba : ndarray of shape (n, C), float
    y : ndarray of shape (n,), int
    n_bins : int, default=15
        Bins (i/n_bins, (i+1)/n_bins]; a confidence of 0 falls in the first.

    Returns
    -------
    list of dict
        Per bin: ``lo``, ``hi``, ``count``, and ``accuracy`` and ``confidence``
        (means over the bin; None when it is empty). The ECE is the sum of
        ``count / n * |accuracy - confidence|``.
    """
    conf = proba.max(axis=1).astype(np.float64)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        out.append({
            "lo": b / n_bins, "hi": (b + 1) / n_bins, "count": count,
            "accuracy": float(correct[mask].mean()) if count else None,
            "confidence": float(conf[mask].mean()) if count else None,
        })
    return out

"""Classification metrics and the mean with a 95% confidence interval over seeds."""

from __future__ import annotations

import numpy as np
import scipy.stats

__all__ = ["top_k_accuracy", "mean_per_class_recall", "expected_calibration_error", "mean_ci", "all_metrics"]


def top_k_accuracy(proba: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true column is among the k highest scores, ties broken at random.

    A row whose true class ties with others for the last places counts the
    expected share (e.g. a true class tied with one other for the first place
    counts 0.5 in top-1), so exact ties, such as k-NN votes or saturated
    probabilities, neither inflate nor deflate the figure.

    Parameters
    ----------
    proba : ndarray of shape (n, C), float
        Scores or probabilities; column j is class j.
    y : ndarray of shape (n,), int
        True column index.
    k : int
        Capped at C (top-k with k >= C is 1).
    """
    k = min(k, proba.shape[1])
    true = proba[np.arange(len(y)), y][:, None]
    higher = (proba > true).sum(axis=1)
    tied = (proba == true).sum(axis=1)  # the true class and the classes with its exact score
    # Ties are broken at random: the expected share of the k places left that the true class gets.
    return float(np.mean(np.clip((k - higher) / tied, 0.0, 1.0)))


def mean_per_class_recall(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the recall (balanced accuracy).

    Parameters
    ----------
    pred, y : ndarray of shape (n,), int
    """
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| weighted by bin size.

    Parameters
    ----------
    proba : ndarray of shape (n, C), float
        Probabilities (rows sum to 1).
    y : ndarray of shape (n,), int
    n_bins : int, default=15
        Bins (i/n_bins, (i+1)/n_bins]; a confidence of 0 falls in the first.
    """
    conf = proba.max(axis=1).astype(np.float64)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean.

    Parameters
    ----------
    values : array-like of shape (n,), float
        One value per seed.

    Returns
    -------
    mean, half_width : float
        The half-width is 0 for a single value.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    t = scipy.stats.t.ppf(0.5 + confidence / 2, df=len(v) - 1)
    return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))


def all_metrics(proba: np.ndarray, y: np.ndarray) -> dict:
    """Top-1, top-5, mean per-class recall and ECE of (n, C) probabilities against columns y."""
    pred = proba.argmax(axis=1)
    return {
        "top1": float(np.mean(pred == y)),
        "top5": top_k_accuracy(proba, y, 5),
        "recall": mean_per_class_recall(pred, y),
        "ece": expected_calibration_error(proba, y),
    }

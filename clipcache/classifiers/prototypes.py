"""Nearest class mean (cosine prototypes)."""

from __future__ import annotations

import numpy as np

from clipcache.classifiers.base import LogitClassifier, l2_normalize

__all__ = ["ClassMeanClassifier", "class_means"]


def class_means(X: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class mean of the rows of X.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    codes : ndarray of shape (n,), int64
        Class index of each row, in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    ndarray of shape (n_classes, d), float32 (accumulated in float64)
    """
    sums = np.zeros((n_classes, X.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, X)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


class ClassMeanClassifier(LogitClassifier):
    """Nearest class mean by cosine: ``logits = logit_scale * normalize(x) @ normalize(mu).T``.

    Parameters
    ----------
    logit_scale : float, default=100.0
        Temperature, on the same scale as CLIP's zero-shot logits.
    normalize : bool, default=True
        L2-normalise features before averaging and scoring.
    device : str, optional
        None for numpy; a torch device for torch.

    Attributes
    ----------
    prototypes_ : ndarray of shape (C, d), float32
        L2-normalised class means.
    classes_ : ndarray of shape (C,)
    n_features_in_ : int
    """

    def __init__(self, logit_scale=100.0, normalize=True, device=None):
        self.logit_scale = logit_scale
        self.normalize = normalize
        self.device = device

    def fit(self, X, y):
        """Compute the class prototypes.

        Parameters
        ----------
        X : array-like of shape (n, d)
        y : array-like of shape (n,)

        Returns
        -------
        self
        """
        X, y = self._check_Xy(X, y)
        self.classes_, codes = self._encode(y)
        if self.normalize:
            X = l2_normalize(X)
        self.prototypes_ = l2_normalize(class_means(X, codes, len(self.classes_)))
        return self

    def _logits(self, X: np.ndarray) -> np.ndarray:
        if self.normalize:
            X = l2_normalize(X)
        return np.float32(self.logit_scale) * self._matmul(X, self.prototypes_.T)

"""Nearest class mean (cosine prototypes)."""

from __future__ import annotations

from numbers import Real

import numpy as np

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._gda_math import class_sums
from clipcache.classifiers._params import Device, Interval
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
    sums = class_sums(X, codes, n_classes, dtype=np.float64)
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
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).

    Attributes
    ----------
    prototypes_ : ndarray of shape (C, d), float32
        L2-normalised class means.
    classes_ : ndarray of shape (C,)
    center_, temperature_ : the CL2N mean and the softmax temperature (:class:`LogitClassifier`)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from clipcache.classifiers import ClassMeanClassifier
    >>> X = np.array([[2, 0], [1, 0], [0, 3], [0, 1]], dtype=np.float32)
    >>> y = np.array(["cat", "cat", "dog", "dog"])
    >>> clf = ClassMeanClassifier(logit_scale=10.0).fit(X, y)
    >>> clf.prototypes_
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    >>> queries = np.array([[2, 1], [1, 3]], dtype=np.float32)
    >>> clf.logits(queries).round(2)
    array([[8.94, 4.47],
           [3.16, 9.49]], dtype=float32)
    >>> clf.predict(queries)
    array(['cat', 'dog'], dtype='<U3')
    """

    _parameter_constraints = {
        "logit_scale": [Interval(Real, 0, None, closed="neither")],
        "normalize": ["boolean"],
        "device": [None, Device()],
        "center": CENTER_CONSTRAINT,
    }

    def __init__(self, *, logit_scale=100.0, normalize=True, device=None, center=None):
        self.logit_scale = logit_scale
        self.normalize = normalize
        self.device = device
        self.center = center

    def _fit(self, X: np.ndarray, codes: np.ndarray) -> None:
        if self.normalize:
            X = l2_normalize(X)
        self.prototypes_ = l2_normalize(class_means(X, codes, len(self.classes_)))

    def _logits(self, X: np.ndarray) -> np.ndarray:
        if self.normalize:
            X = l2_normalize(X)
        return np.float32(self.logit_scale) * self._matmul(X, self.prototypes_.T)

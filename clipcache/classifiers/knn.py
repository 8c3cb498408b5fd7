"""k-nearest-neighbour classification on FAISS (exact inner-product search)."""

from __future__ import annotations

import faiss
import numpy as np

from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier, l2_normalize

__all__ = ["KNNClassifier"]

METRICS = ("cosine", "ip")
WEIGHTS = ("uniform", "distance")
_EPS = 1e-6


def vote(sims: np.ndarray, neighbour_codes: np.ndarray, n_classes: int, weights: str) -> np.ndarray:
    """Class vote fractions from the k nearest neighbours.

    Parameters
    ----------
    sims : ndarray of shape (n, k), float32
        Similarities of the neighbours (cosine or inner product).
    neighbour_codes : ndarray of shape (n, k), int64
        Class column of each neighbour.
    n_classes : int
    weights : {"uniform", "distance"}
        ``"distance"`` weighs a neighbour by 1 / max(1 - sim, 1e-6), the inverse cosine distance.

    Returns
    -------
    ndarray of shape (n, C), float32, rows summing to 1
    """
    w = np.ones_like(sims, dtype=np.float64) if weights == "uniform" else 1.0 / np.maximum(1.0 - sims, _EPS)
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.arange(len(sims))[:, None], neighbour_codes), w)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


class KNNClassifier(LogitClassifier):
    """k-NN on a ``faiss.IndexFlatIP`` of the support features.

    Parameters
    ----------
    n_neighbors : int, default=5
        k; capped at the number of support samples.
    metric : {"cosine", "ip"}, default="cosine"
        Cosine normalises features and queries; "ip" uses raw inner products.
    weights : {"uniform", "distance"}, default="uniform"
        "distance" (cosine metric only) weighs votes by inverse cosine distance.

    Attributes
    ----------
    keys_ : ndarray of shape (n, d), float32
        The indexed support features (normalised for cosine).
    key_codes_ : ndarray of shape (n,), int64
    n_neighbors_ : int
    classes_ : ndarray of shape (C,)
    n_features_in_ : int

    Notes
    -----
    ``logits`` are the log vote fractions (floored at 1e-12), so ``predict_proba``
    returns the vote fractions.
    """

    def __init__(self, n_neighbors=5, metric="cosine", weights="uniform"):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights

    def fit(self, X, y):
        """Index the support set.

        Parameters
        ----------
        X : array-like of shape (n, d)
        y : array-like of shape (n,)

        Returns
        -------
        self
        """
        X, y = self._check_Xy(X, y)
        if self.metric not in METRICS:
            raise InvalidFeaturesError(f"metric={self.metric!r} is not one of {', '.join(METRICS)}")
        if self.weights not in WEIGHTS:
            raise InvalidFeaturesError(f"weights={self.weights!r} is not one of {', '.join(WEIGHTS)}")
        if self.weights == "distance" and self.metric != "cosine":
            raise InvalidFeaturesError('weights="distance" needs metric="cosine"; use weights="uniform" for "ip"')
        if int(self.n_neighbors) < 1:
            raise InvalidFeaturesError(f"n_neighbors={self.n_neighbors} must be at least 1")
        self.classes_, self.key_codes_ = self._encode(y)
        self.keys_ = np.ascontiguousarray(l2_normalize(X) if self.metric == "cosine" else X)
        self.n_neighbors_ = min(int(self.n_neighbors), len(X))
        self._restore()
        return self

    def _restore(self) -> None:
        """(Re)build the FAISS index from ``keys_``; called by ``fit`` and by model loading."""
        self._faiss_index = faiss.IndexFlatIP(self.keys_.shape[1])
        self._faiss_index.add(self.keys_)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(l2_normalize(X) if self.metric == "cosine" else X)
        sims, ids = self._faiss_index.search(q, self.n_neighbors_)
        p = vote(sims, self.key_codes_[ids], len(self.classes_), self.weights)
        return np.log(np.maximum(p, np.float32(1e-12)))

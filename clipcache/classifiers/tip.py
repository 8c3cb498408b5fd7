"""Tip-Adapter, training-free: a key-value cache of the support set added to base logits."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from clipcache.classifiers._search import correct_over_alpha, grid_argmax
from clipcache.classifiers._validation import check_grid, check_same_classes, encode_validation
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier, l2_normalize
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["TipAdapter", "DEFAULT_ALPHAS", "DEFAULT_BETAS"]

DEFAULT_ALPHAS = np.round(np.linspace(0.0, 10.0, 41), 6)
DEFAULT_BETAS = np.round(np.linspace(0.5, 10.0, 20), 6)
_BLOCK = 1024


def cache_logits(affinity: np.ndarray, key_codes: np.ndarray, n_classes: int, beta: float) -> np.ndarray:
    """``exp(-beta (1 - affinity)) @ V`` with V the one-hot values of the keys.

    Parameters
    ----------
    affinity : ndarray of shape (n, K), float32
        Cosine similarities ``f @ keys.T``.
    key_codes : ndarray of shape (K,), int64
        Class index of each key, sorted ascending, every class present.
    n_classes : int
    beta : float

    Returns
    -------
    ndarray of shape (n, C), float32
    """
    a = np.exp(np.float32(-beta) * (np.float32(1.0) - affinity))
    starts = np.searchsorted(key_codes, np.arange(n_classes))
    return np.add.reduceat(a, starts, axis=1)


def search_alpha_beta(
    base: np.ndarray, affinity_fn, key_codes, n_classes: int, y: np.ndarray, alphas, betas
) -> np.ndarray:
    """Correct counts of ``base + alpha * exp(-beta (1 - f K^T)) V`` over a (beta, alpha) grid.

    ``f K^T`` is computed once per block of validation rows (``affinity_fn(slice)``);
    each beta costs one exp and one class-sum; all alphas of a beta cost one
    interval computation (:func:`correct_over_alpha`).

    Returns
    -------
    ndarray of shape (len(betas), len(alphas)), int64
    """
    counts = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    for start in range(0, len(y), _BLOCK):
        sl = slice(start, start + _BLOCK)
        aff = affinity_fn(sl)
        for i, beta in enumerate(betas):
            delta = cache_logits(aff, key_codes, n_classes, float(beta))
            counts[i] += correct_over_alpha(base[sl], delta, y[sl], alphas)
    return counts


class TipAdapter(LogitClassifier):
    """Training-free Tip-Adapter: ``logits = base(x) + alpha * exp(-beta (1 - f K^T)) V``.

    f is the L2-normalised query, K the normalised support features (the cache
    keys) and V their one-hot labels.

    Parameters
    ----------
    base : estimator, optional
        Gives the base logits (usually :class:`ZeroShotClassifier`); cloned and
        fitted on the support set. None: :class:`ClassMeanClassifier` on the
        support features, for features without text embeddings.
    alpha, beta : float, default=1.0, 5.5
        Used when ``fit`` gets no validation data; otherwise searched.
    alpha_grid, beta_grid : array-like of float, optional
        Search grids (defaults ``DEFAULT_ALPHAS``, ``DEFAULT_BETAS``).
    device : str, optional
        None for numpy; a torch device for the affinity products.

    Attributes
    ----------
    base_ : fitted estimator
    keys_ : ndarray of shape (K, d), float32
        Normalised support features, sorted by class.
    key_codes_ : ndarray of shape (K,), int64
        Column of ``classes_`` of each key.
    alpha_, beta_ : float
    search_accuracy_ : ndarray of shape (len(beta_grid), len(alpha_grid)), float64
        Validation accuracy over the grid (empty when no search ran).
    classes_ : ndarray of shape (C,)
    n_features_in_ : int
    """

    def __init__(self, base=None, alpha=1.0, beta=5.5, alpha_grid=None, beta_grid=None, device=None):
        self.base = base
        self.alpha = alpha
        self.beta = beta
        self.alpha_grid = alpha_grid
        self.beta_grid = beta_grid
        self.device = device

    def fit(self, X, y, X_val=None, y_val=None):
        """Build the cache from the support set; search alpha and beta on validation if given.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Support features.
        y : array-like of shape (n,)
        X_val : array-like of shape (m, d), optional
        y_val : array-like of shape (m,), optional

        Returns
        -------
        self
        """
        X, y = self._check_Xy(X, y)
        alphas = check_grid(self.alpha_grid, "alpha_grid", DEFAULT_ALPHAS)
        betas = check_grid(self.beta_grid, "beta_grid", DEFAULT_BETAS)
        base = ClassMeanClassifier() if self.base is None else clone(self.base)
        self.base_ = base.fit(X, y)
        self.classes_, codes = self._encode(y)
        check_same_classes(np.asarray(self.base_.classes_), self.classes_, "TipAdapter")
        order = np.argsort(codes, kind="stable")
        self.keys_ = l2_normalize(X[order])
        self.key_codes_ = codes[order]
        self.alpha_, self.beta_ = float(self.alpha), float(self.beta)
        self.search_accuracy_ = np.zeros((0, 0))
        if (X_val is None) != (y_val is None):
            raise InvalidFeaturesError("pass both X_val and y_val to search alpha and beta, or neither")
        if X_val is not None:
            self._search(X_val, y_val, alphas, betas)
        return self

    def _search(self, X_val, y_val, alphas, betas) -> None:
        Xv = self._check_X(X_val)
        yv = encode_validation(self.classes_, y_val)
        base = self.base_.logits(Xv)
        fv = l2_normalize(Xv)
        counts = search_alpha_beta(
            base, lambda sl: self._matmul(fv[sl], self.keys_.T), self.key_codes_, len(self.classes_), yv, alphas, betas
        )
        self.search_accuracy_ = counts / len(yv)
        i, j = grid_argmax(counts)
        self.beta_, self.alpha_ = float(betas[i]), float(alphas[j])

    def _logits(self, X: np.ndarray) -> np.ndarray:
        base = self.base_.logits(X)
        aff = self._matmul(l2_normalize(X), self.keys_.T)
        return base + np.float32(self.alpha_) * cache_logits(aff, self.key_codes_, len(self.classes_), self.beta_)

"""Tip-Adapter, training-free: a key-value cache of the support set added to base logits."""

from __future__ import annotations

from numbers import Real

import numpy as np

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Device, Grid, HasMethods, Interval
from clipcache.classifiers._search import correct_over_alpha
from clipcache.classifiers.base import ValidatedLogitClassifier, l2_normalize, part_logits
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_BETAS", "TipAdapter", "cache_logits", "search_alpha_beta"]

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


class TipAdapter(ValidatedLogitClassifier):
    """Training-free Tip-Adapter: ``logits = base(x) + alpha * exp(-beta (1 - f K^T)) V``.

    f is the L2-normalised query, K the normalised support features (the cache
    keys) and V their one-hot labels.

    Parameters
    ----------
    base : estimator, optional
        Gives the base logits (usually :class:`ZeroShotClassifier`); cloned and
        fitted on the support set. None: :class:`ClassMeanClassifier` on the
        support features, for features without text embeddings.
    alpha, beta : float >= 0, default=1.0, 5.5
        Used when ``fit`` gets no validation data; otherwise searched.
    alpha_grid, beta_grid : array-like of float >= 0, optional
        Search grids (defaults ``DEFAULT_ALPHAS``, ``DEFAULT_BETAS``).
    device : str, optional
        None for numpy; a torch device for the affinity products.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).

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
    center_, temperature_ : the CL2N mean and the softmax temperature, fitted on validation
    n_features_in_ : int

    Examples
    --------
    Each class has two opposite modes, so its class mean points nowhere useful
    and the base alone is at chance; the cache of support samples fixes that:

    >>> import numpy as np
    >>> from clipcache.classifiers import ClassMeanClassifier, TipAdapter
    >>> rng = np.random.default_rng(0)
    >>> modes = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float32)
    >>> def draw(n):
    ...     m = np.tile(np.arange(4), n)
    ...     return (modes[m] + 0.2 * rng.normal(size=(len(m), 2))).astype(np.float32), m // 2
    >>> (X, y), (Xv, yv), (Xt, yt) = draw(3), draw(10), draw(50)
    >>> tip = TipAdapter(base=ClassMeanClassifier(logit_scale=1.0), alpha_grid=[0.0, 1.0, 10.0],
    ...                  beta_grid=[1.0, 5.0]).fit(X, y, Xv, yv)
    >>> tip.search_accuracy_
    array([[0.5, 0.8, 1. ],
           [0.5, 1. , 1. ]])
    >>> tip.beta_, tip.alpha_
    (1.0, 10.0)
    >>> tip.base_.score(Xt, yt), tip.score(Xt, yt)
    (0.5, 1.0)
    """

    _parameter_constraints = {
        "base": [None, HasMethods("fit", "logits")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "alpha_grid": [None, Grid()],
        "beta_grid": [None, Grid()],
        "device": [None, Device()],
        "center": CENTER_CONSTRAINT,
    }
    _search_axes = ("beta", "alpha")
    _default_grids = {"alpha": DEFAULT_ALPHAS, "beta": DEFAULT_BETAS}

    def __init__(self, *, base=None, alpha=1.0, beta=5.5, alpha_grid=None, beta_grid=None, device=None, center=None):
        self.base = base
        self.alpha = alpha
        self.beta = beta
        self.alpha_grid = alpha_grid
        self.beta_grid = beta_grid
        self.device = device
        self.center = center

    def _fit_parts(self, X: np.ndarray, codes: np.ndarray, cache) -> None:
        self.base_ = self._fit_part(self.base, ClassMeanClassifier, X, codes, cache)
        order = np.argsort(codes, kind="stable")
        self.keys_ = l2_normalize(X[order])
        self.key_codes_ = codes[order]

    def _count_correct(self, X: np.ndarray, codes: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
        betas, alphas = grids
        fv = l2_normalize(X)
        return search_alpha_beta(
            part_logits(self.base_, X), lambda sl: self._matmul(fv[sl], self.keys_.T), self.key_codes_,
            len(self.classes_), codes, alphas, betas,
        )

    def _logits(self, X: np.ndarray) -> np.ndarray:
        base = part_logits(self.base_, X)
        aff = self._matmul(l2_normalize(X), self.keys_.T)
        return base + np.float32(self.alpha_) * cache_logits(aff, self.key_codes_, len(self.classes_), self.beta_)

"""Auxiliary logit-bias fusion (AMU-Tuning's fusion, without its gradient training).

``logits = base(x_clip) + alpha * psi(x_clip) * zscore(aux(x_aux))``: a closed-form
classifier on auxiliary-backbone features gives a per-class bias, z-scored
across classes; it is added to the CLIP logits with a weight that grows with
the CLIP prediction's uncertainty, ``psi = u ** power``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Grid, HasMethods, Interval, Options
from clipcache.classifiers._search import correct_over_alpha
from clipcache.classifiers.base import (
    InvalidParameterError,
    ValidatedLogitClassifier,
    part_logits,
    softmax,
)
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["DEFAULT_FUSION_ALPHAS", "DEFAULT_POWERS", "LogitBiasFusion", "UNCERTAINTIES", "uncertainty", "zscore"]

UNCERTAINTIES = ("kurtosis", "entropy")
DEFAULT_FUSION_ALPHAS = np.concatenate([[0.0], np.logspace(-2, 2, 41)])
DEFAULT_POWERS = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0])


def zscore(logits: np.ndarray) -> np.ndarray:
    """Per row, ``(z - mean) / std`` across classes; rows with zero spread become 0.

    Parameters
    ----------
    logits : ndarray of shape (n, C), float32

    Returns
    -------
    ndarray of shape (n, C), float32
    """
    mean = logits.mean(axis=1, keepdims=True)
    std = logits.std(axis=1, keepdims=True)
    return np.where(std > 0, (logits - mean) / np.where(std > 0, std, 1), 0).astype(np.float32)


def uncertainty(logits: np.ndarray, kind: str) -> np.ndarray:
    """Uncertainty u in (0, 1] of each row's softmax prediction.

    - ``"entropy"``: u = H(p) / log C.
    - ``"kurtosis"``: u = 1 / kappa with kappa = mean(((p - mean p) / std p)^4),
      the kurtosis of the probabilities across classes (large when peaked); u = 1
      for a uniform p.

    Parameters
    ----------
    logits : ndarray of shape (n, C), float32
    kind : {"kurtosis", "entropy"}

    Returns
    -------
    ndarray of shape (n,), float32
    """
    p = softmax(logits.astype(np.float64))
    if kind == "entropy":
        h = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
        return np.clip(h / np.log(p.shape[1]), 0.0, 1.0).astype(np.float32)
    centred = p - p.mean(axis=1, keepdims=True)
    var = (centred**2).mean(axis=1)
    safe = np.where(var > 0, var, 1.0)
    kappa = (centred**4).mean(axis=1) / safe**2
    return np.where(var > 0, 1.0 / np.maximum(kappa, 1.0), 1.0).astype(np.float32)


class LogitBiasFusion(ValidatedLogitClassifier):
    """CLIP logits plus an uncertainty-gated bias from auxiliary features.

    X is the concatenation ``[x_clip | x_aux]``: the last ``aux_dim`` columns
    are the auxiliary backbone's features (``FeatureStore`` feature sets are
    concatenated by :func:`clipcache.evaluation.protocol.read_features`).

    Parameters
    ----------
    aux_dim : int >= 1, default=1
        Number of trailing columns of X that hold auxiliary features.
    base : estimator, optional
        CLIP logits on the leading columns; usually :class:`ZeroShotClassifier`.
        None for :class:`ClassMeanClassifier`.
    aux : estimator, optional
        Closed-form classifier on the aux columns: :class:`ClassMeanClassifier`
        (default, class-mean prototypes) or :class:`GDAClassifier`.
    uncertainty : {"kurtosis", "entropy"}, default="kurtosis"
    alpha, power : float >= 0, default=1.0, 1.0
        Used when ``fit`` gets no validation data; otherwise searched.
    alpha_grid, power_grid : array-like of float >= 0, optional
        Search grids (defaults ``DEFAULT_FUSION_ALPHAS``, ``DEFAULT_POWERS``).
    center : None, "support" or array-like of shape (d + aux_dim,), default=None
        CL2N centring, applied to the CLIP and the auxiliary columns separately.

    Attributes
    ----------
    base_, aux_ : fitted estimators
    alpha_, power_ : float
    search_accuracy_ : ndarray of shape (len(power_grid), len(alpha_grid)), float64
        Validation accuracy over the grid (empty when no search ran).
    classes_ : ndarray of shape (C,)
    center_, temperature_ : the CL2N mean and the softmax temperature, fitted on validation
    n_features_in_ : int

    Examples
    --------
    Two CLIP columns that tell classes 0 and 1 apart but not 1 and 2, and one
    auxiliary column that separates 1 from 2:

    >>> import numpy as np
    >>> from clipcache.classifiers import LogitBiasFusion
    >>> rng = np.random.default_rng(0)
    >>> clip = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    >>> aux = np.array([[0.0], [-1.0], [1.0]], dtype=np.float32)
    >>> def draw(n):
    ...     y = np.repeat(np.arange(3), n)
    ...     x = np.hstack([clip[y], aux[y]]) + 0.3 * rng.normal(size=(len(y), 3))
    ...     return x.astype(np.float32), y
    >>> (X, y), (Xv, yv), (Xt, yt) = draw(5), draw(10), draw(50)
    >>> fusion = LogitBiasFusion(aux_dim=1, uncertainty="entropy", alpha_grid=[0.0, 10.0],
    ...                          power_grid=[0.0, 1.0]).fit(X, y, Xv, yv)
    >>> fusion.search_accuracy_.round(3)
    array([[0.733, 1.   ],
           [0.733, 0.933]])
    >>> fusion.power_, fusion.alpha_
    (0.0, 10.0)
    >>> round(fusion.base_.score(Xt[:, :2], yt), 3), round(fusion.score(Xt, yt), 3)
    (0.627, 0.967)
    """

    _parameter_constraints = {
        "aux_dim": [Interval(Integral, 1, None, closed="left")],
        "base": [None, HasMethods("fit", "logits")],
        "aux": [None, HasMethods("fit", "logits")],
        "uncertainty": [Options(*UNCERTAINTIES)],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "power": [Interval(Real, 0, None, closed="left")],
        "alpha_grid": [None, Grid()],
        "power_grid": [None, Grid()],
        "center": CENTER_CONSTRAINT,
    }
    _search_axes = ("power", "alpha")
    _default_grids = {"alpha": DEFAULT_FUSION_ALPHAS, "power": DEFAULT_POWERS}

    def __init__(self, *, aux_dim=1, base=None, aux=None, uncertainty="kurtosis", alpha=1.0, power=1.0,
                 alpha_grid=None, power_grid=None, center=None):
        self.aux_dim = aux_dim
        self.base = base
        self.aux = aux
        self.uncertainty = uncertainty
        self.alpha = alpha
        self.power = power
        self.alpha_grid = alpha_grid
        self.power_grid = power_grid
        self.center = center

    def _center_blocks(self, d: int) -> list[slice]:
        k = int(self.aux_dim)
        return [slice(0, d - k), slice(d - k, d)]

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.aux_dim)
        return X[:, : X.shape[1] - k], X[:, X.shape[1] - k :]

    def _fit_parts(self, X: np.ndarray, codes: np.ndarray, cache) -> None:
        if int(self.aux_dim) >= X.shape[1]:
            raise InvalidParameterError(
                f"LogitBiasFusion got aux_dim={self.aux_dim} but X has {X.shape[1]} feature(s); "
                "aux_dim must leave at least one CLIP column",
                param="aux_dim",
            )
        x_clip, x_aux = self._split(X)
        # the parts see column blocks, not the rows of the cached parts: no cache
        self.base_ = self._fit_part(self.base, ClassMeanClassifier, x_clip, codes)
        self.aux_ = self._fit_part(self.aux, ClassMeanClassifier, x_aux, codes)

    def _parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base logits (n, C), uncertainty (n,), z-scored bias (n, C)."""
        x_clip, x_aux = self._split(X)
        base = part_logits(self.base_, x_clip)
        return base, uncertainty(base, self.uncertainty), zscore(part_logits(self.aux_, x_aux))

    def _count_correct(self, X: np.ndarray, codes: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
        powers, alphas = grids
        base, u, bias = self._parts(X)
        return np.stack([correct_over_alpha(base, (u**p)[:, None] * bias, codes, alphas) for p in powers])

    def _logits(self, X: np.ndarray) -> np.ndarray:
        base, u, bias = self._parts(X)
        weight = np.float32(self.alpha_) * u ** np.float32(self.power_)
        return base + weight[:, None] * bias

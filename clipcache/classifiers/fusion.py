"""Auxiliary logit-bias fusion (AMU-Tuning's fusion, without its gradient training).

``logits = base(x_clip) + alpha * psi(x_clip) * zscore(aux(x_aux))``: a closed-form
classifier on auxiliary-backbone features gives a per-class bias, z-scored
across classes; it is added to the CLIP logits with a weight that grows with
the CLIP prediction's uncertainty, ``psi = u ** power``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from clipcache.classifiers._search import correct_over_alpha, grid_argmax
from clipcache.classifiers._validation import check_grid, check_same_classes, encode_validation
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier, softmax
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["LogitBiasFusion", "uncertainty", "zscore", "UNCERTAINTIES"]

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


class LogitBiasFusion(LogitClassifier):
    """CLIP logits plus an uncertainty-gated bias from auxiliary features.

    X is the concatenation ``[x_clip | x_aux]``: the last ``aux_dim`` columns
    are the auxiliary backbone's features (``FeatureStore`` feature sets are
    concatenated by :func:`clipcache.evaluation.protocol.read_features`).

    Parameters
    ----------
    aux_dim : int
        Number of trailing columns of X that hold auxiliary features.
    base : estimator, optional
        CLIP logits on the leading columns; usually :class:`ZeroShotClassifier`.
        None for :class:`ClassMeanClassifier`.
    aux : estimator, optional
        Closed-form classifier on the aux columns: :class:`ClassMeanClassifier`
        (default, class-mean prototypes) or :class:`GDAClassifier`.
    uncertainty : {"kurtosis", "entropy"}, default="kurtosis"
    alpha, power : float, default=1.0, 1.0
        Used when ``fit`` gets no validation data; otherwise searched.
    alpha_grid, power_grid : array-like of float, optional

    Attributes
    ----------
    base_, aux_ : fitted estimators
    alpha_, power_ : float
    search_accuracy_ : ndarray of shape (len(power_grid), len(alpha_grid)), float64
    classes_ : ndarray of shape (C,)
    n_features_in_ : int
    """

    def __init__(self, aux_dim=1, base=None, aux=None, uncertainty="kurtosis", alpha=1.0, power=1.0,
                 alpha_grid=None, power_grid=None):
        self.aux_dim = aux_dim
        self.base = base
        self.aux = aux
        self.uncertainty = uncertainty
        self.alpha = alpha
        self.power = power
        self.alpha_grid = alpha_grid
        self.power_grid = power_grid

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.aux_dim)
        return X[:, : X.shape[1] - k], X[:, X.shape[1] - k :]

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit the base and aux classifiers on the support set; search alpha and power on validation.

        Parameters
        ----------
        X : array-like of shape (n, d_clip + aux_dim)
        y : array-like of shape (n,)
        X_val : array-like of shape (m, d_clip + aux_dim), optional
        y_val : array-like of shape (m,), optional

        Returns
        -------
        self
        """
        X, y = self._check_Xy(X, y)
        if self.uncertainty not in UNCERTAINTIES:
            raise InvalidFeaturesError(f"uncertainty={self.uncertainty!r} is not one of {', '.join(UNCERTAINTIES)}")
        if not 1 <= int(self.aux_dim) < X.shape[1]:
            raise InvalidFeaturesError(
                f"aux_dim={self.aux_dim} must leave at least one CLIP column, but X has {X.shape[1]} feature(s)"
            )
        alphas = check_grid(self.alpha_grid, "alpha_grid", DEFAULT_FUSION_ALPHAS)
        powers = check_grid(self.power_grid, "power_grid", DEFAULT_POWERS)
        x_clip, x_aux = self._split(X)
        self.base_ = (ClassMeanClassifier() if self.base is None else clone(self.base)).fit(x_clip, y)
        self.aux_ = (ClassMeanClassifier() if self.aux is None else clone(self.aux)).fit(x_aux, y)
        self.classes_ = np.asarray(self.aux_.classes_)
        check_same_classes(np.asarray(self.base_.classes_), self.classes_, "LogitBiasFusion")
        self.alpha_, self.power_ = float(self.alpha), float(self.power)
        self.search_accuracy_ = np.zeros((0, 0))
        if (X_val is None) != (y_val is None):
            raise InvalidFeaturesError("pass both X_val and y_val to search alpha and power, or neither")
        if X_val is not None:
            self._search(X_val, y_val, alphas, powers)
        return self

    def _parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base logits (n, C), uncertainty (n,), z-scored bias (n, C)."""
        x_clip, x_aux = self._split(X)
        base = self.base_.logits(x_clip)
        return base, uncertainty(base, self.uncertainty), zscore(self.aux_.logits(x_aux))

    def _search(self, X_val, y_val, alphas, powers) -> None:
        Xv = self._check_X(X_val)
        yv = encode_validation(self.classes_, y_val)
        base, u, bias = self._parts(Xv)
        counts = np.stack([correct_over_alpha(base, (u**p)[:, None] * bias, yv, alphas) for p in powers])
        self.search_accuracy_ = counts / len(yv)
        i, j = grid_argmax(counts)
        self.power_, self.alpha_ = float(powers[i]), float(alphas[j])

    def _logits(self, X: np.ndarray) -> np.ndarray:
        base, u, bias = self._parts(X)
        weight = np.float32(self.alpha_) * u ** np.float32(self.power_)
        return base + weight[:, None] * bias

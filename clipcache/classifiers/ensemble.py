"""``logits = base + alpha * model``: GDA ensembled with zero-shot, alpha chosen on validation."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from clipcache.classifiers._search import correct_over_alpha, grid_argmax
from clipcache.classifiers._validation import check_grid, check_same_classes, encode_validation
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["LogitEnsemble", "DEFAULT_ENSEMBLE_ALPHAS"]

DEFAULT_ENSEMBLE_ALPHAS = np.concatenate([[0.0], np.logspace(-4, 3, 57)])


class LogitEnsemble(LogitClassifier):
    """Sum of two classifiers' logits: ``base(x) + alpha * model(x)``.

    The ICLR 2024 training-free baseline is ``LogitEnsemble(ZeroShotClassifier(...), GDAClassifier())``.

    Parameters
    ----------
    base : estimator, optional
        Usually :class:`ZeroShotClassifier`; None for :class:`ClassMeanClassifier`.
    model : estimator, optional
        Fitted on the support set; None for :class:`GDAClassifier`.
    alpha : float, default=1.0
        Used when ``fit`` gets no validation data; otherwise searched on ``alpha_grid``.
    alpha_grid : array-like of float, optional
        Default ``DEFAULT_ENSEMBLE_ALPHAS`` (0 and 10^-4 ... 10^3).

    Attributes
    ----------
    base_, model_ : fitted estimators
    alpha_ : float
    search_accuracy_ : ndarray of shape (len(alpha_grid),), float64
    classes_ : ndarray of shape (C,)
    n_features_in_ : int
    """

    def __init__(self, base=None, model=None, alpha=1.0, alpha_grid=None):
        self.base = base
        self.model = model
        self.alpha = alpha
        self.alpha_grid = alpha_grid

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit both classifiers on the support set; search alpha on validation if given.

        Parameters
        ----------
        X : array-like of shape (n, d)
        y : array-like of shape (n,)
        X_val : array-like of shape (m, d), optional
        y_val : array-like of shape (m,), optional

        Returns
        -------
        self
        """
        X, y = self._check_Xy(X, y)
        alphas = check_grid(self.alpha_grid, "alpha_grid", DEFAULT_ENSEMBLE_ALPHAS)
        self.base_ = (ClassMeanClassifier() if self.base is None else clone(self.base)).fit(X, y)
        self.model_ = (GDAClassifier() if self.model is None else clone(self.model)).fit(X, y)
        self.classes_ = np.asarray(self.model_.classes_)
        check_same_classes(np.asarray(self.base_.classes_), self.classes_, "LogitEnsemble")
        self.alpha_ = float(self.alpha)
        self.search_accuracy_ = np.zeros(0)
        if (X_val is None) != (y_val is None):
            raise InvalidFeaturesError("pass both X_val and y_val to search alpha, or neither")
        if X_val is not None:
            Xv = self._check_X(X_val)
            yv = encode_validation(self.classes_, y_val)
            counts = correct_over_alpha(self.base_.logits(Xv), self.model_.logits(Xv), yv, alphas)
            self.search_accuracy_ = counts / len(yv)
            self.alpha_ = float(alphas[grid_argmax(counts)[0]])
        return self

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self.base_.logits(X) + np.float32(self.alpha_) * self.model_.logits(X)

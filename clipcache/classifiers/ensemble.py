"""``logits = base + alpha * model``: GDA ensembled with zero-shot, alpha chosen on validation."""

from __future__ import annotations

from numbers import Real

import numpy as np

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Grid, HasMethods, Interval
from clipcache.classifiers._search import correct_over_alpha
from clipcache.classifiers.base import ValidatedLogitClassifier, part_logits
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["LogitEnsemble", "DEFAULT_ENSEMBLE_ALPHAS"]

DEFAULT_ENSEMBLE_ALPHAS = np.concatenate([[0.0], np.logspace(-4, 3, 57)])


class LogitEnsemble(ValidatedLogitClassifier):
    """Sum of two classifiers' logits: ``base(x) + alpha * model(x)``.

    The ICLR 2024 training-free baseline is
    ``LogitEnsemble(base=ZeroShotClassifier(...), model=GDAClassifier())``.

    Parameters
    ----------
    base : estimator, optional
        Usually :class:`ZeroShotClassifier`; None for :class:`ClassMeanClassifier`.
    model : estimator, optional
        Fitted on the support set; None for :class:`GDAClassifier`.
    alpha : float >= 0, default=1.0
        Used when ``fit`` gets no validation data; otherwise searched on ``alpha_grid``.
    alpha_grid : array-like of float >= 0, optional
        Default ``DEFAULT_ENSEMBLE_ALPHAS`` (0 and 10^-4 ... 10^3).
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).

    Attributes
    ----------
    base_, model_ : fitted estimators
    alpha_ : float
    search_accuracy_ : ndarray of shape (len(alpha_grid),), float64
        Validation accuracy at each alpha (empty when no search ran).
    center_, temperature_ : the CL2N mean and the softmax temperature, fitted on validation
    classes_ : ndarray of shape (C,)
    n_features_in_ : int

    Examples
    --------
    Two classes in the same direction at different distances: the cosine base
    (:class:`ClassMeanClassifier`) cannot tell them apart, GDA can, and the
    validation search gives GDA a large weight:

    >>> import numpy as np
    >>> from clipcache.classifiers import LogitEnsemble
    >>> rng = np.random.default_rng(0)
    >>> centres = np.array([[1, 1], [2, 2]], dtype=np.float32)
    >>> def draw(n):
    ...     y = np.repeat(np.arange(2), n)
    ...     return (centres[y] + 0.3 * rng.normal(size=(len(y), 2))).astype(np.float32), y
    >>> (X, y), (Xv, yv), (Xt, yt) = draw(5), draw(10), draw(50)
    >>> clf = LogitEnsemble(alpha_grid=[0.0, 0.1, 1.0, 10.0]).fit(X, y, Xv, yv)
    >>> clf.search_accuracy_
    array([0.4 , 0.45, 0.85, 1.  ])
    >>> clf.alpha_
    10.0
    >>> clf.base_.score(Xt, yt), clf.score(Xt, yt)
    (0.5, 0.96)
    >>> bool(np.allclose(clf.logits(Xt), clf.base_.logits(Xt) + 10.0 * clf.model_.logits(Xt)))
    True
    """

    _parameter_constraints = {
        "base": [None, HasMethods("fit", "logits")],
        "model": [None, HasMethods("fit", "logits")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "alpha_grid": [None, Grid()],
        "center": CENTER_CONSTRAINT,
    }
    _search_axes = ("alpha",)
    _default_grids = {"alpha": DEFAULT_ENSEMBLE_ALPHAS}

    def __init__(self, *, base=None, model=None, alpha=1.0, alpha_grid=None, center=None):
        self.base = base
        self.model = model
        self.alpha = alpha
        self.alpha_grid = alpha_grid
        self.center = center

    def _fit_parts(self, X: np.ndarray, codes: np.ndarray, cache) -> None:
        self.base_ = self._fit_part(self.base, ClassMeanClassifier, X, codes, cache)
        self.model_ = self._fit_part(self.model, GDAClassifier, X, codes, cache)

    def _count_correct(self, X: np.ndarray, codes: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
        (alphas,) = grids
        return correct_over_alpha(part_logits(self.base_, X), part_logits(self.model_, X), codes, alphas)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return part_logits(self.base_, X) + np.float32(self.alpha_) * part_logits(self.model_, X)

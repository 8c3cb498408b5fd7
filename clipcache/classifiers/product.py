"""Product of experts: several classifiers' calibrated probabilities multiplied.

Each expert k is fitted on the support set, and its logits z_k are divided by the
temperature T_k that calibrates it on validation (temperature scaling, Guo et al.
2017, :func:`clipcache.calibration.fit_temperature`). The product of the
calibrated probabilities is, after normalisation, the softmax of the sum of the
scaled logits::

    prod_k softmax(z_k / T_k)  ∝  softmax(sum_k z_k / T_k)

so ``logits = sum_k z_k / T_k``. The weights 1/T_k are not searched on validation
accuracy: each is the one-parameter maximum-likelihood calibration of one expert,
which the validation negative log-likelihood fixes far more tightly than 40 rows
fix an accuracy. The default experts are GDA (ICLR 2024 precision) and the nearest
class mean: a Gaussian model with a shared covariance and a cosine prototype model
err on different images, and on the development split of the benchmarks
(docs/classifiers.md) their product was more accurate than either at 2 to 8 shots.
Without validation data every T_k is 1.
"""

from __future__ import annotations

import numpy as np

from clipcache.calibration import fit_temperature_checked
from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._validation import check_part_classes
from clipcache.classifiers.base import (
    InvalidParameterError,
    LogitClassifier,
    fit_part,
    part_logits,
)
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.prototypes import ClassMeanClassifier

__all__ = ["ProductOfExperts"]


class ProductOfExperts(LogitClassifier):
    """``logits = sum_k expert_k(x) / T_k``: the product of the experts' temperature-calibrated probabilities.

    Parameters
    ----------
    experts : list of estimators, optional
        Unfitted estimators with ``fit`` and ``logits``, cloned for each fit.
        Default ``[GDAClassifier(), ClassMeanClassifier()]``. Experts that search
        hyper-parameters on validation get the validation data.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring, applied once before the experts see the data (leave the
        experts' own ``center`` at None).

    Attributes
    ----------
    experts_ : list of fitted estimators
    expert_temperatures_ : ndarray of shape (K,), float64
        T_k of each expert, fitted on validation (ones without validation data).
    classes_ : ndarray of shape (C,)
    center_ : ndarray of shape (d,), float32, or None
    temperature_ : float
        Softmax temperature of ``predict_proba``, fitted on the product's validation logits.
    n_features_in_ : int

    Examples
    --------
    Three Gaussian classes, five shots each; each expert is calibrated on 60
    validation rows, and the product is more accurate on new rows than either:

    >>> import numpy as np
    >>> from clipcache.classifiers import ProductOfExperts
    >>> rng = np.random.default_rng(0)
    >>> centres = np.array([[3, 0], [0, 3], [2, 2]], dtype=np.float32)
    >>> def draw(n):
    ...     y = np.repeat(np.arange(3), n)
    ...     return (centres[y] + rng.normal(size=(len(y), 2))).astype(np.float32), y
    >>> (X, y), (Xv, yv), (Xt, yt) = draw(5), draw(20), draw(200)
    >>> poe = ProductOfExperts().fit(X, y, Xv, yv)
    >>> [type(e).__name__ for e in poe.experts_], poe.expert_temperatures_.round(3)
    (['GDAClassifier', 'ClassMeanClassifier'], array([ 0.459, 13.851]))
    >>> [round(e.score(Xt, yt), 3) for e in poe.experts_], round(poe.score(Xt, yt), 3)
    ([0.793, 0.795], 0.805)
    >>> gda, ncm = (e.logits(Xt) for e in poe.experts_)
    >>> bool(np.allclose(poe.logits(Xt), gda / 0.459 + ncm / 13.851, rtol=1e-3, atol=1e-3))
    True
    """

    _parameter_constraints = {
        "experts": [None, list, tuple],
        "center": CENTER_CONSTRAINT,
    }
    _fit_takes_validation = True

    def __init__(self, *, experts=None, center=None):
        self.experts = experts
        self.center = center

    def _experts(self) -> list:
        items = [GDAClassifier(), ClassMeanClassifier()] if self.experts is None else list(self.experts)
        if not items or not all(callable(getattr(e, "fit", None)) and callable(getattr(e, "logits", None))
                                for e in items):
            raise InvalidParameterError(
                f"ProductOfExperts got experts={items!r}; give a non-empty list of estimators with fit and logits",
                param="experts",
            )
        return items

    def _validate_params(self) -> None:
        super()._validate_params()
        self._experts()

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit every expert on (X, y); calibrate each, and the product, on (X_val, y_val) when given.

        Parameters
        ----------
        X, y : array-like of shape (n, d) and (n,)
            The support set (X is converted to float32).
        X_val, y_val : array-like of shape (m, d) and (m,), optional
            The validation set, labels among ``y``'s classes. Pass both or neither.

        Returns
        -------
        self
        """
        return self._fit_meta(X, y, X_val, y_val, "calibrate the experts")

    def _fit_checked(self, X, classes, codes, X_val=None, codes_val=None, cache=None):
        X, Xv = self._start_meta_fit(X, classes, X_val)
        fitted = [fit_part(e, X, classes, codes, Xv, codes_val, cache) for e in self._experts()]
        self.experts_ = [est for est, _ in fitted]
        for est in self.experts_:
            check_part_classes("ProductOfExperts", est, classes)
        self.temperature_ = 1.0
        if Xv is None:
            self.expert_temperatures_ = np.ones(len(fitted))
            return None
        self.expert_temperatures_ = np.array([fit_temperature_checked(z, codes_val) for _, z in fitted])
        z = self._combine([z for _, z in fitted])
        self.temperature_ = fit_temperature_checked(z, codes_val)
        return z

    def _combine(self, logits: list[np.ndarray]) -> np.ndarray:
        """sum_k z_k / T_k, (n, C) float32."""
        out = np.zeros(logits[0].shape, dtype=np.float32)
        for z, t in zip(logits, self.expert_temperatures_, strict=True):
            out += np.asarray(z, dtype=np.float32) * np.float32(1.0 / t)
        return out

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._combine([part_logits(est, X) for est in self.experts_])


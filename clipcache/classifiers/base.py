"""Shared machinery of the clipcache estimators.

Every estimator derives from :class:`LogitClassifier`: it computes class
logits of shape (n, C) in ``_logits`` and gets ``decision_function``,
``predict_proba`` and ``predict`` from here, following scikit-learn's
conventions (``classes_``, ``n_features_in_``, a 1-D decision function for
two classes). Features are validated once, at the boundary, and converted to
float32 there; NaN or inf raise :class:`InvalidFeaturesError`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from clipcache.classifiers import _backend
from clipcache.errors import InvalidFeaturesError, NotFittedError
from clipcache.ops import l2_normalize

__all__ = ["EstimatorNotFittedError", "InvalidFeaturesError", "LogitClassifier", "softmax", "l2_normalize"]


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """A clipcache estimator was used before ``fit`` (both clipcache's and scikit-learn's NotFittedError)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits, in their dtype."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _finite_message(exc: ValueError) -> str:
    text = str(exc)
    if "NaN" in text or "inf" in text:
        return "features contain NaN or inf; drop or re-extract those rows before fitting or predicting"
    return text.rstrip(".")


class LogitClassifier(ClassifierMixin, BaseEstimator):
    """Base class: subclasses set ``classes_`` in ``fit`` and implement ``_logits``."""

    device = None  # overridden by the ``device`` parameter of subclasses that take one

    # -- validation -----------------------------------------------------------------

    def _check_Xy(self, X, y):
        """Validate training data; return X (n, d) float32 and y (n,)."""
        try:
            X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        except ValueError as exc:
            raise InvalidFeaturesError(_finite_message(exc)) from None
        check_classification_targets(y)
        return X, y

    def _check_X(self, X) -> np.ndarray:
        """Validate prediction data; return X (n, d) float32."""
        try:
            check_is_fitted(self)
        except SklearnNotFittedError:
            raise EstimatorNotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit before predicting"
            ) from None
        try:
            return validate_data(self, X, dtype=np.float32, reset=False)
        except ValueError as exc:
            raise InvalidFeaturesError(_finite_message(exc)) from None

    @staticmethod
    def _encode(y) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(classes, codes)``: the sorted distinct labels and each sample's index in them."""
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InvalidFeaturesError(
                f"the training labels hold {len(classes)} class; at least 2 classes are needed to fit a classifier"
            )
        return classes, codes.astype(np.int64)

    # -- prediction -----------------------------------------------------------------

    def _logits(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, X) -> np.ndarray:
        """Class logits.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Returns
        -------
        ndarray of shape (n, C), float32
            One column per entry of ``classes_``.
        """
        X = self._check_X(X)
        return np.asarray(self._logits(X), dtype=np.float32)

    def decision_function(self, X) -> np.ndarray:
        """Class scores: (n, C) float32, or (n,) ``logit[1] - logit[0]`` for two classes (as scikit-learn)."""
        z = self.logits(X)
        if z.shape[1] == 2:
            return z[:, 1] - z[:, 0]
        return z

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits, ndarray of shape (n, C), float32."""
        return softmax(self.logits(X))

    def predict(self, X) -> np.ndarray:
        """Predicted labels, ndarray of shape (n,), of the dtype of ``classes_``."""
        z = self.logits(X)
        return self.classes_[np.argmax(z, axis=1)]

    def _matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` in float32 on ``self.device`` (numpy when None)."""
        return _backend.matmul(a, b, self.device)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

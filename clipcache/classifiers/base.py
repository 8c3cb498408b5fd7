"""Shared machinery of the clipcache estimators.

Every estimator derives from :class:`LogitClassifier`: it computes class
logits of shape (n, C) in ``_logits`` and gets ``decision_function``,
``predict_proba`` and ``predict`` from here, following scikit-learn's
conventions (``classes_``, ``n_features_in_``, a 1-D decision function for
two classes). Parameters are checked against the class's declared
``_parameter_constraints`` when ``fit`` starts, before any data is read; a bad
one raises :class:`InvalidParameterError`. Features are validated once, at the
boundary, and converted to float32 there; NaN or inf raise
:class:`InvalidFeaturesError`.

Every estimator takes ``center`` (SimpleShot's CL2N, see
:mod:`clipcache.classifiers._centering`): the mean is fixed in ``fit``, kept in
``center_``, and applied to every X that comes in, in ``fit`` and when predicting.

Every estimator can be calibrated by temperature scaling (Guo et al. 2017,
:mod:`clipcache.calibration`): :meth:`LogitClassifier.calibrate` fits
``temperature_`` on validation logits, and ``predict_proba`` returns
``softmax(logits / temperature_)``; ``fit`` resets ``temperature_`` to 1.
``logits``, ``decision_function`` and ``predict`` never change with it.

The classifiers whose hyper-parameters are searched on validation data (Tip-Adapter,
logit-bias fusion, the logit ensemble) share one ``fit`` in
:class:`ValidatedLogitClassifier`, which also calibrates on that validation data.

Estimators that fit other estimators on the same data
(:class:`~clipcache.classifiers.SelectByValidation`,
:class:`~clipcache.classifiers.ProductOfExperts` and every
:class:`ValidatedLogitClassifier`) check their input once, at their
boundary, and fit their parts with :func:`fit_part`: an estimator whose
``fit`` is :meth:`LogitClassifier.fit` (or that defines its own
``_fit_checked``) is then fitted by ``_fit_checked`` on the checked arrays,
without checking them again, and a part that appears twice (GDA alone, GDA
inside a product and GDA inside a logit ensemble) is fitted once per fit of
the outermost estimator (:class:`PartCache`).
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from clipcache.calibration import fit_temperature
from clipcache.classifiers import _backend
from clipcache.classifiers._centering import apply_center, check_center_vector, mean_of_rows
from clipcache.classifiers._params import validate_parameters
from clipcache.classifiers._search import grid_argmax
from clipcache.classifiers._validation import check_same_classes, encode_validation
from clipcache.errors import InvalidFeaturesError, InvalidParameterError, NotFittedError
from clipcache.ops import l2_normalize

__all__ = [
    "EstimatorNotFittedError",
    "InvalidFeaturesError",
    "InvalidParameterError",
    "LogitClassifier",
    "PartCache",
    "ValidatedLogitClassifier",
    "fit_part",
    "l2_normalize",
    "part_logits",
    "softmax",
]


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """A clipcache estimator was used before ``fit`` (both clipcache's and scikit-learn's NotFittedError)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits, in their dtype."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


#: The message of features that hold NaN or inf, wherever an estimator finds them.
NONFINITE_FEATURES = "features contain NaN or inf; drop or re-extract those rows before fitting or predicting"


def _finite_message(exc: ValueError) -> str:
    text = str(exc)
    if "NaN" in text or "inf" in text:
        return NONFINITE_FEATURES
    return text.rstrip(".")


@cache
def _param_names(cls: type) -> list[str]:
    """scikit-learn's ``_get_param_names`` of a class, read from its ``__init__`` signature once."""
    return BaseEstimator._get_param_names.__func__(cls)


class LogitClassifier(ClassifierMixin, BaseEstimator):
    """Base class of the clipcache estimators.

    Subclasses declare ``_parameter_constraints`` (see
    :mod:`clipcache.classifiers._params`), take their parameters keyword-only
    in ``__init__`` (``center`` among them), implement ``_fit(X, codes)`` (or
    override ``fit``) and ``_logits(X)``. ``_fit`` and ``_logits`` receive
    validated, centred float32 features.

    Every estimator's ``center`` parameter is SimpleShot's CL2N centring
    (:mod:`clipcache.classifiers._centering`): None, ``"support"`` (the mean of
    the rows given to ``fit``) or a mean vector of shape (d,); the features are
    centred and L2-normalised before fitting and predicting.

    Attributes
    ----------
    center_ : ndarray of shape (d,), float32, or None
        The mean subtracted (None: no centring).
    temperature_ : float
        Softmax temperature of ``predict_proba``: 1 after ``fit``, fitted by
        :meth:`calibrate` (or by ``fit`` itself when it gets validation data).
    """

    device = None  # overridden by the ``device`` parameter of subclasses that take one
    center = None  # overridden by the ``center`` parameter
    _parameter_constraints: ClassVar[dict] = {}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # scikit-learn reads the __init__ signature on every get_params / clone; it never changes
        return _param_names(cls)

    # -- fitting --------------------------------------------------------------------

    def fit(self, X, y):
        """Fit on the support set.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Support features; converted to float32.
        y : array-like of shape (n,)
            Labels of any sortable dtype (int, str, float); ``classes_`` keeps it.

        Returns
        -------
        self
        """
        self._validate_params()
        X, y = self._check_Xy(X, y)
        classes, codes = self._encode(y)
        self._fit_checked(X, classes, codes)
        return self

    def _fit_checked(self, X: np.ndarray, classes: np.ndarray, codes: np.ndarray, X_val=None, codes_val=None,
                     cache=None):
        """What ``fit`` does after its checks, on checked data (parameters already validated).

        Parameters
        ----------
        X : ndarray of shape (n, d), float32
            Finite support features, before this estimator's own centring.
        classes : ndarray of shape (C,)
            The sorted distinct labels (at least 2).
        codes : ndarray of shape (n,), int64
            The column of ``classes`` of each row.
        X_val, codes_val : ndarray of shape (m, d) float32 and (m,) int64, optional
            Checked validation rows, for estimators that search or calibrate on them
            (unused here).
        cache : PartCache, optional
            Parts fitted earlier on the same data (unused here).

        Returns
        -------
        ndarray of shape (m, C), float32, or None
            The validation logits when the fit computed them anyway (an estimator that
            searches or calibrates on validation), so that :func:`fit_part` does not
            compute them again; None otherwise.
        """
        self.n_features_in_ = X.shape[1]
        X = self._fit_center(X)
        self.classes_ = classes
        self._fit(X, codes)
        self.temperature_ = 1.0
        return None

    def _logits_checked(self, X: np.ndarray) -> np.ndarray:
        """Logits (n, C) of checked float32 rows X (n, d), before this estimator's own centring."""
        return self._logits(apply_center(X, getattr(self, "center_", None), self._center_blocks(X.shape[1])))

    def _fit_meta(self, X, y, X_val, y_val, purpose: str):
        """``fit`` of a meta-estimator: check the input once, then fit by ``_fit_checked`` with one :class:`PartCache`."""
        self._validate_params()
        self._fit_checked(*self._check_fit_input(X, y, X_val, y_val, purpose), cache=PartCache())
        return self

    def _start_meta_fit(self, X: np.ndarray, classes: np.ndarray, X_val=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Set ``n_features_in_``, the centre (from X) and ``classes_``; return the centred X and X_val."""
        self.n_features_in_ = X.shape[1]
        X = self._fit_center(X)
        self.classes_ = classes
        return X, None if X_val is None else apply_center(X_val, self.center_, self._center_blocks(X.shape[1]))

    def _check_fit_input(self, X, y, X_val, y_val, purpose: str):
        """The checks of a ``fit(X, y, X_val, y_val)``, done once at a meta-estimator's boundary.

        Returns
        -------
        X : ndarray of shape (n, d), float32
        classes : ndarray of shape (C,)
        codes : ndarray of shape (n,), int64
        X_val : ndarray of shape (m, d), float32, or None
        codes_val : ndarray of shape (m,), int64, or None
            The column of ``classes`` of each validation row.
        """
        self._check_validation_pair(X_val, y_val, purpose)
        X, y = self._check_Xy(X, y)
        classes, codes = self._encode(y)
        if X_val is None:
            return X, classes, codes, None, None
        Xv = _float32_rows(X_val)
        if Xv.shape[1] != X.shape[1]:
            raise InvalidFeaturesError(
                f"X_val has {Xv.shape[1]} features but X has {X.shape[1]}; validate on features of the same "
                "feature set",
                param="X_val",
            )
        return X, classes, codes, Xv, encode_validation(classes, y_val)

    def _fit(self, X: np.ndarray, codes: np.ndarray) -> None:  # pragma: no cover - abstract
        """Learn from X (n, d) float32 and codes (n,) int64, the column of ``classes_`` of each row."""
        raise NotImplementedError

    # -- centring and calibration --------------------------------------------------

    def _center_blocks(self, d: int) -> list[slice]:
        """Column blocks that are centred and normalised separately (one per feature set)."""
        return [slice(0, d)]

    def _fit_center(self, X: np.ndarray, mean_rows: np.ndarray | None = None) -> np.ndarray:
        """Set ``center_`` from the ``center`` parameter; return X (n, d) centred (unchanged when None).

        ``mean_rows`` (bool (n,)) restricts the rows whose mean ``"support"`` takes.
        """
        if self.center is None:
            self.center_ = None
        elif isinstance(self.center, str):
            self.center_ = mean_of_rows(X if mean_rows is None else X[mean_rows])
        else:
            self.center_ = check_center_vector(type(self).__name__, self.center, X.shape[1])
        return apply_center(X, self.center_, self._center_blocks(X.shape[1]))

    def calibrate(self, X_val, y_val):
        """Fit ``temperature_`` by temperature scaling on validation data.

        After this, ``predict_proba`` returns ``softmax(logits / temperature_)``
        (:func:`clipcache.calibration.fit_temperature` minimises the validation NLL).

        Parameters
        ----------
        X_val : array-like of shape (m, d)
            Validation features, disjoint from the test data.
        y_val : array-like of shape (m,)
            Their labels, all among ``classes_``.

        Returns
        -------
        self
        """
        X = self._check_X(X_val)
        self._fit_temperature(X, encode_validation(self.classes_, y_val))
        return self

    def _fit_temperature(self, X: np.ndarray, codes: np.ndarray) -> None:
        """``temperature_`` from checked, centred X (m, d) and class columns (m,)."""
        self.temperature_ = fit_temperature(self._logits(X), codes)

    # -- validation -----------------------------------------------------------------

    def _check_validation_pair(self, X_val, y_val, purpose: str) -> None:
        """Raise unless X_val and y_val are both given or both None (``purpose``: what they are for)."""
        if (X_val is None) != (y_val is None):
            raise InvalidParameterError(
                f"{type(self).__name__}.fit got only one of X_val and y_val; pass both to {purpose}, or neither"
            )

    def _validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints``; raise :class:`InvalidParameterError`."""
        validate_parameters(type(self).__name__, self._parameter_constraints, self.get_params(deep=False))
        _backend.check_device(self.device)

    def _check_Xy(self, X, y):
        """Validate training data; return X (n, d) float32 and y (n,).

        Plain arrays that need no conversion but to float32 (X float (n, d), n >= 2,
        finite; y 1-D of n integer or string labels) are checked here directly, as
        ``validate_data`` would pass them; anything else goes through ``validate_data``.
        """
        if (isinstance(X, np.ndarray) and isinstance(y, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f"
                and X.shape[0] >= 2 and X.shape[1] >= 1 and y.shape == (X.shape[0],) and y.dtype.kind in "iuUS"):
            X = X.astype(np.float32, copy=False)
            if np.isfinite(X).all():
                self.n_features_in_ = X.shape[1]
                if hasattr(self, "feature_names_in_"):  # as validate_data does for data without column names
                    del self.feature_names_in_
                return X, y
        try:
            X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        except ValueError as exc:
            raise InvalidFeaturesError(_finite_message(exc)) from None
        if y.dtype.kind in "iuUS":  # integer or string labels are classes: skip the costly type_of_target
            return X, y
        try:
            check_classification_targets(y)
        except ValueError:
            raise InvalidFeaturesError(
                f"Unknown label type: {type_of_target(y)}; y must hold class labels (ints, strings or "
                "whole-number floats)",
                param="y",
            ) from None
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
            X = validate_data(self, X, dtype=np.float32, reset=False)
        except ValueError as exc:
            raise InvalidFeaturesError(_finite_message(exc)) from None
        return apply_center(X, getattr(self, "center_", None), self._center_blocks(X.shape[1]))

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
        """``softmax(logits / temperature_)``, ndarray of shape (n, C), float32 (T = 1 until :meth:`calibrate`)."""
        z = self.logits(X)
        temperature = float(getattr(self, "temperature_", 1.0))  # model files of 0.1 have none
        return softmax(z / np.float32(temperature) if temperature != 1.0 else z)

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


def _float32_rows(X) -> np.ndarray:
    """X (m, d) as finite float32: a float ndarray is only converted; anything else goes through ``check_array``."""
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f" and X.shape[0] and X.shape[1]:
        X = X.astype(np.float32, copy=False)
        if not np.isfinite(X).all():
            raise InvalidFeaturesError(_finite_message(ValueError("NaN")), param="X_val")
        return X
    try:
        return check_array(X, dtype=np.float32)
    except ValueError as exc:
        raise InvalidFeaturesError(_finite_message(exc), param="X_val") from None


def _takes_validation(estimator) -> bool:
    """Whether ``estimator.fit`` takes ``(X, y, X_val, y_val)`` (it searches or calibrates on validation)."""
    return bool(getattr(estimator, "_fit_takes_validation", False))


def _fits_checked(estimator) -> bool:
    """Whether ``estimator`` can be fitted by ``_fit_checked``: its ``fit`` is the base one, or it defines its own."""
    cls = type(estimator)
    return isinstance(estimator, LogitClassifier) and (
        cls.fit is LogitClassifier.fit or cls._fit_checked is not LogitClassifier._fit_checked
    )


class PartCache:
    """The parts that one meta-estimator fit has fitted, by class and parameters, with their validation logits.

    Only parts whose parameters are all plain values (None, bool, int, float,
    str) are kept; any other part is fitted anew each time.
    """

    def __init__(self):
        self._parts: dict = {}

    @staticmethod
    def key(estimator, validated: bool):
        """The key of ``estimator`` fitted with (``validated``) or without validation data; None if not cacheable."""
        params = estimator.get_params(deep=False)
        if not all(v is None or isinstance(v, bool | int | float | str) for v in params.values()):
            return None
        return type(estimator), tuple(sorted(params.items())), validated

    def get(self, key):
        return None if key is None else self._parts.get(key)

    def put(self, key, value) -> None:
        if key is not None:
            self._parts[key] = value


def fit_part(estimator, X: np.ndarray, classes: np.ndarray, codes: np.ndarray, X_val=None, codes_val=None,
             cache: PartCache | None = None):
    """A fitted clone of ``estimator`` and its validation logits, from checked data.

    Estimators that :func:`_fits_checked` are fitted by ``_fit_checked`` and
    scored by ``_logits_checked``, with no second check of the arrays; others by
    their public ``fit`` (with the validation data when they take it) and
    ``logits``. With a ``cache``, a part with the same class and parameters is
    fitted once.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``logits``
    X : ndarray of shape (n, d), float32
    classes : ndarray of shape (C,)
    codes : ndarray of shape (n,), int64
    X_val, codes_val : ndarray of shape (m, d) float32 and (m,) int64, optional
    cache : PartCache, optional

    Returns
    -------
    fitted : estimator
    val_logits : ndarray of shape (m, C), float32, or None without validation data
    """
    key = None if cache is None else cache.key(estimator, X_val is not None and _takes_validation(estimator))
    found = None if cache is None else cache.get(key)
    if found is not None:
        est, z = found  # z is None when it was fitted without validation data, which this part does not read
    else:
        # clipcache estimators never change their parameters, so a new instance with the same
        # values is a clone (sklearn's clone also deep-copies every parameter, nested lists included)
        est = type(estimator)(**estimator.get_params(deep=False)) if isinstance(estimator, LogitClassifier) else clone(
            estimator)
        if _fits_checked(est):
            est._validate_params()
            # a part that centres the data itself hands its own parts other rows than the cached ones were fitted on
            z = est._fit_checked(X, classes, codes, X_val, codes_val, cache if est.center is None else PartCache())
        else:
            y = classes[codes]
            if X_val is not None and _takes_validation(est):
                est.fit(X, y, X_val, classes[codes_val])
            else:
                est.fit(X, y)
            z = None
    if X_val is not None and z is None:
        z = np.asarray(part_logits(est, X_val), dtype=np.float32)
    if cache is not None:
        cache.put(key, (est, z))
    return est, None if X_val is None else z


def part_logits(estimator, X: np.ndarray) -> np.ndarray:
    """A fitted part's logits (n, C) of checked float32 rows (checked again only for foreign estimators)."""
    return estimator._logits_checked(X) if isinstance(estimator, LogitClassifier) else estimator.logits(X)


class ValidatedLogitClassifier(LogitClassifier):
    """Base class of the classifiers whose hyper-parameters are chosen on validation data.

    ``fit(X, y, X_val, y_val)`` checks the parameters, fits the parts on the
    support set (``_fit_parts``), and then either keeps the fixed
    hyper-parameters or, when validation data is given, counts the correct
    validation predictions over the whole search grid (``_count_correct``),
    keeps the best cell (the first in C order on ties) and fits
    ``temperature_`` on the validation logits of that cell.

    Subclasses declare ``_search_axes``, the searched hyper-parameters in the
    order of the axes of ``search_accuracy_``. For each name ``h`` the
    parameter ``h`` is the fixed value, ``h_grid`` the grid (None for
    ``_default_grids[h]``), and ``h_`` the value used after ``fit``.
    """

    _search_axes: ClassVar[tuple[str, ...]] = ()
    _default_grids: ClassVar[dict[str, np.ndarray]] = {}
    _fit_takes_validation = True

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit on the support set; search the hyper-parameters on validation data if given.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Support features; converted to float32.
        y : array-like of shape (n,)
            Support labels.
        X_val : array-like of shape (m, d), optional
            Validation features, disjoint from the test data.
        y_val : array-like of shape (m,), optional
            Validation labels, all among ``y``'s classes. Pass both or neither.

        Returns
        -------
        self
        """
        return self._fit_meta(X, y, X_val, y_val, f"search {' and '.join(self._search_axes)}")

    def _fit_checked(self, X, classes, codes, X_val=None, codes_val=None, cache=None):
        X, Xv = self._start_meta_fit(X, classes, X_val)
        self._fit_parts(X, codes, cache)
        for name in self._search_axes:
            setattr(self, f"{name}_", float(getattr(self, name)))
        self.search_accuracy_ = np.zeros((0,) * len(self._search_axes))
        self.temperature_ = 1.0
        if Xv is not None:
            grids = [self._grid(name) for name in self._search_axes]
            counts = self._count_correct(Xv, codes_val, grids)
            self.search_accuracy_ = counts / len(codes_val)
            for name, grid, i in zip(self._search_axes, grids, grid_argmax(counts), strict=True):
                setattr(self, f"{name}_", float(grid[i]))
            z = np.asarray(self._logits(Xv), dtype=np.float32)
            self.temperature_ = fit_temperature(z, codes_val)
            return z
        return None

    def _grid(self, name: str) -> np.ndarray:
        """The search grid of hyper-parameter ``name``, float64 (A,)."""
        values = getattr(self, f"{name}_grid")
        return self._default_grids[name] if values is None else np.asarray(values, dtype=np.float64)

    def _fit_part(self, estimator, default: type, X: np.ndarray, codes: np.ndarray, cache=None):
        """A clone of ``estimator`` (``default()`` when None) fitted on (X, ``classes_[codes]``) by :func:`fit_part`.

        Raises unless the part knows exactly the support set's classes.
        """
        part = fit_part(default() if estimator is None else estimator, X, self.classes_, codes, cache=cache)[0]
        check_same_classes(np.asarray(part.classes_), self.classes_, type(self).__name__)
        return part

    def _fit_parts(self, X: np.ndarray, codes: np.ndarray, cache: PartCache | None) -> None:  # pragma: no cover
        """Fit the parts on centred X (n, d) float32 and codes (n,), the columns of ``classes_`` (already set)."""
        raise NotImplementedError

    def _count_correct(self, X: np.ndarray, codes: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
        """Correct predictions on (X, codes) at every cell of the grid (int64, one axis per grid)."""
        raise NotImplementedError  # pragma: no cover - abstract

"""Temperature scaling: one scalar T, fitted on validation logits, that makes probabilities honest.

Guo et al. (2017), "On Calibration of Modern Neural Networks": the calibrated
probabilities are ``softmax(logits / T)``, with T minimising the negative
log-likelihood (NLL) of held-out labels. T > 0 never changes the arg-max, so
accuracy is untouched; only confidences move.

The NLL is convex in s = 1/T: with p = softmax(s z),

    f(s) = mean_i [logsumexp(s z_i) - s z_iy],
    f'(s) = mean_i [E_p(z_i) - z_iy],     f''(s) = mean_i Var_p(z_i) >= 0,

so :func:`fit_temperature` finds the root of f' by a safeguarded Newton method on
s in [1/TEMPERATURE_BOUNDS[1], 1/TEMPERATURE_BOUNDS[0]] (T in [1e-4, 1e6], wide
enough for both unit-scale cosines and GDA logits, whose scale reaches the
thousands): a Newton step that leaves the bracket where f' changes sign is
replaced by a bisection of the bracket in log s. It converges to a relative 1e-7
in s (and the last Newton step squares that error) in a few steps (a validation set of 40 rows takes about 0.1 ms; scipy's
bounded Brent search over log T, used before, took about 1 ms). A minimum on a
bound is logged (at info level), and so is a minimum NLL below 1e-9 (validation
logits that separate every class perfectly make the NLL fall towards 0 as T falls
to 0).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.special

from clipcache.errors import InvalidFeaturesError, InvalidParameterError, NotFittedError

__all__ = ["TEMPERATURE_BOUNDS", "TemperatureScaling", "fit_temperature", "fit_temperature_checked", "nll"]

logger = logging.getLogger(__name__)

#: The search interval of T (the search runs over log T).
TEMPERATURE_BOUNDS = (1e-4, 1e6)
_RTOL = 1e-7  # on s = 1/T: a Newton step this small leaves an error of order 1e-14
_MAX_STEPS = 200


def _check_logits(logits, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate (n, C) logits (and column labels); return them as float64 / int64."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise InvalidFeaturesError(f"logits have shape {z.shape}; pass an (n, C) array of class logits")
    if not np.isfinite(z).all():
        raise InvalidFeaturesError("logits contain NaN or inf; drop those rows before calibrating")
    if y is None:
        return z, None
    labels = np.asarray(y)
    if labels.shape != (len(z),):
        raise InvalidFeaturesError(f"y has shape {labels.shape} but the logits have {len(z)} rows; pass one label per row")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= z.shape[1]):
        raise InvalidFeaturesError(
            f"y must hold column indices in [0, {z.shape[1]}) of the logits; map class labels to columns first"
        )
    return z, labels.astype(np.int64)


def nll(logits, y, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at the true columns.

    Parameters
    ----------
    logits : array-like of shape (n, C), float
    y : array-like of shape (n,), int
        True column index of each row, in ``[0, C)``.
    temperature : float, default=1.0

    Returns
    -------
    float
    """
    z, labels = _check_logits(logits, y)
    return _nll(z, labels, float(temperature))


def _nll(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    s = z / temperature
    top = s.max(axis=1)
    lse = top + np.log(np.exp(s - top[:, None]).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(s)), labels]))


def fit_temperature(logits, y) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on labelled logits.

    Parameters
    ----------
    logits : array-like of shape (n, C), float
        Validation logits (never the test split's), one column per class.
    y : array-like of shape (n,), int
        True column index of each row, in ``[0, C)``.

    Returns
    -------
    float
        T in :data:`TEMPERATURE_BOUNDS`, found by a safeguarded Newton method on 1/T
        to a relative precision better than 1e-7.

    Raises
    ------
    InvalidFeaturesError
        Empty, non-finite or mis-shaped logits, or labels outside ``[0, C)``.
    """
    z, labels = _check_logits(logits, y)
    if len(z) == 0:
        raise InvalidFeaturesError("no validation logits to fit a temperature on; pass at least one labelled row")
    return fit_temperature_checked(z, labels)


def fit_temperature_checked(z: np.ndarray, labels: np.ndarray) -> float:
    """:func:`fit_temperature` of logits and labels already checked: z (n, C) float, labels (n,) int64 columns, n >= 1."""
    z = np.asarray(z, dtype=np.float64)
    s, value = _newton_inverse_temperature(z, labels)
    t = 1.0 / s
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    if min(np.log(t) - lo, hi - np.log(t)) < 1e-3 or value < 1e-9:
        logger.info(
            "temperature scaling: the NLL has no interior minimum (T=%.3g, NLL %.3g); the validation logits "
            "may separate the classes perfectly (too few validation rows?)", t, value
        )
    return float(t)


def _slope_curvature(zc: np.ndarray, powers: np.ndarray, true_mean: float, s: float) -> tuple[float, float, np.ndarray]:
    """f'(s), f''(s) and each row's sum of exp(s zc) for the NLL f(s) = mean(logsumexp(s z) - s z_y) at s = 1/T.

    ``zc`` (n, C) is z minus each row's maximum (the NLL does not change when a
    row is shifted, and exp(s zc) <= 1 never overflows), ``powers`` (n, C, 3) holds
    zc ** 0, zc ** 1 and zc ** 2, and ``true_mean`` is the mean of zc at the true
    columns. f(s) itself is :func:`_nll_at` of the sums.
    """
    moments = (np.exp(s * zc)[:, None, :] @ powers)[:, 0, :]  # (n, 3): sum p, sum p zc, sum p zc^2
    total = moments[:, 0]
    mean = moments[:, 1] / total
    n = len(zc)
    slope = float(np.add.reduce(mean)) / n - true_mean
    curvature = max(float(np.add.reduce(moments[:, 2] / total) - mean @ mean) / n, 0.0)
    return slope, curvature, total


def _nll_at(total: np.ndarray, true_mean: float, s: float) -> float:
    """f(s) from the row sums of :func:`_slope_curvature` at s."""
    return float(np.add.reduce(np.log(total))) / len(total) - s * true_mean


def _newton_inverse_temperature(z: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The s = 1/T in the bounds where the convex NLL is smallest, and the NLL there (safeguarded Newton on f'(s) = 0).

    The bracket [lo, hi] holds the root of f'. As in Numerical Recipes' ``rtsafe``,
    a Newton step is taken when it stays inside the bracket and is at most half
    the step before the last; otherwise (a step out of the bracket, or Newton
    crawling along an exponential tail of f') the bracket is bisected in log s.
    A bound of the search interval is evaluated only when the search heads for
    it; when f' has the same sign there, the minimum lies on that bound.
    """
    n, c = z.shape
    zc = z - z.max(axis=1, keepdims=True)
    zc2, true_mean = zc * zc, float(np.add.reduce(zc[np.arange(n), labels])) / n
    powers = np.empty((n, c, 3))
    powers[:, :, 0], powers[:, :, 1], powers[:, :, 2] = 1.0, zc, zc2
    lo, hi = 1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0]
    lo_known = hi_known = False  # whether f' is known to be < 0 at lo (> 0 at hi)
    row_means = np.add.reduce(zc, axis=1) / c
    spread = float(np.sqrt(max(float(np.add.reduce(zc2, axis=None)) / (n * c) - row_means @ row_means / n, 0.0)))
    # start where s z varies by about 1 within a row (the logits' root-mean-square spread)
    s = min(max(1.0 / spread, lo), hi) if spread > 0 else 1.0
    last = before_last = np.inf  # the sizes of the last two steps
    for _ in range(_MAX_STEPS):
        slope, curvature, total = _slope_curvature(zc, powers, true_mean, s)
        if slope == 0:
            return s, _nll_at(total, true_mean, s)
        if slope > 0:
            hi, hi_known = s, True
        else:
            lo, lo_known = s, True
        step = s - slope / curvature if curvature > 0 else np.nan
        if abs(step - s) <= _RTOL * s:  # converged: Newton's error is now of order (step - s) ** 2
            return step, _nll_at(total, true_mean, s)
        if not (lo < step < hi and abs(step - s) <= 0.5 * before_last):
            if slope < 0 and not hi_known:
                bound = _slope_curvature(zc, powers, true_mean, hi)
                if bound[0] <= 0:  # the NLL falls up to the largest s
                    return hi, _nll_at(bound[2], true_mean, hi)
                hi_known = True
            elif slope > 0 and not lo_known:
                bound = _slope_curvature(zc, powers, true_mean, lo)
                if bound[0] >= 0:  # it rises from the smallest s
                    return lo, _nll_at(bound[2], true_mean, lo)
                lo_known = True
            step = float(np.sqrt(lo * hi))
        if hi - lo <= _RTOL * lo:
            return step, _nll_at(_slope_curvature(zc, powers, true_mean, step)[2], true_mean, step)
        before_last, last, s = last, abs(step - s), step
    return s, _nll_at(_slope_curvature(zc, powers, true_mean, s)[2], true_mean, s)


class TemperatureScaling:
    """Calibrate logits with one temperature: ``softmax(logits / T)``.

    Parameters
    ----------
    temperature : float, optional
        A fixed T; ``fit`` then only checks its input. By default ``fit`` finds T with
        :func:`fit_temperature`.

    Attributes
    ----------
    temperature_ : float
        The fitted (or fixed) T.
    nll_before_, nll_after_ : float
        NLL of the fitting logits at T = 1 and at ``temperature_``.

    Examples
    --------
    >>> ts = TemperatureScaling().fit(clf.logits(X_val), y_val_columns)   # doctest: +SKIP
    >>> proba = ts.transform(clf.logits(X_test))                          # doctest: +SKIP
    """

    def __init__(self, temperature: float | None = None):
        self.temperature = temperature

    def fit(self, logits, y) -> TemperatureScaling:
        """Fit T on validation logits.

        Parameters
        ----------
        logits : array-like of shape (n, C), float
        y : array-like of shape (n,), int
            True column index of each row, in ``[0, C)``.

        Returns
        -------
        self
        """
        z, labels = _check_logits(logits, y)
        if self.temperature is None:
            self.temperature_ = fit_temperature(z, labels)
        else:
            t = float(self.temperature)
            if not np.isfinite(t) or t <= 0:
                raise InvalidParameterError(f"temperature={self.temperature!r} must be a positive number", param="temperature")
            self.temperature_ = t
        self.nll_before_ = _nll(z, labels, 1.0) if len(z) else float("nan")
        self.nll_after_ = _nll(z, labels, self.temperature_) if len(z) else float("nan")
        return self

    def _scaled(self, logits) -> np.ndarray:
        if not hasattr(self, "temperature_"):
            raise NotFittedError("this TemperatureScaling is not fitted yet; call fit before transform")
        z, _ = _check_logits(logits)
        return z / self.temperature_

    def scale(self, logits) -> np.ndarray:
        """Calibrated logits ``logits / T``: array-like (n, C) in, ndarray (n, C) float32 out."""
        return self._scaled(logits).astype(np.float32)

    def transform(self, logits) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``.

        Parameters
        ----------
        logits : array-like of shape (n, C), float

        Returns
        -------
        ndarray of shape (n, C), float32
            Rows sum to 1.
        """
        return scipy.special.softmax(self._scaled(logits), axis=1).astype(np.float32)

"""Gaussian discriminant analysis with a shared covariance (linear discriminant).

``logits_k(x) = x . W_k + b_k`` with ``W = mu P`` and
``b_k = log pi_k - mu_k P mu_k / 2``, where P is a precision matrix estimated by
one of three estimators (see :class:`GDAClassifier`). The fit needs only class
sums and a (d, d) scatter matrix, so it can stream a store chunk by chunk in
O(d^2 + C d + chunk) memory (:meth:`GDAClassifier.fit_chunks`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.sparse

from clipcache.classifiers import _backend
from clipcache.classifiers._params import Device, Interval, Options
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from clipcache.feature_store import FeatureStore

__all__ = ["GDAClassifier", "PRECISIONS", "PRIORS"]

logger = logging.getLogger(__name__)

PRECISIONS = ("iclr2024", "ledoit-wolf", "shrinkage")
PRIORS = ("uniform", "empirical")
_BLOCK_ROWS = 16384


@dataclass
class _Moments:
    """Sufficient statistics of a GDA fit.

    counts : (C,) int64; means : (C, d) float64; scatter : (d, d) float64, the
    (weighted) within-class scatter sum_i w_i r_i r_i^T of the residuals
    r_i = x_i - mu_{y_i}; sum_r4 : float, sum_i ||r_i||^4 (for Ledoit-Wolf).
    """

    counts: np.ndarray
    means: np.ndarray
    scatter: np.ndarray
    sum_r4: float


def _blocks(X: np.ndarray, codes: np.ndarray, size: int = _BLOCK_ROWS):
    """Yield ``(X[i:i+size], codes[i:i+size])`` blocks of in-memory data."""
    for start in range(0, len(X), size):
        yield X[start : start + size], codes[start : start + size]


def _class_sums(chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """First pass: per-code sums (K, d) float64 and counts (K,) int64 for codes >= 0; and d."""
    sums, counts, d = None, np.zeros(0, dtype=np.int64), 0
    for X, codes in chunks:
        d = X.shape[1]
        if sums is None:
            sums = np.zeros((0, d))
        if len(codes) == 0:
            continue
        if codes.min() < 0:
            raise InvalidFeaturesError("labels contain -1 (unlabelled rows); select labelled rows to fit GDA")
        k = int(codes.max()) + 1
        if k > len(counts):
            grown = np.zeros((k, X.shape[1]))
            grown[: len(sums)] = sums
            sums = grown
            counts = np.concatenate([counts, np.zeros(k - len(counts), dtype=np.int64)])
        for start in range(0, len(codes), _BLOCK_ROWS):
            block, c = X[start : start + _BLOCK_ROWS], codes[start : start + _BLOCK_ROWS]
            # A sparse one-hot (K, b) times the block: one pass, no sort or row gather.
            onehot = scipy.sparse.csr_matrix(
                (np.ones(len(c), dtype=np.float32), (c, np.arange(len(c)))), shape=(len(sums), len(c))
            )
            sums += onehot @ block
        counts += np.bincount(codes, minlength=len(counts))
    return (np.zeros((0, d)) if sums is None else sums), counts, d


def _within_scatter(chunks, means_by_code: np.ndarray, weight_by_code, device, fourth: bool) -> tuple[np.ndarray, float]:
    """Second pass: residual scatter (d, d) float64, weighted per code unless ``weight_by_code``
    is None, and (when ``fourth``) the sum of ||r||^4 that Ledoit-Wolf needs."""
    d = means_by_code.shape[1]
    means32 = means_by_code.astype(np.float32)
    uniform = weight_by_code is None
    root_w = None if uniform else np.sqrt(weight_by_code).astype(np.float32)
    scatter = np.zeros((d, d))
    sum_r4 = 0.0
    for X, codes in chunks:
        for start in range(0, len(X), _BLOCK_ROWS):
            c = codes[start : start + _BLOCK_ROWS]
            r = X[start : start + _BLOCK_ROWS] - means32[c]
            if fourth:
                sq = np.einsum("ij,ij->i", r, r, dtype=np.float64)
                sum_r4 += float(sq @ sq)
            if not uniform:
                r *= root_w[c][:, None]
            scatter += _backend.gram(r, device)
    return scatter, sum_r4


def _ledoit_wolf_shrinkage(scatter: np.ndarray, sum_r4: float, n: int) -> float:
    """Ledoit-Wolf intensity of the residual covariance ``scatter / n`` (as sklearn, assume_centered)."""
    d = scatter.shape[0]
    emp = scatter / n
    trace = np.trace(emp)
    mu = trace / d
    delta_ = float(np.sum(emp**2))
    beta = (sum_r4 / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _regularised_covariance(m: _Moments, precision: str, shrinkage: float) -> tuple[np.ndarray, float, float]:
    """The matrix A and scale c with P = c A^-1, and the shrinkage or ridge used."""
    n, d = int(m.counts.sum()), m.scatter.shape[0]
    if precision == "iclr2024":
        ridge = np.trace(m.scatter) / (n - 1)
        return m.scatter + ridge * np.eye(d), float(d), float(ridge)
    if precision == "ledoit-wolf":
        delta = _ledoit_wolf_shrinkage(m.scatter, m.sum_r4, n)
        emp = m.scatter / n
        return (1 - delta) * emp + delta * (np.trace(emp) / d) * np.eye(d), 1.0, delta
    cov = m.scatter  # weighted by prior_k / n_k: sum_k prior_k C_k
    return (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / d) * np.eye(d), 1.0, float(shrinkage)


def _solve(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``a^-1 rhs`` for symmetric PSD ``a`` (d, d): Cholesky, or least squares when singular."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True, check_finite=False), rhs)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(a, rhs)[0]


def _linear_rule(means: np.ndarray, a: np.ndarray, c: float, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients W (C, d) = c mu A^-1 and intercepts b (C,) = log pi - diag(mu W^T) / 2."""
    coef = c * _solve(a, means.T).T
    intercept = np.log(priors) - 0.5 * np.einsum("kd,kd->k", means, coef)
    return coef, intercept


class GDAClassifier(LogitClassifier):
    """Gaussian discriminant analysis: class means and one shared covariance.

    Parameters
    ----------
    precision : {"iclr2024", "ledoit-wolf", "shrinkage"}, default="iclr2024"
        How the shared precision matrix P is estimated from the within-class
        scatter S = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T of N samples in d dims:

        - ``"iclr2024"``: P = d * pinv(S + tr(S)/(N-1) * I), i.e. the ICLR 2024
          training-free baseline's D * pinv((N-1) Sigma + tr(Sigma) I).
        - ``"ledoit-wolf"``: Ledoit-Wolf shrinkage of S/N towards tr(S/N)/d * I.
        - ``"shrinkage"``: (1 - s) Sigma + s tr(Sigma)/d I with Sigma = sum_k pi_k C_k
          (C_k the biased class covariances), which is scikit-learn's
          ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s)`` exactly.
    shrinkage : float in [0, 1], default=0.1
        s for ``precision="shrinkage"``; ignored otherwise.
    priors : {"uniform", "empirical"}, default="uniform"
        Class priors pi in the intercept (and the class weights of Sigma for "shrinkage").
    device : str, optional
        None for numpy; a torch device (``"cuda"``) for the scatter products and predictions.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    means_ : ndarray of shape (C, d), float32
    coef_ : ndarray of shape (C, d), float32
    intercept_ : ndarray of shape (C,), float32
    priors_ : ndarray of shape (C,), float32
    shrinkage_ : float
        The ridge (iclr2024), Ledoit-Wolf intensity or fixed shrinkage used.
    fallback_ : str
        ``""``, or ``"identity"`` when the within-class scatter was zero (one
        sample per class) and P = I was used: nearest class mean in Euclidean distance.
    n_features_in_ : int

    Examples
    --------
    Three classes whose noise is strongly correlated across the two dimensions:

    >>> import numpy as np
    >>> from clipcache.classifiers import GDAClassifier
    >>> rng = np.random.default_rng(0)
    >>> mix = np.array([[1.0, 0.9], [0.0, 0.3]])
    >>> means = np.array([[0, 0], [1, -1], [2, -2]])
    >>> def draw(n):
    ...     y = np.repeat([0, 1, 2], n)
    ...     return (means[y] + rng.normal(size=(len(y), 2)) @ mix).astype(np.float32), y
    >>> (X, y), (Xt, yt) = draw(20), draw(100)
    >>> gda = GDAClassifier(precision="ledoit-wolf").fit(X, y)
    >>> gda.means_.round(2)
    array([[-0.27, -0.2 ],
           [ 1.4 , -0.58],
           [ 1.86, -2.08]], dtype=float32)
    >>> round(gda.shrinkage_, 4)
    0.0556
    >>> gda.predict(means.astype(np.float32))
    array([0, 1, 2])
    >>> round(gda.score(Xt, yt), 4)
    0.9967
    """

    _parameter_constraints = {
        "precision": [Options(*PRECISIONS)],
        "shrinkage": [Interval(Real, 0, 1, closed="both")],
        "priors": [Options(*PRIORS)],
        "device": [None, Device()],
    }

    def __init__(self, *, precision="iclr2024", shrinkage=0.1, priors="uniform", device=None):
        self.precision = precision
        self.shrinkage = shrinkage
        self.priors = priors
        self.device = device

    def _fit(self, X: np.ndarray, codes: np.ndarray) -> None:
        self._fit_moments(lambda: _blocks(X, codes), self.classes_)

    def fit_chunks(self, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]):
        """Fit from a stream of ``(X, y)`` blocks read twice, in O(d^2 + C d + block) memory.

        Parameters
        ----------
        chunks : callable
            Returns a fresh iterable of ``(X (b, d) float32, y (b,) int)`` blocks
            each time it is called; labels are non-negative class indices
            (store labels). It is called twice (class means, then scatter).

        Returns
        -------
        self
        """
        self._validate_params()

        def checked():
            for X, y in chunks():
                X = np.asarray(X, dtype=np.float32)
                if not np.isfinite(X).all():
                    raise InvalidFeaturesError(
                        "features contain NaN or inf; drop or re-extract those rows before fitting or predicting"
                    )
                yield X, np.asarray(y, dtype=np.int64)

        sums, counts, d = _class_sums(checked())
        present = np.flatnonzero(counts)
        if len(present) < 2:
            raise InvalidFeaturesError(
                f"the training labels hold {len(present)} class; at least 2 classes are needed to fit a classifier"
            )
        self.n_features_in_ = d
        self._fit_moments(checked, present, sums=sums, counts=counts)
        return self

    def fit_store(self, store: FeatureStore, split: str, feature_set: str, rows=None,
                  chunk_rows: int | None = None):
        """Stream-fit on ``feature_set`` of ``split`` of an open :class:`FeatureStore`.

        Parameters
        ----------
        store : FeatureStore
        split : str
            The split to read.
        feature_set : str
            The feature set (one backbone's embeddings) to fit on.
        rows : None, slice or array-like of int
            The rows to fit on (e.g. a few-shot support set).
        chunk_rows : int, optional
            Rows per block read.

        Returns
        -------
        self
        """
        return self.fit_chunks(
            lambda: ((c.features, c.labels) for c in store.iter_chunks(split, feature_set, chunk_rows, rows))
        )

    def _fit_moments(self, chunks, classes, sums=None, counts=None) -> None:
        """Compute means, scatter and the linear rule; ``chunks()`` yields (X, code) blocks."""
        if sums is None:
            sums, counts, _ = _class_sums(chunks())
            keep = np.arange(len(classes))
        else:
            keep = classes  # codes are the labels themselves
        counts_k = counts[keep]
        n_classes, n = len(keep), int(counts_k.sum())
        means_by_code = sums / np.maximum(counts, 1)[:, None]
        priors = np.full(n_classes, 1.0 / n_classes) if self.priors == "uniform" else counts_k / n
        weights, scale = None, 1.0
        if self.precision == "shrinkage":
            per_class = priors / counts_k  # sum_k prior_k C_k with C_k = scatter_k / n_k
            if np.allclose(per_class, per_class[0], rtol=1e-12):
                scale = float(per_class[0])
            else:
                weights = np.zeros(len(counts))
                weights[keep] = per_class
        scatter, sum_r4 = _within_scatter(
            chunks(), means_by_code, weights, self.device, fourth=self.precision == "ledoit-wolf"
        )
        scatter *= scale
        moments = _Moments(counts_k, means_by_code[keep], scatter, sum_r4)
        if n <= n_classes or np.trace(scatter) <= 0:
            logger.warning(
                "GDA: no within-class variation (one sample per class); using an identity covariance "
                "(nearest class mean in Euclidean distance)"
            )
            a, c, self.shrinkage_, self.fallback_ = np.eye(scatter.shape[0]), 1.0, 0.0, "identity"
        else:
            a, c, self.shrinkage_ = _regularised_covariance(moments, self.precision, float(self.shrinkage))
            self.fallback_ = ""
        coef, intercept = _linear_rule(moments.means, a, c, priors)
        self.classes_ = np.asarray(classes)
        self.means_ = moments.means.astype(np.float32)
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)
        self.priors_ = np.asarray(priors, dtype=np.float32)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._matmul(X, self.coef_.T) + self.intercept_

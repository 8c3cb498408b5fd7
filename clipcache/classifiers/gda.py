"""Gaussian discriminant analysis with a shared covariance (linear discriminant).

``logits_k(x) = x . W_k + b_k`` with ``W = mu P`` and
``b_k = log pi_k - mu_k P mu_k / 2``, where P is a precision matrix estimated by
one of three estimators (see :class:`GDAClassifier`). The fit needs only class
sums and a (d, d) scatter matrix, so it can stream a store chunk by chunk in
O(d^2 + C d + chunk) memory (:meth:`GDAClassifier.fit_chunks`); with fewer
samples than dimensions it solves in the N x N space instead (Woodbury). The
maths is in :mod:`clipcache.classifiers._gda_math`.
"""

from __future__ import annotations

import logging
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

from clipcache.classifiers import _gda_math as gm
from clipcache.classifiers._centering import CENTER_CONSTRAINT, apply_center, check_center_vector
from clipcache.classifiers._params import Device, Interval, Options
from clipcache.classifiers.base import (
    NONFINITE_FEATURES,
    InvalidFeaturesError,
    InvalidParameterError,
    LogitClassifier,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from clipcache.feature_store import FeatureStore

__all__ = ["GDAClassifier", "PRECISIONS", "PRIORS", "SOLVERS"]

logger = logging.getLogger(__name__)

PRECISIONS = ("iclr2024", "ledoit-wolf", "shrinkage")
PRIORS = ("uniform", "empirical")
SOLVERS = ("auto", "covariance", "woodbury")
NO_VARIATION = (
    "GDA: no within-class variation (one sample per class); using an identity covariance "
    "(nearest class mean in Euclidean distance)"
)


def _blocks(X: np.ndarray, codes: np.ndarray, size: int = gm.BLOCK_ROWS):
    """Yield ``(X[i:i+size], codes[i:i+size])`` blocks of in-memory data."""
    for start in range(0, len(X), size):
        yield X[start : start + size], codes[start : start + size]


def _class_sums(ops, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """First pass: per-code sums (K, d) float64 and counts (K,) int64 for codes >= 0; and d."""
    sums, counts, d = None, np.zeros(0, dtype=np.int64), 0
    for X, codes in chunks:
        d = X.shape[1]
        if sums is None:
            sums = ops.zeros((0, d))
        if len(codes) == 0:
            continue
        if codes.min() < 0:
            raise InvalidFeaturesError("labels contain -1 (unlabelled rows); select labelled rows to fit GDA")
        k = int(codes.max()) + 1
        if k > len(counts):
            grown = ops.zeros((k, d))
            grown[: len(sums)] = sums
            sums = grown
            counts = np.concatenate([counts, np.zeros(k - len(counts), dtype=np.int64)])
        for start in range(0, len(codes), gm.BLOCK_ROWS):
            ops.add_class_sums(sums, X[start : start + gm.BLOCK_ROWS], codes[start : start + gm.BLOCK_ROWS])
        counts += np.bincount(codes, minlength=len(counts))
    return (np.zeros((0, d)) if sums is None else ops.to_numpy(sums)), counts, d


def _within_scatter(ops, chunks, means_by_code: np.ndarray, weight_by_code, fourth: bool):
    """Second pass: residual scatter (d, d) on the ops' device, weighted per code unless
    ``weight_by_code`` is None, and (when ``fourth``) the sum of ||r||^4 that Ledoit-Wolf needs."""
    d = means_by_code.shape[1]
    means32 = means_by_code.astype(np.float32)
    root_w = None if weight_by_code is None else np.sqrt(weight_by_code).astype(np.float32)
    scatter = ops.zeros((d, d))
    sum_r4 = 0.0
    for X, codes in chunks:
        for start in range(0, len(X), gm.BLOCK_ROWS):
            sl = slice(start, start + gm.BLOCK_ROWS)
            sum_r4 += ops.add_scatter(scatter, X[sl], codes[sl], means32, root_w, fourth)
    return scatter, float(ops.to_numpy(sum_r4))


def _scatter_weights(precision: str, priors: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """Per-class residual weights: prior_k / n_k for "shrinkage" (sum_k prior_k C_k), None otherwise."""
    return priors / counts if precision == "shrinkage" else None


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
    solver : {"auto", "covariance", "woodbury"}, default="auto"
        ``"covariance"`` solves the (d, d) system by Cholesky; ``"woodbury"`` solves
        in the N x N space of the N support samples (same coefficients, O(N^2 d)
        instead of O(d^3); in-memory fits only); ``"auto"`` is Woodbury when N < d
        and ``device`` is None. A singular system (zero ridge) always takes the
        (d, d) path, with least squares.
    device : str, optional
        None for numpy; a torch device (``"cuda"``): the class sums, the scatter,
        the Cholesky solve and the predictions then run on it, and ``fit_store``
        streams its chunks there through pinned memory.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    means_ : ndarray of shape (C, d), float32
    coef_ : ndarray of shape (C, d), float32
    intercept_ : ndarray of shape (C,), float32
    priors_ : ndarray of shape (C,), float32
    shrinkage_ : float
        The ridge (iclr2024), Ledoit-Wolf intensity or fixed shrinkage used.
    solver_ : str
        ``"covariance"`` or ``"woodbury"``: the path that solved.
    fallback_ : str
        ``""``, or ``"identity"`` when the within-class scatter was zero (one
        sample per class) and P = I was used: nearest class mean in Euclidean distance.
    center_, temperature_ : the CL2N mean and the softmax temperature (:class:`LogitClassifier`)
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
        "solver": [Options(*SOLVERS)],
        "device": [None, Device()],
        "center": CENTER_CONSTRAINT,
    }

    def __init__(self, *, precision="iclr2024", shrinkage=0.1, priors="uniform", solver="auto", device=None,
                 center=None):
        self.precision = precision
        self.shrinkage = shrinkage
        self.priors = priors
        self.solver = solver
        self.device = device
        self.center = center

    def _fit(self, X: np.ndarray, codes: np.ndarray) -> None:
        n, d = X.shape
        woodbury = self.solver == "woodbury" or (self.solver == "auto" and n < d and self.device is None)
        if woodbury and self._fit_woodbury(X, codes):
            return
        self._fit_moments(gm.make_ops(self.device), lambda: _blocks(X, codes), self.classes_)

    def fit_chunks(self, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]):
        """Fit from a stream of ``(X, y)`` blocks read twice, in O(d^2 + C d + block) memory.

        Parameters
        ----------
        chunks : callable
            Returns a fresh iterable of ``(X (b, d) float32, y (b,) int)`` blocks
            each time it is called; labels are non-negative class indices
            (store labels). It is called twice (class means, then scatter), and
            once more first when ``center="support"`` (the mean).

        Returns
        -------
        self
        """
        self._validate_params()
        if self.solver == "woodbury":
            raise InvalidParameterError(
                "GDAClassifier got solver='woodbury' for a streamed fit, which solves the (d, d) system; "
                "use solver='auto' or 'covariance', or fit in memory",
                param="solver",
            )

        ops = gm.make_ops(self.device)

        def raw(host_check: bool = True):
            for X, y in chunks():
                X = np.asarray(X, dtype=np.float32)
                if host_check and not np.isfinite(X).all():
                    raise InvalidFeaturesError(NONFINITE_FEATURES)
                yield X, np.asarray(y, dtype=np.int64)

        self.center_ = self._stream_center(raw)

        def checked():  # torch checks the blocks where it computes (TorchOps.all_finite), numpy here
            for X, y in raw(host_check=ops.device is None):
                if self.center_ is not None:
                    self.center_ = check_center_vector(type(self).__name__, self.center_, X.shape[1])
                yield apply_center(X, self.center_, self._center_blocks(X.shape[1])), y

        passes = ops.resident(checked)  # on a GPU, the second pass replays the first pass's blocks there
        sums, counts, d = _class_sums(ops, passes())
        if not ops.all_finite():
            raise InvalidFeaturesError(NONFINITE_FEATURES)
        present = np.flatnonzero(counts)
        if len(present) < 2:
            raise InvalidFeaturesError(
                f"the training labels hold {len(present)} class; at least 2 classes are needed to fit a classifier"
            )
        self.n_features_in_ = d
        self._fit_moments(ops, passes, present, sums=sums, counts=counts)
        self.temperature_ = 1.0
        return self

    def _stream_center(self, raw) -> np.ndarray | None:
        """The mean that ``center`` asks for in a streamed fit (one pass over ``raw()`` for "support")."""
        if self.center is None:
            return None
        if not isinstance(self.center, str):
            return np.asarray(self.center, dtype=np.float32)
        total, n = None, 0
        for X, _ in raw():
            part = X.sum(axis=0, dtype=np.float64)
            total, n = (part if total is None else total + part), n + len(X)
        return None if total is None else (total / max(n, 1)).astype(np.float32)

    def fit_store(self, store: FeatureStore, split: str, feature_set: str, rows=None,
                  chunk_rows: int | None = None):
        """Stream-fit on ``feature_set`` of ``split`` of an open :class:`FeatureStore`.

        With a CUDA ``device`` each chunk is read from the file straight into
        pinned memory (where the store allows: all rows of a float32 feature
        set) and copied from there to the GPU, where the sums, the scatter and
        the solve stay. The chunks stay there
        too while they fit in half the GPU's free memory, so the second pass (the
        scatter) reads nothing from the store; otherwise every pass reads it.

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
        allocate = gm.host_allocator(self.device)  # on a GPU, blocks are read straight into pinned memory
        return self.fit_chunks(
            lambda: ((c.features, c.labels) for c in store.iter_chunks(split, feature_set, chunk_rows, rows, allocate))
        )

    def _priors(self, counts: np.ndarray) -> np.ndarray:
        """Class priors (C,) float64 from the class counts."""
        if self.priors == "uniform":
            return np.full(len(counts), 1.0 / len(counts))
        return counts / counts.sum()

    def _fit_woodbury(self, X: np.ndarray, codes: np.ndarray) -> bool:
        """Fit in the N x N space; False (nothing set) when the ridge is zero and the (d, d) path must solve."""
        sums, counts, _ = _class_sums(gm.NumpyOps(), _blocks(X, codes))
        means = sums / counts[:, None]
        priors = self._priors(counts)
        R = X - means.astype(np.float32)[codes]  # float32: the products below are the fit's cost
        weights = _scatter_weights(self.precision, priors, counts)
        if weights is not None:
            R *= np.sqrt(weights).astype(np.float32)[codes][:, None]
        stats, K = gm.woodbury_stats(R)
        if len(X) <= len(counts) or stats.trace <= 0:
            self._set_identity(means, priors)
            return True
        form = gm.covariance_form(stats, self.precision, float(self.shrinkage))
        if form.t <= 0:
            return False
        self._set_rule(means, gm.solve_woodbury(R, K, form, means), priors, form.used, "woodbury")
        return True

    def _fit_moments(self, ops, chunks, classes, sums=None, counts=None) -> None:
        """Compute means, scatter and the linear rule on ``ops``; ``chunks()`` yields (X, code) blocks."""
        if sums is None:
            sums, counts, _ = _class_sums(ops, chunks())
            keep = np.arange(len(classes))
        else:
            keep = classes  # codes are the labels themselves
        counts_k = counts[keep]
        means_by_code = sums / np.maximum(counts, 1)[:, None]
        priors = self._priors(counts_k)
        per_class = _scatter_weights(self.precision, priors, counts_k)
        weights = None
        if per_class is not None:
            weights = np.zeros(len(counts))
            weights[keep] = per_class
        fourth = self.precision == "ledoit-wolf"
        scatter, sum_r4 = _within_scatter(ops, chunks(), means_by_code, weights, fourth)
        self.classes_ = np.asarray(classes)
        means = means_by_code[keep]
        n, d = int(counts_k.sum()), means.shape[1]
        trace, frob2 = ops.trace_frob2(scatter, fourth)
        if n <= len(keep) or trace <= 0:
            self._set_identity(means, priors)
            return
        stats = gm.ScatterStats(n, d, trace, frob2, sum_r4)
        form = gm.covariance_form(stats, self.precision, float(self.shrinkage))
        self._set_rule(means, gm.solve_covariance(ops, scatter, form, means), priors, form.used, "covariance")

    def _set_identity(self, means: np.ndarray, priors: np.ndarray) -> None:
        """The documented one-shot fallback: P = I, nearest class mean in Euclidean distance."""
        logger.info(NO_VARIATION)  # expected at one shot; fallback_ records it
        self._set_rule(means, means.copy(), priors, 0.0, "covariance", fallback="identity")

    def _set_rule(self, means, coef, priors, used: float, solver: str, fallback: str = "") -> None:
        """Store W (C, d), b = log pi - diag(mu W^T)/2, and what was used."""
        intercept = np.log(priors) - 0.5 * np.einsum("kd,kd->k", means, coef)
        self.means_ = np.asarray(means, dtype=np.float32)
        self.coef_ = np.asarray(coef, dtype=np.float32)
        self.intercept_ = intercept.astype(np.float32)
        self.priors_ = np.asarray(priors, dtype=np.float32)
        self.shrinkage_ = float(used)
        self.solver_ = solver
        self.fallback_ = fallback

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._matmul(X, self.coef_.T) + self.intercept_

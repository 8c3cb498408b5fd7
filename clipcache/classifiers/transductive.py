"""Transductive GDA: EM over class Gaussians with a shared covariance, the support labels clamped.

The model is the GDA of :class:`~clipcache.classifiers.GDAClassifier` with the
ICLR 2024 precision, fitted by EM on the labelled support set together with
unlabelled rows (the features to be predicted). It follows the ICLR 2024
training-free baseline's EM for unlabelled data (Wang et al., "A Hard-to-Beat
Baseline for Training-free CLIP-based Adaptation": class means and one shared
covariance re-estimated from soft assignments) and, with text embeddings, the
z-update of TransCLIP (Zanella et al., NeurIPS 2024; ``update_z`` in
``TransCLIP_solver/TransCLIP_utils.py`` of github.com/MaxZanella/transduction-for-vlms)
without its Laplacian term::

    z_ik  ∝  yhat_ik ** lam  *  exp(l_ik / tau)                  (E-step)

    N_k = sum_i w_i z_ik,   mu_k = sum_i w_i z_ik x_i / N_k          (M-step)
    S   = sum_i w_i sum_k z_ik (x_i - mu_k)(x_i - mu_k)^T
        = G - sum_k N_k mu_k mu_k^T,   G = sum_i w_i x_i x_i^T
    P   = d (S + tr(S)/(N_eff - 1) I)^-1,   N_eff = sum_i w_i

where l = x P mu^T - mu P mu^T / 2 + log(1/C) are the GDA logits, yhat the
zero-shot probabilities (softmax of ``logit_scale`` times the cosine to the
prompt-ensemble class weights), z is one-hot and fixed on labelled rows (w_i = 1),
and unlabelled rows weigh w_i = strength * n_labelled / n_unlabelled each (so
``strength`` is the unlabelled rows' total weight relative to the labelled ones';
0 is inductive GDA). G is fixed, so each iteration costs one (d, d) Cholesky
solve. tau is the temperature that calibrates the inductive start's validation
logits (temperature scaling); without validation data it is the Gaussian
model's own (``_EM.model_temperature``).

The guard (:func:`likelihood_guard`): with validation data the validation rows
join the unlabelled rows, EM runs for every strength of the grid (0 included)
from the same inductive start, and a strength above 0 is kept only when its
posterior lowers the validation rows' negative log-likelihood (NLL) below the
inductive start's by more than ``tolerance`` paired standard errors of the
per-row NLL differences, and its validation accuracy is at least the start's;
among such strengths, the one with the largest NLL gain. The result is never
below the inductive start on validation. The NLL is a proper score of every
row's whole posterior, so it tells a real gain from luck on 40 rows better than
the count of correct rows (docs/classifiers.md gives the development-split
figures that chose it over the earlier accuracy-only guard).

By default (``covariance="support"``) the support set's precision is kept and
only the means move: re-estimating the covariance from soft assignments
inflated it with the confusion between classes and lost accuracy on a
development split of the training pool (CIFAR-10 and Fashion-MNIST,
EfficientNet-lite0 features); ``covariance="em"`` re-estimates it.
"""

from __future__ import annotations

import hashlib
import logging
from numbers import Integral, Real

import numpy as np
import scipy.linalg
import scipy.special

from clipcache.calibration import fit_temperature
from clipcache.classifiers import _backend
from clipcache.classifiers import _gda_math as gm
from clipcache.classifiers._params import Grid, HasMethods, Interval, Options
from clipcache.classifiers._validation import encode_validation
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier
from clipcache.classifiers.gda import NO_VARIATION
from clipcache.ops import l2_normalize, prompt_ensemble

__all__ = ["COVARIANCES", "DEFAULT_STRENGTHS", "GramCache", "TransductiveGDA", "UNLABELLED", "likelihood_guard"]

logger = logging.getLogger(__name__)

#: The label that marks an unlabelled row (scikit-learn's semi-supervised convention).
UNLABELLED = -1
#: Strengths searched on validation: the unlabelled rows' total weight relative to the labelled rows'.
DEFAULT_STRENGTHS = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
COVARIANCES = ("support", "em")


def likelihood_guard(posteriors, y: np.ndarray, tolerance: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The guard of :class:`TransductiveGDA`: which EM result may replace the inductive start.

    Parameters
    ----------
    posteriors : sequence of K ndarrays of shape (m, C), float
        Each candidate's class probabilities of the m validation rows; the first
        is the inductive start.
    y : ndarray of shape (m,), int
        Column of each validation row's class.
    tolerance : float >= 0
        Paired standard errors by which a candidate's NLL gain must exceed zero.

    Returns
    -------
    chosen : int
        0 (the start), or the candidate k >= 1 with the largest mean NLL gain
        ``g_k = mean_i(nll_0,i - nll_k,i)`` among those with
        ``g_k > tolerance * sd_i(nll_0,i - nll_k,i) / sqrt(m)`` and an accuracy at
        least the start's.
    nll : ndarray of shape (K,), float64
        Mean validation NLL of each candidate.
    accuracy : ndarray of shape (K,), float64
    """
    rows = np.arange(len(y))
    losses = np.array([-np.log(np.maximum(np.asarray(p, dtype=np.float64)[rows, y], 1e-300)) for p in posteriors])
    accuracy = np.array([np.mean(np.asarray(p).argmax(axis=1) == y) for p in posteriors])
    chosen, best_gain = 0, 0.0
    for k in range(1, len(losses)):
        diff = losses[0] - losses[k]
        gain = float(diff.mean())
        se = float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        if gain > 0 and gain > tolerance * se and accuracy[k] >= accuracy[0] and gain > best_gain:
            chosen, best_gain = k, gain
    return chosen, losses.mean(axis=1), accuracy


class GramCache:
    """Keeps the Gram matrix (and eigendecomposition) of the last block of unlabelled rows, by content.

    A transductive evaluation fits one :class:`TransductiveGDA` per support set
    on the same test features; passing one ``GramCache`` to all of them
    computes X_u^T X_u (u d^2) and its eigendecomposition (d^3) once. It is not
    saved with a model (a loaded model has ``cache=None``).
    """

    transient = True  # clipcache.classifiers.io saves it as None

    def __init__(self):
        self._key = None
        self._value = None

    def get(self, Xu: np.ndarray, compute):
        """``compute(Xu)``, or the value kept for rows with the same bytes."""
        key = (Xu.shape, Xu.dtype.str, hashlib.sha1(np.ascontiguousarray(Xu).tobytes()).hexdigest())
        if key != self._key:
            self._key, self._value = key, compute(Xu)
        return self._value


def _gram_and_eigh(Xu: np.ndarray):
    """X_u^T X_u (d, d) float64 and its eigendecomposition (g (d,), V (d, d))."""
    G = _backend.gram(Xu, None)
    g, V = scipy.linalg.eigh(G)
    return G, np.maximum(g, 0.0), V


def _solve_spd(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``a^-1 rhs`` for symmetric positive definite ``a`` (Cholesky; least squares if it fails)."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True, check_finite=False), rhs)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(a, rhs)[0]


class _SupportPrecision:
    """The labelled rows' ICLR 2024 precision P = d (S + tr(S)/(n-1) I)^-1, applied to any means.

    Factored once: by Woodbury in the n x n space when n < d (as
    :class:`~clipcache.classifiers.GDAClassifier` does), by Cholesky otherwise;
    the identity when the labelled rows have no within-class variation (one shot).
    """

    def __init__(self, Xl: np.ndarray, codes: np.ndarray, means: np.ndarray):
        n, d = Xl.shape
        R = Xl.astype(np.float64) - means[codes]
        self.identity = n <= len(means)
        self.woodbury = n < d
        if self.woodbury:
            stats, self.K = gm.woodbury_stats(R)
            self.R = R
        else:
            scatter = R.T @ R
            stats = gm.ScatterStats(n, d, float(np.trace(scatter)), 0.0, 0.0)
        self.identity = self.identity or stats.trace <= 1e-9 * max(float(np.sum(Xl.astype(np.float64) ** 2)), 1e-300)
        if self.identity:
            return
        self.form = gm.covariance_form(stats, "iclr2024", 0.0)
        if not self.woodbury:
            self.factor = scipy.linalg.cho_factor(scatter + self.form.t * np.eye(d), lower=True, check_finite=False)

    def coef(self, means: np.ndarray) -> np.ndarray:
        """W = mu P, (C, d) float64 (W = mu for the identity)."""
        if self.identity:
            return means.copy()
        if self.woodbury:
            return gm.solve_woodbury(self.R, self.K, self.form, means)
        return self.form.c * scipy.linalg.cho_solve(self.factor, means.T).T


class _EM:
    """The EM of one fit; one run per strength, each from the same inductive start.

    ``Xu`` (u, d) holds every unlabelled row (validation rows last); ``log_prior``
    (u, C) is lam * log(yhat), or None without text; ``tau`` the E-step temperature.

    With ``covariance="support"`` each M-step moves the means under the labelled
    rows' precision (:class:`_SupportPrecision`, O(n_l d C) per step). With
    ``"em"`` it solves (S + r I) W^T = mu^T with S = G_l + w G_u - mu^T N mu. With
    G_u = V diag(g) V^T decomposed once, S + r I = V diag(w g + r) V^T + L L^T - U U^T
    (L = X_l^T, U = mu^T N^1/2), a diagonal plus a rank n_l + C term, which the
    Woodbury identity solves in O((n_l + C) d^2 / d + (n_l + C)^2 d) per step; with
    more labelled rows than ``d / 4`` each step solves the (d, d) system by Cholesky.
    """

    def __init__(self, Xl: np.ndarray, codes: np.ndarray, Xu: np.ndarray, n_classes: int, log_prior,
                 max_iter: int, tol: float, covariance: str = "support", cache=None):
        self.Xl, self.Xu = Xl, Xu
        self.n_classes, self.d = n_classes, Xl.shape[1]
        onehot = np.eye(n_classes)[codes]
        self.sums_l = onehot.T @ Xl.astype(np.float64)
        self.counts_l = onehot.sum(axis=0)
        self.means0 = self.sums_l / self.counts_l[:, None]
        self.support = _SupportPrecision(Xl, codes, self.means0)
        self.log_prior, self.max_iter, self.tol, self.covariance = log_prior, max_iter, tol, covariance
        self.tau = 1.0
        if covariance == "em":
            self.G_l = _backend.gram(Xl, None)
            self.low_rank = len(Xl) + n_classes <= self.d // 4 and len(Xu) > 0
            if len(Xu) == 0:
                self.G_u, self.g, self.V = np.zeros((self.d, self.d)), None, None
            else:
                self.G_u, self.g, self.V = _gram_and_eigh(Xu) if cache is None else cache.get(Xu, _gram_and_eigh)
            if self.low_rank:
                self.Lt = self.V.T @ Xl.T.astype(np.float64)  # (d, n_l)

    def solve(self, means: np.ndarray, counts: np.ndarray, w: float, ridge: float) -> np.ndarray:
        """(S + r I)^-1 mu^T, (d, C) float64, for S = G_l + w G_u - mu^T N mu (``covariance="em"``)."""
        if not self.low_rank:
            scatter = self.G_l + w * self.G_u - (means.T * counts) @ means
            return _solve_spd(scatter + ridge * np.eye(self.d), means.T)
        mt = self.V.T @ means.T  # (d, C): mu^T in the eigenbasis of G_u
        wt = np.hstack([self.Lt, mt * np.sqrt(counts)])  # (d, n_l + C)
        sign = np.concatenate([np.ones(self.Lt.shape[1]), -np.ones(len(counts))])
        dinv = 1.0 / (w * self.g + ridge)
        inner = np.diag(sign) + wt.T @ (dinv[:, None] * wt)
        y0 = dinv[:, None] * mt
        y = y0 - dinv[:, None] * (wt @ scipy.linalg.solve(inner, wt.T @ y0, assume_a="sym"))
        return self.V @ y

    def rule(self, means: np.ndarray, counts: np.ndarray, w: float, n_eff: float):
        """(coef (C, d), intercept (C,), fallback) of GDA with these means (ICLR 2024 precision)."""
        if self.covariance == "support" or w == 0:
            coef, fallback = self.support.coef(means), ("identity" if self.support.identity else "")
        else:
            total = float(np.trace(self.G_l) + w * np.trace(self.G_u))
            trace = total - float(np.sum(counts * np.sum(means * means, axis=1)))
            if n_eff <= self.n_classes or trace <= 1e-9 * max(total, 1e-300):
                coef, fallback = means.copy(), "identity"
            else:
                coef, fallback = self.d * self.solve(means, counts, w, trace / (n_eff - 1)).T, ""
        intercept = np.log(1.0 / self.n_classes) - 0.5 * np.einsum("kd,kd->k", means, coef)
        return coef, intercept, fallback

    @staticmethod
    def gda_logits(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """l = x W^T + b, (n, C) float64."""
        return (X @ coef.T.astype(np.float32)).astype(np.float64) + intercept

    def start(self):
        """Means and rule of the inductive start (labelled rows only): the GDA of the support set."""
        return self.means0, self.rule(self.means0, self.counts_l, 0.0, float(len(self.Xl)))

    def validation_temperature(self, Xv: np.ndarray, yv: np.ndarray) -> float:
        """tau by temperature scaling of the inductive start's logits on validation (Guo et al. 2017)."""
        _, (coef, intercept, _) = self.start()
        return fit_temperature(self.gda_logits(Xv, coef, intercept), yv)

    def model_temperature(self) -> float:
        """tau of the Gaussian model itself, for fits without validation data.

        The ICLR 2024 precision is d/n times the inverse of the ridge covariance
        (S + r I)/n, so tau = d/n; the one-shot identity covariance uses
        sigma^2 = the mean squared distance of the unlabelled rows to their nearest mean, per dimension.
        """
        means, (coef, intercept, fallback) = self.start()
        if not fallback:
            return self.d / len(self.Xl)
        if len(self.Xu) == 0:
            return 1.0
        nearest = self.gda_logits(self.Xu, coef, intercept).argmax(axis=1)
        sq = np.sum((self.Xu.astype(np.float64) - means[nearest]) ** 2, axis=1)
        return max(float(sq.mean()) / self.d, 1e-12)

    def run(self, strength: float):
        """EM at one strength from the inductive start: (means, rule, z (u, C), E-steps, converged).

        The E-steps count the inductive start's, so there is at least one.
        """
        means, rule = self.start()
        z = self.posterior(rule)
        if strength == 0 or len(self.Xu) == 0:
            return means, rule, z, 1, True
        w = strength * len(self.Xl) / len(self.Xu)
        n_eff = len(self.Xl) + w * len(self.Xu)
        for iteration in range(1, self.max_iter + 1):
            counts = self.counts_l + w * z.sum(axis=0)
            means = (self.sums_l + w * (np.ascontiguousarray(z.T, dtype=np.float32) @ self.Xu)) / counts[:, None]
            rule = self.rule(means, counts, w, n_eff)
            z_new = self.posterior(rule)
            change = float(np.abs(z_new - z).max())
            z = z_new
            if change < self.tol:
                return means, rule, z, iteration + 1, True
        return means, rule, z, self.max_iter + 1, False

    def posterior(self, rule) -> np.ndarray:
        """E-step: softmax(l / tau + lam log yhat) of every unlabelled row, (u, C) float64."""
        coef, intercept, _ = rule
        out = np.empty((len(self.Xu), self.n_classes))
        for start in range(0, len(self.Xu), gm.BLOCK_ROWS):
            sl = slice(start, start + gm.BLOCK_ROWS)
            z = self.gda_logits(self.Xu[sl], coef, intercept) / self.tau
            if self.log_prior is not None:
                z += self.log_prior[sl]
            out[sl] = scipy.special.softmax(z, axis=1)
        return out


class TransductiveGDA(LogitClassifier):
    """GDA fitted by EM on labelled and unlabelled rows (rows labelled -1), never below its start on validation.

    Parameters
    ----------
    strength : float >= 0, default=1.0
        Total weight of the unlabelled rows relative to the labelled rows, used
        when ``fit`` gets no validation data; 0 is inductive GDA.
    strength_grid : array-like of float >= 0, optional
        Strengths searched on validation (default :data:`DEFAULT_STRENGTHS`); 0 is always added.
    covariance : {"support", "em"}, default="support"
        "support" keeps the labelled rows' (ICLR 2024) precision, the identity with
        one shot, and moves only the means; "em" re-estimates the shared covariance
        in every M-step.
    tolerance : float >= 0, default=1.0
        The guard: a strength > 0 replaces the inductive start only when it lowers
        the validation NLL by more than ``tolerance`` paired standard errors and
        keeps the validation accuracy at least the start's (:func:`likelihood_guard`).
    text_embeddings : ndarray of shape (M, d), optional
        Prompt embeddings; adds TransCLIP's zero-shot prior term yhat ** prior_weight.
    class_index : ndarray of shape (M,), optional
        Class of each prompt (None: one row per class).
    prior_weight : float >= 0, default=0.5
        lambda of the prior term (TransCLIP's few-shot value).
    logit_scale : float > 0, default=100.0
        Scale of the zero-shot logits whose softmax is yhat.
    max_iter : int >= 1, default=30
    tol : float > 0, default=1e-3
        EM stops when no responsibility changes by more than ``tol``.
    cache : GramCache, optional
        Shares the unlabelled rows' Gram matrix between fits on the same rows.
    center : None, "support", "transductive" or array-like of shape (d,), default=None
        CL2N centring; ``"transductive"`` takes the mean of every row given to ``fit``,
        the unlabelled ones included; ``"support"`` of the labelled rows only.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
        The labels of the labelled rows (-1 excluded).
    transduction_ : ndarray of shape (n,)
        The label of every row of X: its own for labelled rows, the EM's for the others.
    label_distributions_ : ndarray of shape (n, C), float32
        Responsibilities of every row (one-hot on labelled rows).
    coef_, intercept_ : ndarray of shape (C, d) and (C,), float32
        The final GDA rule; logits add the prior term when there is text.
    means_ : ndarray of shape (C, d), float32
    strength_ : float
        The strength used.
    search_accuracy_ : ndarray of shape (len(grid),), float64
        Validation accuracy at each strength of the grid (empty when no search ran).
    search_nll_ : ndarray of shape (len(grid),), float64
        Validation NLL of the EM posterior at each strength of the grid (empty when no search ran).
    strength_grid_ : ndarray of shape (len(grid),), float64
    posterior_temperature_ : float
        tau of the E-step.
    n_iter_ : int
        E-steps run at the chosen strength, the inductive start's included (1 at strength 0).
    converged_ : bool
        Whether no responsibility moved by more than ``tol`` in the last step.
    fallback_ : str
        ``"identity"`` when the final rule had no within-class variation.
    center_ : ndarray of shape (d,), float32, or None
    temperature_ : float
        Softmax temperature of ``predict_proba`` (fitted on validation when ``fit`` gets it).
    n_features_in_ : int

    Examples
    --------
    Two classes with one labelled row each; EM on 200 unlabelled rows moves the
    means to where the data is:

    >>> import numpy as np
    >>> from clipcache.classifiers import TransductiveGDA
    >>> rng = np.random.default_rng(1)
    >>> centres = np.array([[0.0, 0.0], [3.0, 1.0]])
    >>> def draw(n):
    ...     y = np.repeat([0, 1], n)
    ...     return (centres[y] + rng.normal(size=(len(y), 2))).astype(np.float32), y
    >>> (Xl, yl), (Xu, yu) = draw(1), draw(100)
    >>> X, y = np.vstack([Xl, Xu]), np.concatenate([yl, np.full(len(Xu), -1)])
    >>> start = TransductiveGDA(strength=0.0).fit(X, y)
    >>> tgda = TransductiveGDA(strength=1.0).fit(X, y)
    >>> tgda.transduction_[:2]
    array([0, 1])
    >>> float(np.mean(start.transduction_[2:] == yu)), float(np.mean(tgda.transduction_[2:] == yu))
    (0.845, 0.91)
    >>> tgda.converged_, tgda.n_iter_
    (True, 7)
    """

    _parameter_constraints = {
        "strength": [Interval(Real, 0, None, closed="left")],
        "strength_grid": [None, Grid()],
        "covariance": [Options(*COVARIANCES)],
        "tolerance": [Interval(Real, 0, None, closed="left")],
        "text_embeddings": [None, "array-like"],
        "class_index": [None, "array-like"],
        "prior_weight": [Interval(Real, 0, None, closed="left")],
        "logit_scale": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "center": [None, Options("support", "transductive"), "array-like"],
        "cache": [None, HasMethods("get")],
    }

    def __init__(self, *, strength=1.0, strength_grid=None, covariance="support", tolerance=1.0, text_embeddings=None,
                 class_index=None, prior_weight=0.5, logit_scale=100.0, max_iter=30, tol=1e-3, center=None,
                 cache=None):
        self.strength = strength
        self.strength_grid = strength_grid
        self.covariance = covariance
        self.tolerance = tolerance
        self.text_embeddings = text_embeddings
        self.class_index = class_index
        self.prior_weight = prior_weight
        self.logit_scale = logit_scale
        self.max_iter = max_iter
        self.tol = tol
        self.center = center
        self.cache = cache

    def fit(self, X, y, X_val=None, y_val=None):
        """EM on the labelled (y != -1) and unlabelled (y == -1) rows of X.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Labelled and unlabelled features (the rows to predict), float32.
        y : array-like of shape (n,)
            Labels; -1 marks an unlabelled row (numeric labels only).
        X_val : array-like of shape (m, d), optional
            Validation features; they join the unlabelled rows, and their labels
            choose the strength and the temperatures.
        y_val : array-like of shape (m,), optional
            Validation labels, among the labelled classes. Pass both or neither.

        Returns
        -------
        self
        """
        self._validate_params()
        self._check_validation_pair(X_val, y_val, "search strength")
        X, y = self._check_Xy(X, y)
        unlabelled = _unlabelled_mask(y)
        if unlabelled.all():
            raise InvalidFeaturesError("every row is unlabelled (-1); give at least one labelled row per class", param="y")
        X = self._fit_center(X, mean_rows=None if isinstance(self.center, str) and self.center == "transductive" else ~unlabelled)
        self.classes_, codes = self._encode(y[~unlabelled])
        Xv = yv = None
        if X_val is not None:
            Xv = self._check_X(X_val)
            yv = encode_validation(self.classes_, y_val)
        n_u = int(unlabelled.sum())
        Xu = X[unlabelled] if Xv is None else np.vstack([X[unlabelled], Xv])
        log_yhat = self._log_zero_shot(Xu)
        log_prior = None if log_yhat is None else float(self.prior_weight) * log_yhat
        em = _EM(X[~unlabelled], codes, Xu, len(self.classes_), log_prior, int(self.max_iter), float(self.tol),
                 self.covariance, self.cache)
        em.tau = em.model_temperature() if Xv is None else em.validation_temperature(Xv, yv)
        self.posterior_temperature_ = float(em.tau)
        grid = self._strengths() if Xv is not None else np.array([float(self.strength)])
        runs = [em.run(float(strength)) for strength in grid]
        best, nll, accuracy = 0, np.zeros(0), np.zeros(0)
        if Xv is not None:
            best, nll, accuracy = likelihood_guard([run[2][n_u:] for run in runs], yv, float(self.tolerance))
        means, (coef, intercept, fallback), z, self.n_iter_, self.converged_ = runs[best]
        if fallback:
            logger.info(NO_VARIATION)
        self.strength_ = float(grid[best])
        self.strength_grid_ = grid if Xv is not None else np.zeros(0)
        self.search_accuracy_ = np.asarray(accuracy, dtype=np.float64)
        self.search_nll_ = np.asarray(nll, dtype=np.float64)
        self.means_ = means.astype(np.float32)
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)
        self.fallback_ = fallback
        self._set_transduction(y, unlabelled, codes, z[:n_u])
        self.temperature_ = 1.0
        if Xv is not None:
            self._fit_temperature(Xv, yv)
        return self

    def _set_transduction(self, y, unlabelled, codes, z_u) -> None:
        dist = np.zeros((len(y), len(self.classes_)), dtype=np.float32)
        dist[np.flatnonzero(~unlabelled), codes] = 1.0
        dist[unlabelled] = z_u
        self.label_distributions_ = dist
        self.transduction_ = self.classes_[dist.argmax(axis=1)]

    def _strengths(self) -> np.ndarray:
        grid = DEFAULT_STRENGTHS if self.strength_grid is None else np.asarray(self.strength_grid, dtype=np.float64)
        return np.unique(np.concatenate([[0.0], grid]))

    def _log_zero_shot(self, X: np.ndarray) -> np.ndarray | None:
        """log yhat (n, C) float64 of the rows, or None without text."""
        if self.text_embeddings is None:
            return None
        weights = prompt_ensemble(self.text_embeddings, self.class_index)
        if weights.shape != (len(self.classes_), X.shape[1]):
            raise InvalidFeaturesError(
                f"text embeddings give {weights.shape[0]} classes of dimension {weights.shape[1]}, but the "
                f"labelled rows hold {len(self.classes_)} classes of dimension {X.shape[1]}; use text of the "
                "same CLIP model with one class per label",
                param="text_embeddings",
            )
        return scipy.special.log_softmax(float(self.logit_scale) * (l2_normalize(X) @ weights.T).astype(np.float64), axis=1)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        """l + tau lam log yhat, so that softmax(logits / tau) is the E-step posterior."""
        z = X @ self.coef_.T + self.intercept_
        if self.text_embeddings is None:
            return z
        log_yhat = self._log_zero_shot(X).astype(np.float32)
        return z + np.float32(self.prior_weight * self.posterior_temperature_) * log_yhat


def _unlabelled_mask(y: np.ndarray) -> np.ndarray:
    """Rows labelled -1 (numeric labels only; other label types have no unlabelled marker)."""
    if y.dtype.kind in "iuf":
        return y == UNLABELLED
    return np.zeros(len(y), dtype=bool)

"""Out-of-distribution detection on cached features: one estimator, twelve closed-form scores.

:class:`OODDetector` follows scikit-learn's outlier convention: ``fit`` on the
in-distribution support (or train) features, ``score_samples`` is higher for more
in-distribution inputs, ``predict`` returns +1 (in) or -1 (out) at a threshold
that keeps 95% of in-distribution validation data, and ``decision_function`` is
``score_samples - offset_``.

Each method follows OpenOOD v1.5 (``openood/postprocessors``) or its official
repository, as written down per method in docs/ood.md, with the deviations.
The metrics :func:`auroc`, :func:`aupr_in` and :func:`fpr_at_95_tpr` follow
OpenOOD v1.5's ``openood/evaluators/metrics.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.special
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import precision_recall_curve, roc_curve
from sklearn.utils.validation import check_is_fitted

from clipcache._shift import check_features, read_split, resolve_feature_set
from clipcache.calibration import fit_temperature
from clipcache.errors import (
    InvalidFeaturesError,
    InvalidParameterError,
    MissingTextError,
    NotFittedError,
    StoreMismatchError,
)
from clipcache.ops import l2_normalize, prompt_ensemble

__all__ = [
    "DEFAULT_K",
    "DEFAULT_METHODS",
    "FEATURE_METHODS",
    "LOGIT_METHODS",
    "METHODS",
    "OODDetector",
    "aupr_in",
    "auroc",
    "check_methods",
    "evaluate_ood",
    "fpr_at_95_tpr",
    "knn_default_k",
    "score_detectors",
    "text_options",
    "vim_default_dim",
]

logger = logging.getLogger(__name__)

#: Methods that score the (temperature-calibrated) logits of a classifier only.
LOGIT_METHODS = ("msp", "maxlogit", "energy", "gen")
#: Methods that read the features (with a classifier's logits for vim, fdbd and nnguide).
FEATURE_METHODS = ("mahalanobis", "rmds", "mahalanobis++", "vim", "knn", "fdbd", "nnguide")
METHODS = LOGIT_METHODS + ("mcm",) + FEATURE_METHODS
_CLASSIFIER_METHODS = LOGIT_METHODS + ("vim", "fdbd", "nnguide")
_LABELLED_METHODS = ("mahalanobis", "rmds", "mahalanobis++")
#: Default k of nnguide (its official config, k=10); knn's default depends on the fitted rows: :func:`knn_default_k`.
DEFAULT_K = {"nnguide": 10}
#: The detectors that :func:`evaluate_ood`, ``clipcache ood`` and ``clipcache evaluate --ood`` run by default.
DEFAULT_METHODS = ("msp", "energy", "mahalanobis", "rmds", "vim", "knn")


class _DetectorNotFittedError(NotFittedError, SklearnNotFittedError):
    """An OODDetector was used before ``fit``."""


# --------------------------------------------------------------------------- metrics


def _check_scores(score_in, score_out) -> tuple[np.ndarray, np.ndarray]:
    s_in = np.asarray(score_in, dtype=np.float64).reshape(-1)
    s_out = np.asarray(score_out, dtype=np.float64).reshape(-1)
    for name, s in (("score_in", s_in), ("score_out", s_out)):
        if s.size == 0:
            raise InvalidFeaturesError(f"{name} is empty; the metric needs at least one in- and one out-of-distribution score")
        if not np.isfinite(s).all():
            raise InvalidFeaturesError(f"{name} contains NaN or inf; check the features that were scored")
    return s_in, s_out


def _in_indicator(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out]


def auroc(score_in, score_out) -> float:
    """Area under the ROC curve of separating in- from out-of-distribution scores.

    Parameters
    ----------
    score_in : array-like of shape (n_in,), float
        Scores of in-distribution samples (higher = more in-distribution).
    score_out : array-like of shape (n_out,), float
        Scores of out-of-distribution samples.

    Returns
    -------
    float
        ``sklearn.metrics.roc_auc_score`` with in-distribution as the positive class
        (equal to OpenOOD v1.5's, which takes OOD as positive and negates the scores);
        ties count one half.
    """
    s_in, s_out = _check_scores(score_in, score_out)
    label, score = _in_indicator(s_in, s_out)
    fpr, tpr, _ = roc_curve(label, score)
    return float(_trapezoid_auc(fpr, tpr))


def aupr_in(score_in, score_out) -> float:
    """Area under the precision-recall curve with in-distribution as the positive class (AUPR-in).

    Parameters
    ----------
    score_in : array-like of shape (n_in,), float
    score_out : array-like of shape (n_out,), float

    Returns
    -------
    float
        The trapezoidal area under ``precision_recall_curve(in_indicator, score)``,
        as OpenOOD v1.5 (not the step-wise ``average_precision_score``).
    """
    s_in, s_out = _check_scores(score_in, score_out)
    label, score = _in_indicator(s_in, s_out)
    precision, recall, _ = precision_recall_curve(label, score)
    return float(_trapezoid_auc(recall, precision))


def fpr_at_95_tpr(score_in, score_out, *, tpr: float = 0.95, positive: str = "out") -> float:
    """False positive rate at 95% true positive rate.

    Parameters
    ----------
    score_in : array-like of shape (n_in,), float
    score_out : array-like of shape (n_out,), float
    tpr : float, default=0.95
    positive : {"out", "in"}, default="out"
        ``"out"``, OpenOOD v1.5's convention: OOD is the positive class, scored by
        ``-score``; at the first ROC threshold where at least ``tpr`` of the OOD
        samples are detected, the rate of in-distribution samples also flagged.
        ``"in"``, the convention of the KNN and MCM papers: at the first threshold
        keeping ``tpr`` of the in-distribution samples, the rate of OOD samples
        kept. Both are ``fpr[argmax(tpr_curve >= tpr)]`` of ``sklearn.metrics.roc_curve``.

    Returns
    -------
    float
    """
    if positive not in ("out", "in"):
        raise InvalidParameterError(f"positive={positive!r} is not 'out' or 'in'", param="positive")
    if not 0.0 < float(tpr) <= 1.0:
        raise InvalidParameterError(f"tpr={tpr!r} must lie in (0, 1]", param="tpr")
    s_in, s_out = _check_scores(score_in, score_out)
    label, score = _in_indicator(s_in, s_out)
    if positive == "out":
        label, score = 1 - label, -score
    fpr, tpr_curve, _ = roc_curve(label, score)
    return float(fpr[np.argmax(tpr_curve >= float(tpr))])


# --------------------------------------------------------------------------- formulas


def _precision(cov: np.ndarray, ridge: float) -> np.ndarray:
    """Square root L (d, r) of the precision: P = L L^T = pinvh(cov + ridge tr(cov)/d I).

    A symmetric eigensolver (``numpy.linalg.eigh``); eigenvalues at or below
    ``d * eps * max eigenvalue`` are dropped, as ``scipy.linalg.pinvh`` does.
    """
    d = cov.shape[0]
    if ridge > 0:
        cov = cov + ridge * (np.trace(cov) / d) * np.eye(d)
    values, vectors = np.linalg.eigh(cov)
    cutoff = d * np.finfo(np.float64).eps * max(float(np.abs(values).max()), 0.0)
    keep = values > cutoff
    return vectors[:, keep] / np.sqrt(values[keep])


def _auto_ridge(residual: np.ndarray, n_classes: int) -> float:
    """0 when the within-class covariance can have full rank, else the Ledoit-Wolf ridge delta / (1 - delta)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, d = residual.shape
    if n - n_classes >= d:
        return 0.0
    delta = float(ledoit_wolf_shrinkage(residual, assume_centered=True))
    logger.info("Mahalanobis: %d rows, %d classes, d=%d: singular covariance; Ledoit-Wolf ridge %.4g", n, n_classes, d, delta)
    return delta / (1.0 - delta) if delta < 1.0 else 1e6


def _class_means(X: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    sums = np.zeros((n_classes, X.shape[1]))
    np.add.at(sums, codes, X)
    return sums / np.bincount(codes, minlength=n_classes)[:, None]


def _mahalanobis_sq(X: np.ndarray, means: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances (n, C) of rows of X to ``means`` under P = root root^T."""
    xw = X @ root
    mw = means @ root
    return np.stack([np.einsum("ij,ij->i", xw - m, xw - m) for m in mw], axis=1)


def _linear_head(clf) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(W (C, d), b (C,), normalize)`` with ``logits = h W^T + b``, h = x or its L2 normalisation."""
    weights = getattr(clf, "coef_", None)
    if weights is None:
        weights = getattr(clf, "prototypes_", None)
    if weights is None:
        raise InvalidParameterError(
            f"{type(clf).__name__} is not a linear classifier (no coef_ or prototypes_); vim and fdbd need "
            "one, such as GDAClassifier, ClassMeanClassifier or ZeroShotClassifier",
            param="classifier",
        )
    w = np.asarray(weights, dtype=np.float64)
    b = np.asarray(getattr(clf, "intercept_", np.zeros(len(w))), dtype=np.float64)
    if hasattr(clf, "logit_scale") and not hasattr(clf, "intercept_"):
        w = w * float(clf.logit_scale)
    return w, b, bool(getattr(clf, "normalize", False))


def knn_default_k(n: int) -> int:
    """knn's default k for n fitted rows: OpenOOD v1.5's K=50 for CIFAR-10's 50,000, scaled to n.

    ``max(1, round(50 n / 50000))``: k = 1 up to 1,499 rows, 50 at 50,000. A fixed k=50 capped
    at n makes the score the similarity of the *farthest* fitted row on a few-shot support set,
    which no longer separates anything; on the near-OOD validation proxy of benchmarks/ood.py
    (400 fitted rows) k = 1 or 2 beats k = 10 and 50 (docs/ood.md, docs/benchmarks.md).
    """
    return max(1, int(round(50 * n / 50000)))


def vim_default_dim(d: int) -> int:
    """ViM's principal dimension D for feature dimension d.

    The official rule (``haoqiwang/vim`` benchmark.py) is ``1000 if d >= 2048 else
    512``; where that is not below d (d <= 512, e.g. CLIP ViT-B features) it would
    leave no residual and ViM would silently become energy, so D = d // 2 is used.
    """
    official = 1000 if d >= 2048 else 512
    return official if official < d else d // 2


def _carve(n: int, codes: np.ndarray | None, fraction: float, seed: int = 0) -> np.ndarray:
    """Rows held out as validation: ``max(1, round(fraction n_c))`` of each class with n_c >= 2 (seeded)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if codes is None else [np.flatnonzero(codes == c) for c in np.unique(codes)]
    held = []
    for rows in groups:
        if len(rows) >= 2:
            take = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
            held.append(rng.choice(rows, size=take, replace=False))
    if not held:
        raise InvalidFeaturesError(
            "too few rows to hold out in-distribution validation data (every class has one sample); pass X_val"
        )
    return np.sort(np.concatenate(held))


# --------------------------------------------------------------------------- the estimator


class OODDetector(OutlierMixin, BaseEstimator):
    """Out-of-distribution detector on cached features (scikit-learn outlier convention).

    Parameters
    ----------
    method : str, default="mahalanobis"
        One of :data:`METHODS`:

        - ``"msp"``: maximum softmax probability of the calibrated logits z/T.
        - ``"maxlogit"``: maximum of z/T.
        - ``"energy"``: ``logsumexp(z/T)``.
        - ``"gen"``: generalized entropy ``-sum_top-M p^gamma (1-p)^gamma`` of softmax(z/T).
        - ``"mcm"``: maximum of ``softmax(cos(x, t_c) / tau)`` over the text class weights t_c.
        - ``"mahalanobis"``: ``-min_c (x-mu_c)^T P (x-mu_c)``, class means and one shared
          precision P = pinv of the within-class covariance.
        - ``"rmds"``: relative Mahalanobis: class distance minus the distance to the
          whole-data Gaussian, maximised over classes.
        - ``"mahalanobis++"``: ``"mahalanobis"`` on L2-normalised features.
        - ``"vim"``: ``logsumexp(z) - alpha ||(h-u) NS||``, the residual off the top-D
          principal subspace.
        - ``"knn"``: cosine similarity of the k-th nearest fitted feature (FAISS).
        - ``"fdbd"``: mean distance to the decision boundaries, over the feature distance
          to the training mean.
        - ``"nnguide"``: energy times the mean of the k largest inner products with the
          energy-scaled fitted features.
    classifier : estimator, optional
        For msp, maxlogit, energy, gen, vim, fdbd and nnguide: a clipcache classifier with
        ``logits(X)``; a fitted one is used as is, an unfitted one is cloned and fitted on
        ``(X, y)``. By default a ``GDAClassifier()`` is fitted on ``(X, y)``. vim and fdbd
        need a linear one (GDAClassifier, ClassMeanClassifier, ZeroShotClassifier).
    text_embeddings : ndarray of shape (M, d), optional
        For mcm: prompt embeddings; the class weights are their prompt ensemble.
    class_index : ndarray of shape (M,), int, optional
        For mcm: the class of each prompt (None: one prompt per class).
    temperature : "auto" or float, default="auto"
        For msp, maxlogit, energy and gen: T of the calibrated logits z/T. ``"auto"``
        fits T on the validation logits (:func:`clipcache.calibration.fit_temperature`)
        when validation labels are available, else uses T = 1.
    tau : float, default=1.0
        For mcm: the softmax temperature, applied to raw cosines.
    gamma : float, default=0.1
        For gen.
    M : int, default=100
        For gen: the number of top probabilities (capped at C).
    k : int, optional
        For knn (default :func:`knn_default_k` of the fitted rows: OpenOOD v1.5's 50 per
        50,000 rows) and nnguide (default 10, official); capped at the number of fitted rows.
    dim : int, optional
        For vim: the principal dimension D < d (default :func:`vim_default_dim`).
    ridge : "auto" or float, default="auto"
        For mahalanobis, rmds and mahalanobis++: the covariances are regularised as
        ``cov + ridge * tr(cov)/d * I`` before their pseudo-inverse. 0 is OpenOOD's
        plain pinv. ``"auto"`` is 0 when the within-class covariance can have full rank
        (n - C >= d) and otherwise ``delta / (1 - delta)``, with delta the Ledoit-Wolf
        shrinkage intensity of the within-class residuals (a pinv of a singular
        covariance ignores every direction the fitted data does not span).
    distance_as_normalizer : bool, default=True
        For fdbd: divide by ``||h - mean||`` (True, OpenOOD v1.5) or ``||h||``.
    center : bool, default=False
        Every method except mcm: subtract the mean of the fitted features, then
        L2-normalise, before anything else (the default classifier is fitted on the
        transformed features; a pre-fitted ``classifier`` is refused). SimpleShot's
        "CL2N" transform; with mahalanobis it is Mahalanobis++ on centred features.
    tpr : float, default=0.95
        Share of in-distribution validation data that ``predict`` keeps.
    val_fraction : float, default=0.2
        Share of each class held out of ``X`` as validation when no ``X_val`` is given.
    backend : {"auto", "faiss", "torch"}, default="auto"
        For knn and nnguide: who searches the fitted features
        (:func:`clipcache.retrieval.backends.choose_backend`; auto: faiss-gpu, then torch on CUDA, then faiss).

    Attributes
    ----------
    method_ : str
    classifier_ : estimator or None
        The classifier whose logits are scored.
    temperature_ : float or None
        T of the logit methods.
    offset_ : float
        The threshold: ``predict`` is +1 where ``score_samples >= offset_``.
    classes_ : ndarray of shape (C,) or None
    n_features_in_ : int
    n_val_ : int
        Validation rows that set ``offset_`` (and T).
    val_carved_ : bool
        Whether they were held out of ``X``.
    ridge_ : float
        The ridge used by mahalanobis, rmds and mahalanobis++.
    center_ : ndarray of shape (d,), float64, or None
        The mean subtracted when ``center`` is True.

    Notes
    -----
    Without ``X_val``, ``fit`` holds out ``val_fraction`` of each class of ``X``
    (classes with at least two rows, seed 0), fits on the rest and sets the
    threshold (and T) on the held-out rows; mcm fits nothing on ``X`` and uses all
    of it. docs/ood.md gives each formula, its source and the deviations.
    """

    def __init__(
        self,
        method="mahalanobis",
        *,
        classifier=None,
        text_embeddings=None,
        class_index=None,
        temperature="auto",
        tau=1.0,
        gamma=0.1,
        M=100,
        k=None,
        dim=None,
        ridge="auto",
        distance_as_normalizer=True,
        center=False,
        tpr=0.95,
        val_fraction=0.2,
        backend="auto",
    ):
        self.method = method
        self.classifier = classifier
        self.text_embeddings = text_embeddings
        self.class_index = class_index
        self.temperature = temperature
        self.tau = tau
        self.gamma = gamma
        self.M = M
        self.k = k
        self.dim = dim
        self.ridge = ridge
        self.distance_as_normalizer = distance_as_normalizer
        self.center = center
        self.tpr = tpr
        self.val_fraction = val_fraction
        self.backend = backend

    # -- parameters -----------------------------------------------------------------

    def _check_params(self) -> None:
        from clipcache.retrieval.backends import check_backend  # imports faiss: only when fitting

        check_backend(self.backend)
        if self.method not in METHODS:
            raise InvalidParameterError(f"method={self.method!r} is not one of {', '.join(METHODS)}", param="method")
        positive = {"tau": self.tau, "gamma": self.gamma}
        if self.temperature != "auto":
            positive["temperature"] = self.temperature
        for name, value in positive.items():
            if not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
                raise InvalidParameterError(f"{name}={value!r} must be a positive number", param=name)
        for name, value in (("M", self.M), ("k", self.k), ("dim", self.dim)):
            if value is not None and (not isinstance(value, int | np.integer) or value < 1):
                raise InvalidParameterError(f"{name}={value!r} must be a positive integer", param=name)
        if self.ridge != "auto" and (not isinstance(self.ridge, int | float) or not self.ridge >= 0):
            raise InvalidParameterError(f"ridge={self.ridge!r} must be 'auto' or a number >= 0", param="ridge")
        if not isinstance(self.center, bool | np.bool_):
            raise InvalidParameterError(f"center={self.center!r} must be True or False", param="center")
        if self.center and self.method == "mcm":
            raise InvalidParameterError(
                "center=True would move the image features away from the text embeddings that mcm compares them with; "
                "use center=False with mcm", param="center",
            )
        for name, value in (("tpr", self.tpr), ("val_fraction", self.val_fraction)):
            if not isinstance(value, int | float) or not 0.0 < value < 1.0:
                raise InvalidParameterError(f"{name}={value!r} must lie strictly between 0 and 1", param=name)

    # -- fit ------------------------------------------------------------------------

    def fit(self, X, y=None, *, X_val=None, y_val=None):
        """Fit the detector on in-distribution data and set the threshold of ``predict``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            In-distribution support or train features.
        y : array-like of shape (n,), optional
            Their labels; needed by mahalanobis, rmds, mahalanobis++ and by the classifier
            methods unless a fitted ``classifier`` is given.
        X_val : array-like of shape (m, d), optional
            In-distribution validation features: the threshold keeps ``tpr`` of them.
        y_val : array-like of shape (m,), optional
            Their labels: the temperature of the logit methods is fitted on them.

        Returns
        -------
        self
        """
        self._check_params()
        X = check_features(X, "X")
        codes = None
        self.classes_ = None
        if y is not None:
            y = np.asarray(y)
            if y.shape != (len(X),):
                raise InvalidFeaturesError(f"y has shape {y.shape} but X has {len(X)} rows; pass one label per row")
            self.classes_, codes = np.unique(y, return_inverse=True)
        if X_val is not None:
            X_val = check_features(X_val, "X_val")
            if X_val.shape[1] != X.shape[1]:
                raise InvalidFeaturesError(f"X_val has {X_val.shape[1]} features but X has {X.shape[1]}; use one feature set")
            if y_val is not None and np.shape(y_val) != (len(X_val),):
                raise InvalidFeaturesError(f"y_val has shape {np.shape(y_val)} but X_val has {len(X_val)} rows")
        self.val_carved_ = X_val is None and self.method != "mcm"
        if self.val_carved_:
            held = _carve(len(X), codes, float(self.val_fraction))
            keep = np.setdiff1d(np.arange(len(X)), held)
            X_val, y_val = X[held], (None if y is None else y[held])
            X, y, codes = X[keep], (None if y is None else y[keep]), (None if codes is None else codes[keep])
        elif X_val is None:
            X_val, y_val = X, y
        self.method_ = self.method
        self.n_features_in_ = X.shape[1]
        self.center_ = X.mean(axis=0, dtype=np.float64) if self.center else None
        X, X_val = self._transform(X), self._transform(X_val)
        self._fit_method(X, y, codes, X_val, y_val)
        self.n_val_ = len(X_val)
        self.offset_ = self._threshold(self._scores(X_val))
        return self

    def _fit_method(self, X, y, codes, X_val, y_val) -> None:
        method = self.method
        self.classifier_, self.temperature_ = None, None
        if method in _LABELLED_METHODS:
            if codes is None:
                raise InvalidFeaturesError(f"method {method!r} needs the labels y of X to estimate class means")
            self._fit_gaussians(X, codes)
        elif method == "knn":
            self._fit_knn(X)
        elif method == "mcm":
            self._fit_mcm(X)
        else:
            self.classifier_ = self._fit_classifier(X, y)
            if method in LOGIT_METHODS:
                self.temperature_ = self._fit_temperature(X_val, y_val)
            elif method == "vim":
                self._fit_vim(X)
            elif method == "fdbd":
                self._fit_fdbd(X)
            else:
                self._fit_nnguide(X)

    def _fit_classifier(self, X, y):
        from clipcache.classifiers import GDAClassifier

        clf = self.classifier
        if clf is not None:
            try:
                check_is_fitted(clf)
                if self.center:
                    raise InvalidParameterError(
                        "center=True transforms the features that the fitted classifier was not fitted on; "
                        "pass an unfitted classifier or center=False", param="center",
                    )
                if getattr(clf, "n_features_in_", X.shape[1]) != X.shape[1]:
                    raise InvalidFeaturesError(
                        f"the classifier was fitted on {clf.n_features_in_} features but X has {X.shape[1]}"
                    )
                return clf
            except SklearnNotFittedError:
                clf = clone(clf)
        else:
            clf = GDAClassifier()
        if y is None:
            raise InvalidFeaturesError(
                f"method {self.method!r} fits a classifier on (X, y); pass the labels y or a fitted classifier"
            )
        if len(np.unique(y)) < 2:
            raise InvalidFeaturesError(
                f"method {self.method!r} scores a classifier's logits, which needs at least 2 classes but y holds 1; "
                "use mahalanobis, rmds, mahalanobis++ or knn for a single class"
            )
        return clf.fit(X, y)

    def _fit_temperature(self, X_val, y_val) -> float:
        from clipcache.classifiers._validation import encode_validation

        if self.temperature != "auto":
            return float(self.temperature)
        if y_val is None:
            logger.info("OODDetector(%s): no validation labels; using the uncalibrated logits (T = 1)", self.method)
            return 1.0
        columns = encode_validation(np.asarray(self.classifier_.classes_), y_val)
        return fit_temperature(self.classifier_.logits(X_val), columns)

    def _fit_gaussians(self, X, codes) -> None:
        X64 = np.asarray(X, dtype=np.float64)
        X64 = l2_normalize(X64) if self.method == "mahalanobis++" else X64
        n_classes = int(codes.max()) + 1
        self.means_ = _class_means(X64, codes, n_classes)
        residual = X64 - self.means_[codes]
        self.ridge_ = _auto_ridge(residual, n_classes) if self.ridge == "auto" else float(self.ridge)
        self.precision_root_ = _precision(residual.T @ residual / len(X64), self.ridge_)
        if self.method == "rmds":
            self.whole_mean_ = X64.mean(axis=0)
            centred = X64 - self.whole_mean_
            self.whole_precision_root_ = _precision(centred.T @ centred / len(X64), self.ridge_)

    def _fit_knn(self, X) -> None:
        from clipcache.retrieval.backends import flat_index

        self.k_ = min(int(self.k or knn_default_k(len(X))), len(X))
        self.bank_ = np.ascontiguousarray(l2_normalize(X))
        self._index, _ = flat_index(self.bank_, backend=self.backend)

    def _fit_mcm(self, X) -> None:
        if self.text_embeddings is None:
            raise MissingTextError(
                "method 'mcm' needs text_embeddings (the class prompts' CLIP text embeddings); pass them or pick another method",
                param="text_embeddings",
            )
        self.class_weights_ = prompt_ensemble(self.text_embeddings, self.class_index)
        if self.class_weights_.shape[1] != X.shape[1]:
            raise InvalidFeaturesError(
                f"text embeddings have dimension {self.class_weights_.shape[1]} but the features have {X.shape[1]}; "
                "use text and image features from the same CLIP model"
            )

    def _head_features(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return l2_normalize(X) if self.head_normalize_ else X

    def _head_logits(self, h: np.ndarray) -> np.ndarray:
        return h @ self.head_weights_.T + self.head_bias_

    def _fit_head(self) -> None:
        self.head_weights_, self.head_bias_, self.head_normalize_ = _linear_head(self.classifier_)

    def _fit_vim(self, X) -> None:
        self._fit_head()
        h = self._head_features(X)
        d = h.shape[1]
        dim = vim_default_dim(d) if self.dim is None else int(self.dim)
        if dim >= d:
            raise InvalidParameterError(
                f"dim={dim} must be below the feature dimension {d}; ViM with D >= d has no residual and is energy",
                param="dim",
            )
        if self.dim is None and dim != (1000 if d >= 2048 else 512):
            logger.info("ViM: the official D=%d is not below d=%d; using D=%d", 1000 if d >= 2048 else 512, d, dim)
        if len(h) <= dim:
            logger.warning(
                "ViM: %d fitted rows do not span a %d-dimensional principal subspace; its residual is ill-defined",
                len(h), dim,
            )
        self.vim_dim_ = dim
        self.vim_origin_ = -np.linalg.pinv(self.head_weights_) @ self.head_bias_
        centred = h - self.vim_origin_
        values, vectors = np.linalg.eigh(centred.T @ centred / len(h))
        order = np.argsort(-values, kind="stable")
        self.vim_residual_basis_ = np.ascontiguousarray(vectors[:, order[dim:]])
        residual = np.linalg.norm(centred @ self.vim_residual_basis_, axis=1)
        self.vim_alpha_ = float(self._head_logits(h).max(axis=1).mean() / residual.mean())

    def _fit_fdbd(self, X) -> None:
        self._fit_head()
        w = self.head_weights_
        self.fdbd_train_mean_ = self._head_features(X).mean(axis=0)
        denominator = np.linalg.norm(w[None, :, :] - w[:, None, :], axis=2)  # [p, c] = ||w_c - w_p||
        np.fill_diagonal(denominator, 1.0)
        self.fdbd_denominator_ = denominator

    def _fit_nnguide(self, X) -> None:
        from clipcache.retrieval.backends import flat_index

        energy = scipy.special.logsumexp(np.asarray(self.classifier_.logits(X), dtype=np.float64), axis=1)
        self.k_ = min(int(self.k or DEFAULT_K["nnguide"]), len(X))
        self.bank_ = np.ascontiguousarray((l2_normalize(X) * energy[:, None]).astype(np.float32))
        self._index, _ = flat_index(self.bank_, backend=self.backend)

    def _threshold(self, val_scores: np.ndarray) -> float:
        """The largest threshold that keeps at least ``tpr`` of the validation scores."""
        ordered = np.sort(val_scores)
        return float(ordered[int(np.floor((1.0 - float(self.tpr)) * len(ordered)))])

    # -- scores ---------------------------------------------------------------------

    def _check_fitted(self, X) -> np.ndarray:
        if not hasattr(self, "offset_"):
            raise _DetectorNotFittedError("this OODDetector is not fitted yet; call fit before scoring")
        X = check_features(X, "X", min_samples=0)
        if X.shape[1] != self.n_features_in_:
            raise InvalidFeaturesError(
                f"X has {X.shape[1]} features but the detector was fitted on {self.n_features_in_}; use the same feature set"
            )
        return self._transform(X)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        """``X``, or ``l2_normalize(X - center_)`` as float32 when ``center`` is set."""
        if self.center_ is None:
            return X
        return l2_normalize(X.astype(np.float64) - self.center_).astype(np.float32)

    def score_samples(self, X) -> np.ndarray:
        """In-distribution scores: higher means more in-distribution.

        Parameters
        ----------
        X : array-like of shape (n, d)
            May be empty.

        Returns
        -------
        ndarray of shape (n,), float64
        """
        return self._scores(self._check_fitted(X))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(getattr(self, f"_score_{self.method_.replace('+', 'p')}")(X), dtype=np.float64)

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for predicted outliers; ndarray of shape (n,), float64."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for in-distribution, -1 for out-of-distribution.

        Parameters
        ----------
        X : array-like of shape (n, d)

        Returns
        -------
        ndarray of shape (n,), int64
        """
        return np.where(self.score_samples(X) >= self.offset_, 1, -1).astype(np.int64)

    def _calibrated_logits(self, X) -> np.ndarray:
        return np.asarray(self.classifier_.logits(X), dtype=np.float64) / self.temperature_

    def _score_msp(self, X):
        return scipy.special.softmax(self._calibrated_logits(X), axis=1).max(axis=1)

    def _score_maxlogit(self, X):
        return self._calibrated_logits(X).max(axis=1)

    def _score_energy(self, X):
        return scipy.special.logsumexp(self._calibrated_logits(X), axis=1)

    def _score_gen(self, X):
        p = scipy.special.softmax(self._calibrated_logits(X), axis=1)
        top = np.sort(p, axis=1)[:, -min(int(self.M), p.shape[1]) :]
        return -np.sum(top**self.gamma * (1 - top) ** self.gamma, axis=1)

    def _score_mcm(self, X):
        cos = l2_normalize(np.asarray(X, dtype=np.float64)) @ self.class_weights_.T.astype(np.float64)
        return scipy.special.softmax(cos / float(self.tau), axis=1).max(axis=1)

    def _score_mahalanobis(self, X):
        X64 = np.asarray(X, dtype=np.float64)
        X64 = l2_normalize(X64) if self.method_ == "mahalanobis++" else X64
        return -_mahalanobis_sq(X64, self.means_, self.precision_root_).min(axis=1)

    _score_mahalanobispp = _score_mahalanobis

    def _score_rmds(self, X):
        X64 = np.asarray(X, dtype=np.float64)
        background = _mahalanobis_sq(X64, self.whole_mean_[None, :], self.whole_precision_root_)[:, 0]
        return background - _mahalanobis_sq(X64, self.means_, self.precision_root_).min(axis=1)

    def _search(self, X) -> np.ndarray:
        sims, _ = self._index.search(np.ascontiguousarray(l2_normalize(X)), self.k_)
        return sims

    def _score_knn(self, X):
        return self._search(X)[:, self.k_ - 1]

    def _score_vim(self, X):
        h = self._head_features(X)
        residual = np.linalg.norm((h - self.vim_origin_) @ self.vim_residual_basis_, axis=1)
        return scipy.special.logsumexp(self._head_logits(h), axis=1) - self.vim_alpha_ * residual

    def _score_fdbd(self, X):
        h = self._head_features(X)
        z = self._head_logits(h)
        pred = z.argmax(axis=1)
        gaps = np.abs(z - z[np.arange(len(z)), pred][:, None]) / self.fdbd_denominator_[pred]
        norm = np.linalg.norm(h - self.fdbd_train_mean_ if self.distance_as_normalizer else h, axis=1)
        return gaps.sum(axis=1) / norm

    def _score_nnguide(self, X):
        energy = scipy.special.logsumexp(np.asarray(self.classifier_.logits(X), dtype=np.float64), axis=1)
        return self._search(X).astype(np.float64).mean(axis=1) * energy


# --------------------------------------------------------------------------- stores


def _check_same_model(other, feature_set: str, identity: dict, store_path) -> None:
    """Raise StoreMismatchError unless ``other`` holds ``feature_set`` from the model of ``identity``."""
    from clipcache.feature_store.schema import model_identity

    info = other.feature_sets.get(feature_set)
    if info is None:
        raise StoreMismatchError(
            f"{other.path} has no feature set {feature_set!r}; extract the OOD images with the backbone of {store_path}"
        )
    if model_identity(info.provenance, info.dim) != identity:
        raise StoreMismatchError(
            f"{other.path}: feature set {feature_set!r} comes from a different model or preprocessing than in "
            f"{store_path}; extract the OOD images with the same backbone"
        )


def check_methods(methods, param: str = "methods") -> list[str]:
    """``methods`` as a list of keys of :data:`METHODS`; an unknown one or an empty list raises (for ``param``)."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidParameterError(
            f"method {unknown[0] if unknown else 'list is empty'!r} is not one of {', '.join(METHODS)}", param=param
        )
    return methods


def text_options(store, text: str | None, feature_set: str) -> dict:
    """mcm's ``text_embeddings`` and ``class_index`` from the store (its only text set when ``text`` is None)."""
    names = store.text_names
    name = text if text is not None else (names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise InvalidParameterError(
            f"method mcm needs text embeddings; {store.path} has {', '.join(names) or 'none'}, choose one with text",
            param="text",
        )
    store.check_text_matches(name, feature_set)
    emb = store.text(name)
    return {"text_embeddings": emb.embeddings, "class_index": emb.class_index}


def score_detectors(methods, X, y, X_val, y_val, X_in, outs, *, mcm_options=None) -> list[dict]:
    """Fit each detector on ``(X, y)`` and score ``X_in`` against each OOD set.

    The classifier methods share one ``GDAClassifier()`` fitted on ``(X, y)``.

    Parameters
    ----------
    methods : sequence of str
        Keys of :data:`METHODS`.
    X : ndarray of shape (n, d), float32
    y : ndarray of shape (n,), int, or None
    X_val : ndarray of shape (m, d), float32, or None
        In-distribution validation (threshold, temperature); None carves it from X.
    y_val : ndarray of shape (m,), int, or None
    X_in : ndarray of shape (n_in, d), float32
        In-distribution test features.
    outs : sequence of (str, ndarray of shape (n_out, d))
        Each OOD set's label and features.
    mcm_options : dict, optional
        :func:`text_options`, for mcm.

    Returns
    -------
    list of dict
        ``{"method", "out", "n_out", "auroc", "aupr_in", "fpr95", "in_kept"}`` per method and OOD set.
    """
    shared = {}
    if y is not None and len(np.unique(y)) >= 2 and any(m in _CLASSIFIER_METHODS for m in methods):
        from clipcache.classifiers import GDAClassifier

        shared["classifier"] = GDAClassifier().fit(X, y)
    results = []
    for method in methods:
        options = dict(mcm_options or {}) if method == "mcm" else {}
        if method in _CLASSIFIER_METHODS:
            options.update(shared)
        detector = OODDetector(method, **options).fit(X, y, X_val=X_val, y_val=y_val)
        s_in = detector.score_samples(X_in)
        kept = float(np.mean(detector.predict(X_in) == 1)) if len(X_in) else float("nan")
        for label, X_out in outs:
            s_out = detector.score_samples(X_out)
            results.append({
                "method": method, "out": label, "n_out": len(X_out), "auroc": auroc(s_in, s_out),
                "aupr_in": aupr_in(s_in, s_out), "fpr95": fpr_at_95_tpr(s_in, s_out), "in_kept": kept,
            })
    return results


def evaluate_ood(
    store_path,
    *,
    out_sets,
    methods=DEFAULT_METHODS,
    fit_split: str = "train",
    in_split: str = "test",
    val_split: str | None = "auto",
    feature_set: str | None = None,
    text: str | None = None,
) -> dict:
    """Fit each detector on a split of a store and score an in-distribution split against OOD sets.

    Parameters
    ----------
    store_path : str or PathLike
        The feature store.
    out_sets : sequence of (str or PathLike or None, str)
        The OOD sets: ``(None, split)`` for a split of ``store_path``, ``(other_store, split)``
        for a split of another store, whose feature set must come from the same model
        (:func:`clipcache.feature_store.schema.model_identity`).
    methods : sequence of str
        Keys of :data:`METHODS`.
    fit_split, in_split : str
        The split the detectors are fitted on (its labelled rows) and the in-distribution
        test split.
    val_split : str or None, default="auto"
        In-distribution validation split (threshold and temperature); ``"auto"`` is
        ``"val"`` when the store has it, None holds rows out of ``fit_split``.
    feature_set : str, optional
        The store's only feature set by default.
    text : str, optional
        Text embeddings for mcm (the store's only set by default).

    Returns
    -------
    dict
        ``{"store", "feature_set", "fit_split", "in_split", "val_split", "n_fit", "n_in",
        "results": [{"method", "out", "n_out", "auroc", "aupr_in", "fpr95", "in_kept"}]}``.

    Raises
    ------
    InvalidParameterError
        Unknown method, split or feature set; mcm without text embeddings.
    StoreMismatchError
        An OOD store's features come from another model than ``store_path``'s.
    InvalidFeaturesError
        An empty OOD split (the metrics need at least one score).
    """
    from clipcache.feature_store import FeatureStore
    from clipcache.feature_store.schema import model_identity

    methods = check_methods(methods)
    with FeatureStore(store_path, "r") as store:
        fs = resolve_feature_set(store, feature_set)
        info = store.feature_sets[fs]
        identity = model_identity(info.provenance, info.dim)
        if val_split == "auto":
            val_split = "val" if "val" in store.splits and "val" not in (fit_split, in_split) else None
        X, y = read_split(store, fit_split, fs, "fit_split")
        labelled = y >= 0
        X, y = (X[labelled], y[labelled]) if labelled.any() else (X, None)
        X_in, _ = read_split(store, in_split, fs, "in_split")
        X_val = y_val = None
        if val_split is not None:
            X_val, y_val = read_split(store, val_split, fs, "val_split")
            y_val = y_val if (y_val >= 0).all() else None
        mcm_options = text_options(store, text, fs) if "mcm" in methods else None
        outs = []
        for other, split in out_sets:
            if other is None:
                outs.append((split, read_split(store, split, fs, "out_sets")[0]))
                continue
            with FeatureStore(other, "r") as o:
                _check_same_model(o, fs, identity, store.path)
                outs.append((f"{o.path}:{split}", read_split(o, split, fs, "out_sets")[0]))
    results = score_detectors(methods, X, y, X_val, y_val, X_in, outs, mcm_options=mcm_options)
    return {
        "store": str(store_path), "feature_set": fs, "fit_split": fit_split, "in_split": in_split,
        "val_split": val_split, "n_fit": len(X), "n_in": len(X_in), "results": results,
    }

"""Label-free accuracy estimation: how accurate is a fitted classifier on an unlabelled batch?

:func:`estimate_accuracy` scores a classifier's (temperature-calibrated) outputs on
the unlabelled features with one of :data:`METHODS`:

- ``"ac"``: average confidence, the mean maximum softmax probability.
- ``"doc"``: difference of confidences (Guillory et al., 2021): validation accuracy
  minus the drop in average confidence from validation to the new batch.
- ``"atc-mc"``, ``"atc-ne"``: average thresholded confidence (Garg et al., ICLR 2022,
  ``saurabhgarg1996/ATC_code``): the threshold t on validation scores at which the
  number of wrong predictions above t equals the number of right ones below it;
  the estimate is the share of new scores at or above t. MC scores by maximum
  confidence, NE by negative entropy ``sum p log p``.
- ``"nuclear"``: the normalised nuclear norm of the probability matrix (Deng et al.,
  ICML 2023), ``||P||_* / sqrt(min(N, K) N)``.
- ``"mano"``: MaNo (Xie et al., NeurIPS 2024, ``Renchunzi-Xie/MaNo``): the
  normalised entry-wise p-norm (p = 4) of the softrun-normalised logits; see
  :func:`mano_score`.

``ac``, ``doc`` and ``atc`` return accuracies; ``nuclear`` and ``mano`` return scores
in [0, 1] that the papers use, as here, as accuracy estimates whose agreement with
the truth is judged by correlation (R² of a linear fit, Spearman rho).
docs/shift.md describes each formula, its source and what is not copied from it.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.special
import scipy.stats

from clipcache._shift import check_features, check_split
from clipcache.calibration import fit_temperature
from clipcache.errors import InvalidFeaturesError, InvalidParameterError, ModelFileError

__all__ = [
    "METHODS",
    "atc_threshold",
    "average_confidence",
    "estimate_accuracy",
    "estimate_store",
    "mano_score",
    "nuclear_norm_score",
    "r2_linear_fit",
    "softrun",
]

logger = logging.getLogger(__name__)

METHODS = ("ac", "doc", "atc-mc", "atc-ne", "nuclear", "mano")
_NEEDS_VALIDATION = ("doc", "atc-mc", "atc-ne")
_ENTROPY_EPS = 1e-20  # the ATC code's get_entropy: sum p log(p + 1e-20)


def average_confidence(proba: np.ndarray) -> float:
    """Mean over rows of the maximum probability.

    Parameters
    ----------
    proba : ndarray of shape (n, C), float

    Returns
    -------
    float
    """
    return float(np.mean(np.max(proba, axis=1)))


def _atc_scores(proba: np.ndarray, score: str) -> np.ndarray:
    if score == "mc":
        return np.max(proba, axis=1)
    return np.sum(proba * np.log(proba + _ENTROPY_EPS), axis=1)


def atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """ATC's threshold: the validation score at which wrong-above equals right-below.

    Scanning the scores in ascending order, as ``find_ATC_threshold`` of the official
    code does: after the i-th score, ``fp`` is the number of wrong predictions above
    it and ``fn`` the number of right ones at or below it; the threshold is the first
    score that minimises ``|fp - fn|`` below its starting value (all wrong above).

    Parameters
    ----------
    scores : ndarray of shape (n,), float
        Validation scores (maximum confidence or negative entropy).
    correct : ndarray of shape (n,), bool
        Whether each validation prediction is right.

    Returns
    -------
    float
        The threshold, or ``-inf`` (every score counts) when no scanned score lowers
        ``|fp - fn|``, i.e. when every validation prediction is right; the official
        code returns 0.0 there, which makes ``atc-ne`` estimate 0.
    """
    order = np.argsort(scores, kind="stable")
    right = np.asarray(correct, dtype=bool)[order]
    fp = np.sum(~right) - np.cumsum(~right)
    fn = np.cumsum(right)
    gap = np.abs(fp - fn)
    best = int(np.argmin(gap))
    if gap[best] >= np.sum(~right):
        return float("-inf")
    return float(np.asarray(scores)[order][best])


def nuclear_norm_score(proba: np.ndarray) -> float:
    """Normalised nuclear norm ``||P||_* / sqrt(min(N, K) * N)`` of the (N, K) probability matrix, in [0, 1]."""
    n, k = proba.shape
    return float(np.linalg.svd(proba.astype(np.float64), compute_uv=False).sum() / np.sqrt(min(n, k) * n))


def softrun(logits: np.ndarray, threshold: float = 5.0) -> tuple[np.ndarray, float]:
    """MaNo's softrun normalisation of a whole logit matrix.

    The criterion Phi is the mean cross-entropy between the uniform distribution and
    ``softmax(z)``, ``mean_i [logsumexp(z_i) - mean_k z_ik]`` (``F.cross_entropy(logits,
    uniform)`` of the official code). When Phi > ``threshold`` the rows are
    ``softmax(z)``; otherwise the second-order Taylor expansion ``1 + z + z^2 / 2`` of
    ``exp``, minus its row minimum, divided by its row sum.

    Parameters
    ----------
    logits : ndarray of shape (n, K), float
    threshold : float, default=5.0
        delta of the paper.

    Returns
    -------
    normalized : ndarray of shape (n, K), float64
    criterion : float
        Phi.
    """
    z = np.asarray(logits, dtype=np.float64)
    criterion = float(np.mean(scipy.special.logsumexp(z, axis=1) - z.mean(axis=1)))
    if criterion > threshold:
        return scipy.special.softmax(z, axis=1), criterion
    v = 1.0 + z + z**2 / 2.0
    v = v - v.min(axis=1, keepdims=True)
    return v / np.maximum(v.sum(axis=1, keepdims=True), 1e-12), criterion


def mano_score(logits: np.ndarray, *, norm_order: int = 4, threshold: float = 5.0) -> float:
    """MaNo: ``(sum |q_ik|^p / (N K))^(1/p)`` of the softrun-normalised logits q, in [0, 1].

    Computed once over the whole matrix, with Phi computed for this matrix (the
    official code averages per-batch scores and caches Phi of the first call; see
    docs/shift.md).

    Parameters
    ----------
    logits : ndarray of shape (N, K), float
    norm_order : int, default=4
        p.
    threshold : float, default=5.0
        delta of :func:`softrun`; ``-inf`` always takes the softmax branch and ``inf``
        the Taylor branch (to score several sets with one normalisation).

    Returns
    -------
    float
    """
    q, _ = softrun(logits, threshold)
    n, k = q.shape
    return float((np.sum(np.abs(q) ** norm_order) / (n * k)) ** (1.0 / norm_order))


def r2_linear_fit(estimate, truth) -> float:
    """R² of the least-squares line of ``truth`` on ``estimate``: the squared Pearson correlation.

    Parameters
    ----------
    estimate, truth : array-like of shape (m,), float
        One value per evaluated set (m >= 3).

    Returns
    -------
    float
    """
    e, t = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if e.shape != t.shape or e.ndim != 1 or len(e) < 3:
        raise InvalidFeaturesError(f"estimate and truth must be two 1-D arrays of the same length >= 3, got {e.shape} and {t.shape}")
    if np.ptp(e) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(scipy.stats.pearsonr(e, t).statistic ** 2)


def estimate_accuracy(
    classifier,
    X,
    method: str = "mano",
    X_val=None,
    y_val=None,
    *,
    calibrate: bool = True,
    norm_order: int = 4,
    threshold: float = 5.0,
) -> float:
    """Estimate the accuracy of a fitted classifier on unlabelled features.

    Parameters
    ----------
    classifier : fitted clipcache classifier
        Anything with ``logits(X)`` and ``classes_``.
    X : array-like of shape (n, d)
        The unlabelled features (n >= 1).
    method : str, default="mano"
        One of :data:`METHODS`.
    X_val : array-like of shape (m, d), optional
        Labelled in-distribution validation features (never the evaluated batch):
        needed by doc and atc, and for calibration.
    y_val : array-like of shape (m,), optional
        Their labels.
    calibrate : bool, default=True
        Divide the logits by the temperature fitted on ``(X_val, y_val)``
        (:func:`clipcache.calibration.fit_temperature`) before any method; without
        validation data the logits are used as they are.
    norm_order : int, default=4
        p of MaNo.
    threshold : float, default=5.0
        delta of MaNo's softmax-or-Taylor choice.

    Returns
    -------
    float
        The estimated accuracy (ac, doc, atc) or score (nuclear, mano), in [0, 1]
        except doc, which can leave it.

    Raises
    ------
    InvalidParameterError
        Unknown method, doc or atc without validation data, bad norm order or threshold.
    InvalidFeaturesError
        Empty or non-finite features, or validation labels the classifier lacks.
    """
    from clipcache.classifiers._validation import encode_validation

    if method not in METHODS:
        raise InvalidParameterError(f"method={method!r} is not one of {', '.join(METHODS)}", param="method")
    if not isinstance(norm_order, int | np.integer) or norm_order < 1:
        raise InvalidParameterError(f"norm_order={norm_order!r} must be a positive integer", param="norm_order")
    if not isinstance(threshold, int | float) or not np.isfinite(threshold):
        raise InvalidParameterError(f"threshold={threshold!r} must be a finite number", param="threshold")
    have_val = X_val is not None and y_val is not None
    if method in _NEEDS_VALIDATION and not have_val:
        raise InvalidParameterError(
            f"method {method!r} needs labelled validation data; pass X_val and y_val", param="X_val"
        )
    X = check_features(X, "X")
    temperature, val = 1.0, None
    if have_val:
        X_val = check_features(X_val, "X_val")
        columns = encode_validation(np.asarray(classifier.classes_), y_val)
        val_logits = np.asarray(classifier.logits(X_val), dtype=np.float64)
        if calibrate:
            temperature = fit_temperature(val_logits, columns)
        val = (val_logits / temperature, columns)
    elif calibrate:
        logger.info("estimate_accuracy: no validation data; the logits are not calibrated")
    logits = np.asarray(classifier.logits(X), dtype=np.float64) / temperature
    if method == "mano":
        return mano_score(logits, norm_order=int(norm_order), threshold=float(threshold))
    proba = scipy.special.softmax(logits, axis=1)
    if method == "ac":
        return average_confidence(proba)
    if method == "nuclear":
        return nuclear_norm_score(proba)
    val_proba = scipy.special.softmax(val[0], axis=1)
    val_correct = val_proba.argmax(axis=1) == val[1]
    if method == "doc":
        return float(np.mean(val_correct) - (average_confidence(val_proba) - average_confidence(proba)))
    score = method.split("-")[1]
    t = atc_threshold(_atc_scores(val_proba, score), val_correct)
    return float(np.mean(_atc_scores(proba, score) >= t))


def _model_protocol(model_path, metadata: dict):
    """The protocol a saved model reads its features with (feature set and, for fusion, the auxiliary one)."""
    from clipcache.evaluation.protocol import Protocol, model_feature_sets

    feature_set, aux = model_feature_sets(metadata)
    if feature_set is None:
        raise ModelFileError(f"{model_path}: the model's metadata names no feature set; refit it with fit_from_store")
    return Protocol(feature_set=feature_set, aux_feature_set=aux, test_split=None)


def _model_features(store, split: str, method: str, protocol, param: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``split`` as the model reads them (``[feature set | aux]`` for fusion) and the labels."""
    from clipcache.evaluation.protocol import read_features

    for name in (protocol.feature_set, protocol.aux_feature_set) if method == "fusion" else (protocol.feature_set,):
        check_split(store, split, name, param)
    return read_features(store, split, method, protocol), store.labels(split)


def estimate_store(store_path, model_path, splits, *, methods=None, val_split: str | None = "auto") -> dict:
    """Estimate a saved model's accuracy on splits of a store, beside the true accuracy where labels exist.

    Parameters
    ----------
    store_path : str or PathLike
        A feature store with the model's classes and feature sets.
    model_path : str or PathLike
        A model written by ``clipcache fit`` / :func:`clipcache.classifiers.save_model`.
    splits : sequence of str
        The splits to estimate.
    methods : sequence of str, optional
        Keys of :data:`METHODS`; all of them when there is validation data, otherwise
        ``ac``, ``nuclear`` and ``mano``.
    val_split : str or None, default="auto"
        Labelled validation split of ``store_path``; ``"auto"`` is the model's own
        validation split when it was a split of the store (not carved from train).

    Returns
    -------
    dict
        ``{"store", "model", "val_split", "methods", "splits": [{"split", "n", "accuracy"
        (None without labels), "estimates": {method: float}}], "summary": {method: {"r2",
        "spearman", "mae", "n_splits"}}}``; the summary covers the splits with labels
        (R² of a linear fit and Spearman rho need at least 3).
    """
    from clipcache.classifiers import load_model
    from clipcache.evaluation.protocol import check_model_matches
    from clipcache.feature_store import FeatureStore

    splits = list(splits)
    if not splits:
        raise InvalidParameterError("splits is empty; name at least one split to estimate", param="splits")
    if methods is not None:
        methods = list(methods)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise InvalidParameterError(
                f"method {bad[0] if bad else ''!r} is not one of {', '.join(METHODS)}", param="methods"
            )
    estimator, metadata = load_model(model_path)
    method = metadata.get("method", "")
    protocol = _model_protocol(model_path, metadata)
    with FeatureStore(store_path, "r") as store:
        check_model_matches(store, metadata)
        if val_split == "auto":
            val = metadata.get("val", {})
            val_split = val.get("split") if not val.get("carved", True) and val.get("split") in store.splits else None
        if methods is None:
            methods = list(METHODS if val_split is not None else ("ac", "nuclear", "mano"))
        needs = [m for m in methods if m in _NEEDS_VALIDATION]
        if needs and val_split is None:
            raise InvalidParameterError(
                f"method {needs[0]!r} needs a labelled validation split; give val_split", param="val_split"
            )
        X_val = y_val = None
        if val_split is not None:
            X_val, y_val = _model_features(store, val_split, method, protocol, "val_split")
            keep = y_val >= 0
            X_val, y_val = X_val[keep], y_val[keep]
        rows = []
        for split in splits:
            X, y = _model_features(store, split, method, protocol, "splits")
            labelled = y >= 0
            accuracy = None
            if labelled.any():
                accuracy = float(np.mean(np.asarray(estimator.predict(X[labelled])) == y[labelled]))
            estimates = {m: estimate_accuracy(estimator, X, m, X_val, y_val) for m in methods}
            rows.append({"split": split, "n": int(len(X)), "accuracy": accuracy, "estimates": estimates})
    return {
        "store": str(store_path), "model": str(model_path), "val_split": val_split, "methods": methods,
        "splits": rows, "summary": _summary(rows, methods),
    }


def _summary(rows: list, methods: list) -> dict:
    known = [r for r in rows if r["accuracy"] is not None]
    truth = np.array([r["accuracy"] for r in known])
    out = {}
    for m in methods:
        est = np.array([r["estimates"][m] for r in known])
        enough = len(known) >= 3
        out[m] = {
            "n_splits": len(known),
            "r2": r2_linear_fit(est, truth) if enough else None,
            "spearman": float(scipy.stats.spearmanr(est, truth)[0]) if enough else None,
            "mae": float(np.mean(np.abs(est - truth))) if len(known) else None,
        }
    return out

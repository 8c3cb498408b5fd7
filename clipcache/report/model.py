"""The one model a report shows in detail: a saved model, or the best run of an evaluation refitted.

A refit goes through the protocol's own functions (:func:`resolve_protocol`,
:func:`split_rows`, :func:`sample_few_shot`, :func:`build_estimator`,
:func:`fit_method`) with the run's recorded method, shots and seed, so it draws
the same support set and chooses the same hyper-parameters as the evaluation
did; the report prints the recorded metrics beside the recomputed ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from clipcache.classifiers import load_model
from clipcache.errors import ClipCacheError, InvalidParameterError, ModelFileError, ReportInputError
from clipcache.evaluation import ProtocolOptions, resolve_protocol, sample_few_shot
from clipcache.evaluation.options import TRANSDUCTIVE_METHOD
from clipcache.evaluation.protocol import (
    Protocol,
    build_estimator,
    center_parameter,
    check_model_matches,
    fit_method,
    hyperparameters,
    model_feature_sets,
    read_features,
    split_rows,
)
from clipcache.ops import l2_normalize
from clipcache.retrieval.query import find_ids

__all__ = ["ModelDetail", "best_run", "detail_from_model", "nearest_rows", "refit_run"]

logger = logging.getLogger(__name__)

_NEIGHBOUR_BLOCK = 8192  # candidate rows compared per block


@dataclass
class ModelDetail:
    """One fitted model's predictions on a labelled test split.

    Attributes
    ----------
    method : str
    shots, seed : int or None
        None when a saved model does not record them.
    origin : str
        Where the model comes from, in words.
    feature_set, train_split, test_split : str
    classes : list of str
    test_rows : ndarray of shape (n,), int64
        Labelled rows of ``test_split``, ascending.
    y : ndarray of shape (n,), int64
        Their labels.
    proba : ndarray of shape (n, C), float32
        Predicted probabilities, column j is class j.
    support_rows : ndarray of shape (m,), int64
        Rows of ``train_split`` the model was fitted on (every view), ascending; empty when unknown.
    hyperparameters : dict
    recorded : dict or None
        The evaluation's metrics of this run (refits only).
    notes : list of str
    """

    method: str
    shots: int | None
    seed: int | None
    origin: str
    feature_set: str
    train_split: str
    test_split: str
    classes: list
    test_rows: np.ndarray
    y: np.ndarray
    proba: np.ndarray
    support_rows: np.ndarray
    hyperparameters: dict = field(default_factory=dict)
    recorded: dict | None = None
    notes: list = field(default_factory=list)

    @property
    def pred(self) -> np.ndarray:
        """Predicted class of each test row, shape (n,), int64."""
        return self.proba.argmax(axis=1).astype(np.int64)

    @property
    def confidence(self) -> np.ndarray:
        """Highest probability of each test row, shape (n,), float32."""
        return self.proba.max(axis=1)

    @property
    def title(self) -> str:
        """``"gda, 16-shot, seed 2"``, with what is known."""
        parts = [self.method]
        if self.shots is not None:
            parts.append("every training row" if self.shots == 0 else f"{self.shots}-shot")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return ", ".join(parts)


def _full_proba(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` of X spread over all C columns (a class the model never saw gets 0)."""
    proba = np.zeros((len(X), n_classes), dtype=np.float32)
    proba[:, np.asarray(estimator.classes_, dtype=np.int64)] = estimator.predict_proba(X)
    return proba


def best_run(evaluation: dict, method: str | None = None, shots: int | None = None) -> dict:
    """The run to show: of the (method, shots) with the best mean top-1, the seed with the best top-1.

    Parameters
    ----------
    evaluation : dict
        An evaluation report (:meth:`EvaluationReport.to_dict`).
    method, shots : optional
        Restrict the choice to this method or number of shots.

    Raises
    ------
    InvalidParameterError
        When no run has the given method and shots.
    """
    runs = [r for r in evaluation.get("runs", [])
            if (method is None or r.get("method") == method) and (shots is None or r.get("shots") == shots)]
    if not runs:
        what = ", ".join(f"{k}={v!r}" for k, v in (("method", method), ("shots", shots)) if v is not None)
        raise InvalidParameterError(f"the evaluation has no run with {what or 'any method'}; choose one it has",
                                    param="method" if method is not None else "shots")
    groups: dict = {}
    for run in runs:
        groups.setdefault((run["method"], run["shots"]), []).append(run)
    key = max(groups, key=lambda k: float(np.mean([r["top1"] for r in groups[k]])))
    return max(groups[key], key=lambda r: r["top1"])


def _val_per_class(store, options, config: dict) -> int:
    """The ``val_per_class`` that carves as many validation rows as the evaluation recorded.

    The carved count grows with ``val_per_class`` until every class is capped at
    half its rows; the smallest value that reaches the recorded count carves the
    same rows as any larger one that does.
    """

    if config.get("val_per_class"):
        return int(config["val_per_class"])
    want = int((config.get("val") or {}).get("n", 0))
    value = max(1, want // max(1, len(config.get("classes") or store.classes)))
    carved = -1
    while True:
        rows = split_rows(store, resolve_protocol(store, ["ncm"], options, val_per_class=value))
        if len(rows.val_rows) >= want or len(rows.val_rows) == carved:
            return value
        carved, value = len(rows.val_rows), value + 1


def _recorded_metrics(run: dict) -> dict:
    """The run's metrics as the refitted (calibrated) model reports them: its ECE is the calibrated one."""
    recorded = {k: v for k, v in run.items() if k != "hyperparameters"}
    if "ece_calibrated" in recorded:
        recorded["ece"] = recorded["ece_calibrated"]
    return recorded


def refit_run(store, evaluation: dict, run: dict) -> ModelDetail:
    """Refit one run of an evaluation on ``store`` and predict its test split.

    Parameters
    ----------
    store : FeatureStore
        The store the evaluation ran on (its classes must match).
    evaluation : dict
        :meth:`EvaluationReport.to_dict`.
    run : dict
        One of ``evaluation["runs"]`` (:func:`best_run`).

    Raises
    ------
    ReportInputError
        When the store's classes differ from the evaluation's, or the run cannot be refitted.
    """

    config = evaluation.get("config", {})
    classes = list(store.classes)
    if config.get("classes") is not None and list(config["classes"]) != classes:
        raise ReportInputError(f"{store.path}: its classes differ from the evaluation's; give the store it ran on")
    method, shots, seed = run["method"], int(run["shots"]), int(run["seed"])
    val = config.get("val") or {}
    try:
        options = ProtocolOptions(
            feature_set=config.get("feature_set"), aux_feature_set=config.get("aux_feature_set"),
            text=config.get("text"), base=config.get("base") or "auto", train_split=config.get("train_split", "train"),
            val_split=None if val.get("carved", True) else val.get("split"), test_split=config.get("test_split", "test"),
            center=config.get("center") or "none", pool_split=config.get("pool_split"),
        )
        if options.center == "transductive" or method == TRANSDUCTIVE_METHOD:
            raise ReportInputError("a transductive run is fitted with its test features; show a saved model instead",
                                   param="evaluation")
        carve = {"val_per_class": _val_per_class(store, options, config)} if val.get("carved", True) else {}
        protocol = resolve_protocol(store, [method], options, **carve)
        rows = split_rows(store, protocol)
        train = protocol.train_split
        labels = store.labels(train)
        sample = sample_few_shot(labels, shots, seed, len(classes), rows.train_candidates, classes)
        support = rows.expand(sample.rows)
        X_val = read_features(store, rows.val_split, method, protocol, rows.val_rows)
        y_val = store.labels(rows.val_split, rows.val_rows)
        X = read_features(store, train, method, protocol, support)
        estimator = build_estimator(method, protocol, store, center=center_parameter(store, protocol, method))
        fitted = fit_method(estimator, method, X, labels[support], X_val, y_val)
        fitted.calibrate(X_val, y_val)  # as the evaluation scored it: predict_proba is calibrated
        test_rows = np.flatnonzero(store.labels(protocol.test_split) >= 0).astype(np.int64)
        proba = _full_proba(fitted, read_features(store, protocol.test_split, method, protocol, test_rows), len(classes))
    except (ClipCacheError, KeyError, TypeError) as exc:
        raise ReportInputError(
            f"cannot refit the evaluation's run {method} {shots}-shot seed {seed} on {store.path} ({exc}); "
            "give a saved model instead"
        ) from None
    notes = []
    recorded = next((s for s in evaluation.get("supports", []) if s.get("shots") == shots and s.get("seed") == seed), None)
    if recorded and "ids" in recorded and list(recorded["ids"]) != [str(i) for i in store.ids(train, sample.rows)]:
        notes.append("the refitted support set differs from the one the evaluation recorded (was the store rewritten?)")
    return ModelDetail(
        method=method, shots=shots, seed=seed, origin="the evaluation's best run, refitted with its recorded seed",
        feature_set=protocol.feature_set, train_split=train, test_split=protocol.test_split, classes=classes,
        test_rows=test_rows, y=store.labels(protocol.test_split, test_rows), proba=proba, support_rows=support,
        hyperparameters=hyperparameters(fitted), recorded=_recorded_metrics(run),
        notes=notes,
    )


def detail_from_model(store, model_path, test_split: str = "test") -> ModelDetail:
    """Predict the labelled rows of ``test_split`` with a model saved by ``clipcache fit``.

    Raises
    ------
    ModelFileError
        When the file is not a readable model or names no feature set.
    StoreMismatchError
        When the store lacks the model's classes or feature sets.
    """

    estimator, metadata = load_model(model_path)
    method = metadata.get("method", type(estimator).__name__)
    feature_set, aux = model_feature_sets(metadata)
    if feature_set is None:
        raise ModelFileError(f"{model_path}: the model's metadata names no feature set; refit it with fit_from_store")
    classes = list(store.classes)
    check_model_matches(store, metadata, classes)
    if test_split not in store.splits:
        raise InvalidParameterError(f"{store.path}: no split {test_split!r} to show the model on", param="test_split")
    train = metadata.get("train_split", "train")
    protocol = Protocol(feature_set=feature_set, aux_feature_set=aux, text=metadata.get("text"),
                        base=metadata.get("base", "ncm"), train_split=train, test_split=None, classes=classes)
    test_rows = np.flatnonzero(store.labels(test_split) >= 0).astype(np.int64)
    proba = _full_proba(estimator, read_features(store, test_split, method, protocol, test_rows), len(classes))
    support = metadata.get("support") or {}
    notes, support_rows = [], np.zeros(0, dtype=np.int64)
    if support.get("ids") and train in store.splits:
        found = find_ids(store, train, support["ids"])
        if (found < 0).any():
            notes.append(f"{int((found < 0).sum())} support ids of the model are not in split {train!r}")
        support_rows = np.sort(found[found >= 0])
    else:
        notes.append("the model records no support ids, so no nearest support images can be shown")
    return ModelDetail(
        method=method, shots=support.get("shots"), seed=support.get("seed"), origin=f"the saved model {model_path}",
        feature_set=feature_set, train_split=train, test_split=test_split, classes=classes, test_rows=test_rows,
        y=store.labels(test_split, test_rows), proba=proba, support_rows=support_rows,
        hyperparameters=dict(metadata.get("hyperparameters") or {}), notes=notes,
    )


def nearest_rows(store, split: str, feature_set: str, candidates: np.ndarray, queries: np.ndarray, k: int):
    """The ``k`` candidate rows of ``split`` most cosine-similar to each query, block by block.

    Parameters
    ----------
    store : FeatureStore
    split, feature_set : str
    candidates : ndarray of shape (m,), int64
        Rows of ``split`` to search, ascending.
    queries : ndarray of shape (q, d), float32
    k : int

    Returns
    -------
    scores : ndarray of shape (q, min(k, m)), float32
        Cosine similarities, best first.
    rows : ndarray of shape (q, min(k, m)), int64
        Rows of ``split``.
    """
    k = min(int(k), len(candidates))
    q = l2_normalize(np.asarray(queries, dtype=np.float32))
    best_s = np.full((len(q), 0), -math.inf, dtype=np.float32)
    best_r = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(candidates), _NEIGHBOUR_BLOCK):
        rows = candidates[start:start + _NEIGHBOUR_BLOCK]
        sims = q @ l2_normalize(store.features(split, feature_set, rows)).T
        best_s = np.hstack([best_s, sims.astype(np.float32)])
        best_r = np.hstack([best_r, np.broadcast_to(rows, sims.shape)])
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_r = np.take_along_axis(best_r, order, axis=1)
    return best_s, best_r

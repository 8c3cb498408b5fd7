"""The few-shot protocol on a feature store: fit, predict and evaluate the methods.

Hyper-parameters are chosen on a validation split that is disjoint from test:
the store's ``val`` split when it has one, otherwise ``val_per_class`` rows per
class carved from train with the fixed seed :data:`VAL_SEED` (support sets are
then drawn from the remaining train rows). The test split is only ever used
to report.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipcache._io import atomic_output
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    TipAdapter,
    ZeroShotClassifier,
    load_model,
    save_model,
)
from clipcache.errors import StoreMismatchError
from clipcache.evaluation.metrics import all_metrics
from clipcache.evaluation.sampling import VAL_SEED, ProtocolError, carve_validation, sample_few_shot
from clipcache.feature_store import FeatureStore
from clipcache.feature_store.schema import model_identity

__all__ = [
    "METHODS",
    "Protocol",
    "resolve_protocol",
    "build_estimator",
    "fit_from_store",
    "predict_to_csv",
    "KNN_GRID",
]

logger = logging.getLogger(__name__)

METHODS = ("zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn")
BASES = ("auto", "zeroshot", "ncm")
KNN_GRID = (1, 3, 5, 10, 20)


@dataclass
class Protocol:
    """What a run reads from a store; built by :func:`resolve_protocol`.

    Attributes
    ----------
    features : str
        Feature set the methods use (the CLIP features when there is text).
    aux_features : str or None
        Auxiliary feature set for ``fusion``.
    text : str or None
        Text embeddings for the zero-shot weights.
    base : {"zeroshot", "ncm"}
        Base logits of ``gda-zs``, ``tip`` and ``fusion``.
    train_split, val_split, test_split : str or None
        ``val_split`` None means carved from train (``val_per_class`` per class).
    val_per_class : int
    classes : list of str
    """

    features: str
    aux_features: str | None
    text: str | None
    base: str
    train_split: str
    val_split: str | None
    test_split: str | None
    val_per_class: int
    classes: list = field(default_factory=list)

    def identities(self, store: FeatureStore) -> dict:
        """Provenance identity of each feature set used, by name."""
        names = [n for n in (self.features, self.aux_features) if n]
        return {n: model_identity(store.feature_sets[n].provenance, store.feature_sets[n].dim) for n in names}


def _check_split(store: FeatureStore, split: str, name: str) -> None:
    if split not in store.splits:
        raise ProtocolError(f"{store.path}: no split {split!r} (the store has: {', '.join(store.splits) or 'none'})")
    if name not in store.split_feature_sets(split):
        raise ProtocolError(f"{store.path}: split {split!r} has no feature set {name!r}; extract it first")
    if not store.is_complete(split):
        logger.warning("split %r of %s is not complete; using its %d committed rows", split, store.path, store.n_rows(split))


def resolve_protocol(
    store: FeatureStore,
    methods,
    *,
    features: str | None = None,
    aux_features: str | None = None,
    text: str | None = None,
    base: str = "auto",
    train_split: str = "train",
    val_split: str | None = None,
    test_split: str | None = "test",
    val_per_class: int = 10,
) -> Protocol:
    """Check the options against the store and fill in defaults.

    ``features`` defaults to the store's only feature set (other than
    ``aux_features``); ``text`` to its only
    text embeddings; ``base="auto"`` is zero-shot when there is text and nearest
    class mean otherwise; ``val_split`` defaults to ``"val"`` when the store has it.

    Raises
    ------
    ProtocolError
        Unknown method or split, missing feature set, missing text for zero-shot,
        ``fusion`` without ``aux_features``.
    StoreMismatchError
        Text embeddings from a different model than the image features.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ProtocolError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if base not in BASES:
        raise ProtocolError(f"base={base!r} is not one of {', '.join(BASES)}")
    sets = list(store.feature_sets)
    if features is None:
        candidates = [n for n in sets if n != aux_features]
        if len(candidates) != 1:
            raise ProtocolError(f"{store.path} has feature sets {', '.join(sets) or 'none'}; choose one with --features")
        features = candidates[0]
    for name in (features, aux_features):
        if name is not None and name not in sets:
            raise ProtocolError(f"{store.path}: no feature set {name!r} (the store has: {', '.join(sets) or 'none'})")
    if text is None and len(store.text_names) == 1:
        text = store.text_names[0]
    if text is not None and text not in store.text_names:
        raise ProtocolError(f"{store.path}: no text embeddings {text!r} (the store has: {', '.join(store.text_names) or 'none'})")
    if base == "auto":
        base = "zeroshot" if text is not None else "ncm"
    if text is None and ("zeroshot" in methods or base == "zeroshot"):
        raise ProtocolError(
            f"{store.path} has no text embeddings, which zero-shot needs; extract them with a CLIP model "
            "or use --base ncm and a method without zero-shot"
        )
    if text is not None:
        store.check_text_matches(text, features)
    if "fusion" in methods and aux_features is None:
        raise ProtocolError("method fusion needs the auxiliary backbone's features; pass --aux-features NAME")
    if val_split is None and "val" in store.splits and train_split != "val":
        val_split = "val"
    for split in (train_split, val_split, test_split):
        if split is not None:
            _check_split(store, split, features)
            if aux_features:
                _check_split(store, split, aux_features)
    if val_split is not None and val_split in (train_split, test_split):
        raise ProtocolError(f"the validation split {val_split!r} must differ from the train and test splits")
    if test_split is not None and test_split == train_split:
        raise ProtocolError(f"the test split {test_split!r} must differ from the split the support sets are drawn from")
    return Protocol(features, aux_features, text, base, train_split, val_split, test_split, val_per_class,
                    list(store.classes))


def build_estimator(method: str, protocol: Protocol, store: FeatureStore, *, n_neighbors: int = 5):
    """An unfitted estimator for ``method`` under ``protocol``."""
    def base():
        if protocol.base == "zeroshot":
            t = store.text(protocol.text)
            scale = float(t.provenance.get("logit_scale", 100.0))
            return ZeroShotClassifier(text_embeddings=t.embeddings, class_index=t.class_index, logit_scale=scale)
        return ClassMeanClassifier()

    if method == "zeroshot":
        return base() if protocol.base == "zeroshot" else _needs_text()
    if method == "ncm":
        return ClassMeanClassifier()
    if method == "gda":
        return GDAClassifier()
    if method == "gda-zs":
        return LogitEnsemble(base=base(), model=GDAClassifier())
    if method == "tip":
        return TipAdapter(base=base())
    if method == "fusion":
        aux_dim = store.feature_sets[protocol.aux_features].dim
        return LogitBiasFusion(aux_dim=aux_dim, base=base(), aux=ClassMeanClassifier())
    return KNNClassifier(n_neighbors=n_neighbors)


def _uses_text(method: str, protocol: Protocol) -> bool:
    return method == "zeroshot" or (method in ("gda-zs", "tip", "fusion") and protocol.base == "zeroshot")


def _needs_text():
    raise ProtocolError("zeroshot needs text embeddings; pass --text NAME")


def read_features(store: FeatureStore, split: str, method: str, protocol: Protocol, rows=None) -> np.ndarray:
    """Features of ``rows`` of ``split`` for ``method``: (n, d) float32, or [clip | aux] for fusion."""
    x = store.features(split, protocol.features, rows)
    if method == "fusion":
        x = np.hstack([x, store.features(split, protocol.aux_features, rows)])
    return x


@dataclass
class SplitRows:
    """Rows of the training and validation splits after carving.

    Sampling and carving work on images, not rows: in a split extracted with
    ``--augment-views N`` each image has N rows (one per view) under one id, and
    all of them go to the same side, so that no view of a validation image is
    ever in the support set and k shots means k images.
    """

    train_candidates: np.ndarray  # (m,) int64: the first row of each candidate support image
    val_split: str
    val_rows: np.ndarray
    carved: bool
    image_of_row: np.ndarray | None = None  # (n,) int64 image index of each train row; None: one row per image

    def expand(self, first_rows: np.ndarray) -> np.ndarray:
        """All rows (every view) of the images whose first rows are given, ascending."""
        if self.image_of_row is None:
            return np.asarray(first_rows, dtype=np.int64)
        chosen = np.isin(self.image_of_row, self.image_of_row[first_rows])
        return np.flatnonzero(chosen).astype(np.int64)


def split_rows(store: FeatureStore, protocol: Protocol) -> SplitRows:
    """The candidate support images and the validation rows (carved from train when needed)."""
    split = protocol.train_split
    labels = store.labels(split)
    image_of_row = None
    first = np.flatnonzero(labels >= 0)
    if store.views(split).max(initial=0) > 0:
        _, first_of_image, image_of_row = np.unique(store.ids(split), return_index=True, return_inverse=True)
        first = np.sort(first_of_image[labels[first_of_image] >= 0])
    if protocol.val_split is not None:
        val_labels = store.labels(protocol.val_split)
        return SplitRows(first, protocol.val_split, np.flatnonzero(val_labels >= 0), False, image_of_row)
    per_image = labels[first]
    val_images, train_images = carve_validation(per_image, protocol.val_per_class, len(protocol.classes), VAL_SEED)
    rows = SplitRows(first[train_images], split, np.empty(0, np.int64), True, image_of_row)
    rows.val_rows = rows.expand(first[val_images])
    logger.info("no validation split: carved %d images from %r with seed %d", len(val_images), split, VAL_SEED)
    return rows


def fit_method(estimator, method: str, X, y, X_val, y_val):
    """Fit ``estimator``; hyper-parameters (alpha, beta, power, k) are chosen on (X_val, y_val)."""
    if method in ("gda-zs", "tip", "fusion"):
        return estimator.fit(X, y, X_val, y_val)
    if method == "knn":
        best = None
        for k in KNN_GRID:
            candidate = KNNClassifier(n_neighbors=k, metric=estimator.metric, weights=estimator.weights).fit(X, y)
            score = float(np.mean(candidate.predict(X_val) == y_val))
            if best is None or score > best[0]:
                best = (score, candidate)
        return best[1]
    return estimator.fit(X, y)


def hyperparameters(estimator) -> dict:
    """The chosen hyper-parameters of a fitted estimator, JSON-serialisable."""
    out = {}
    for key in ("alpha_", "beta_", "power_", "n_neighbors_", "shrinkage_"):
        if hasattr(estimator, key):
            out[key.rstrip("_")] = float(getattr(estimator, key))
    model = getattr(estimator, "model_", None)
    if model is not None and hasattr(model, "shrinkage_"):
        out["gda_ridge"] = float(model.shrinkage_)
    return out


def fit_from_store(
    store_path: str | os.PathLike,
    method: str,
    output: str | os.PathLike,
    *,
    shots: int,
    seed: int,
    features: str | None = None,
    aux_features: str | None = None,
    text: str | None = None,
    base: str = "auto",
    train_split: str = "train",
    val_split: str | None = None,
    val_per_class: int = 10,
    chunk_rows: int | None = None,
) -> dict:
    """Fit one method on a few-shot support set of a store and save it (``clipcache fit``).

    ``shots=0`` uses every labelled row of the training split; GDA then streams
    the split chunk by chunk instead of loading it.

    Returns
    -------
    dict
        The metadata saved with the model (support ids, chosen hyper-parameters ...).
    """
    with FeatureStore(store_path, "r") as store:
        protocol = resolve_protocol(
            store, [method], features=features, aux_features=aux_features, text=text, base=base,
            train_split=train_split, val_split=val_split, test_split=None, val_per_class=val_per_class,
        )
        rows = split_rows(store, protocol)
        labels = store.labels(train_split)
        sample = sample_few_shot(labels, shots, seed, len(protocol.classes), rows.train_candidates, protocol.classes)
        support = rows.expand(sample.rows)
        estimator = build_estimator(method, protocol, store)
        if method == "gda" and shots == 0:
            estimator.fit_store(store, train_split, protocol.features, rows=support, chunk_rows=chunk_rows)
        else:
            X, y = read_features(store, train_split, method, protocol, support), labels[support]
            X_val = read_features(store, rows.val_split, method, protocol, rows.val_rows)
            y_val = store.labels(rows.val_split, rows.val_rows)
            estimator = fit_method(estimator, method, X, y, X_val, y_val)
        metadata = {
            "method": method,
            "store": str(Path(store_path).resolve()),
            "store_uuid": store.uuid,
            "classes": protocol.classes,
            "features": protocol.features,
            "aux_features": protocol.aux_features,
            "text": protocol.text if _uses_text(method, protocol) else None,
            "base": protocol.base,
            "identities": protocol.identities(store),
            "train_split": train_split,
            "val": {"split": rows.val_split, "carved": rows.carved, "n": int(len(rows.val_rows)), "seed": VAL_SEED},
            "support": sample.record(store.ids(train_split, sample.rows)),
            "hyperparameters": hyperparameters(estimator),
        }
    save_model(estimator, output, metadata)
    return metadata


def check_model_matches(store: FeatureStore, metadata: dict) -> None:
    """Raise StoreMismatchError unless the store has the model's classes and feature sets."""
    if list(store.classes) != list(metadata.get("classes", [])):
        raise StoreMismatchError(
            f"{store.path}: its class list differs from the one the model was fitted on; predict on a store "
            "extracted with the same classes"
        )
    for name, ident in metadata.get("identities", {}).items():
        if name not in store.feature_sets:
            raise StoreMismatchError(f"{store.path}: no feature set {name!r}, which the model was fitted on")
        info = store.feature_sets[name]
        if model_identity(info.provenance, info.dim) != ident:
            raise StoreMismatchError(
                f"{store.path}: feature set {name!r} comes from a different model or preprocessing than the "
                "features the model was fitted on; re-extract with the same backbone or refit on this store"
            )


def predict_to_csv(
    store_path: str | os.PathLike, model_path: str | os.PathLike, output: str | os.PathLike, *, split: str = "test",
    chunk_rows: int = 65536,
) -> int:
    """Predict every row of ``split`` with a saved model and write a CSV (``clipcache predict``).

    Columns: id, path, label (true, -1 if unlabelled), pred, pred_name, confidence.

    Returns
    -------
    int
        Rows written.
    """
    estimator, metadata = load_model(model_path)
    method = metadata.get("method", "")
    with FeatureStore(store_path, "r") as store:
        check_model_matches(store, metadata)
        protocol = Protocol(metadata["features"], metadata.get("aux_features"), metadata.get("text"),
                            metadata.get("base", "ncm"), metadata.get("train_split", "train"), None, split, 0,
                            list(store.classes))
        _check_split(store, split, protocol.features)
        n = store.n_rows(split)
        with atomic_output(output) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "path", "label", "pred", "pred_name", "confidence"])
            for start in range(0, n, chunk_rows):
                sl = slice(start, min(n, start + chunk_rows))
                proba = estimator.predict_proba(read_features(store, split, method, protocol, sl))
                pred = np.asarray(estimator.classes_)[proba.argmax(axis=1)]
                conf = proba.max(axis=1)
                for i, p, lab, path, c in zip(store.ids(split, sl), pred, store.labels(split, sl),
                                              store.paths(split, sl), conf, strict=True):
                    writer.writerow([i, path, int(lab), int(p), store.classes[int(p)], f"{c:.6f}"])
    return n


def evaluate_one(estimator, method, X, y, X_val, y_val, X_test, y_test, n_classes: int) -> tuple[dict, dict]:
    """Fit on the support set, choose hyper-parameters on validation, score on test."""
    fitted = fit_method(estimator, method, X, y, X_val, y_val)
    proba = np.zeros((len(X_test), n_classes), dtype=np.float32)
    proba[:, np.asarray(fitted.classes_, dtype=np.int64)] = fitted.predict_proba(X_test)
    return all_metrics(proba, y_test), hyperparameters(fitted)

"""The few-shot protocol on a feature store: fit, predict and evaluate the methods.

Hyper-parameters are chosen on a validation split that is disjoint from test:
the store's ``val`` split when it has one, otherwise ``val_per_class`` rows per
class carved from train with the fixed seed :data:`VAL_SEED` (support sets are
then drawn from the remaining train rows). The test split is only ever used
to report; a transductive fit reads its features, never its labels.

Every fitted method is calibrated by temperature scaling on the validation
data (``calibrate``); the metrics report the ECE before and after.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from clipcache._io import atomic_output
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    SelectByValidation,
    TipAdapter,
    TransductiveGDA,
    ZeroShotClassifier,
    load_model,
    save_model,
)
from clipcache.classifiers.base import softmax
from clipcache.classifiers.selection import default_candidates
from clipcache.classifiers.transductive import UNLABELLED
from clipcache.errors import InvalidParameterError, ModelFileError, StoreMismatchError
from clipcache.evaluation.metrics import all_metrics, expected_calibration_error
from clipcache.evaluation.options import (
    METHODS,
    ProtocolOptions,
    check_methods,
    check_shots,
    check_splits,
    protocol_options,
)
from clipcache.evaluation.sampling import VAL_SEED, ProtocolError, carve_validation, sample_few_shot
from clipcache.feature_store import FeatureStore
from clipcache.feature_store.schema import model_identity

__all__ = [
    "KNN_GRID",
    "METHODS",
    "Protocol",
    "ProtocolOptions",
    "build_estimator",
    "check_model_matches",
    "evaluate_one",
    "fit_from_store",
    "fit_method",
    "fit_transductive",
    "hyperparameters",
    "model_feature_sets",
    "pool_mean",
    "predict_to_csv",
    "read_features",
    "resolve_protocol",
    "center_parameter",
    "score",
    "split_rows",
    "SplitRows",
    "zero_shot_classifier",
]

logger = logging.getLogger(__name__)

KNN_GRID = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Protocol(ProtocolOptions):
    """:class:`ProtocolOptions` resolved against a store; built by :func:`resolve_protocol`.

    Every field of :class:`ProtocolOptions` is filled in: ``feature_set`` is set,
    ``base`` is ``"zeroshot"`` or ``"ncm"``, and ``val_split`` None means that
    validation is carved from train (``val_per_class`` rows per class).

    Attributes
    ----------
    classes : list of str
        The store's class names, by label.
    """

    classes: list = field(default_factory=list)

    @classmethod
    def from_options(cls, options: ProtocolOptions, **resolved) -> Protocol:
        """A Protocol with the fields of ``options``, replaced by ``resolved``."""
        values = {f.name: getattr(options, f.name) for f in fields(ProtocolOptions)}
        return cls(**{**values, **resolved})

    def identities(self, store: FeatureStore) -> dict:
        """Provenance identity of each feature set used, by name."""
        names = [n for n in (self.feature_set, self.aux_feature_set) if n]
        return {n: model_identity(store.feature_sets[n].provenance, store.feature_sets[n].dim) for n in names}


def _check_split(store: FeatureStore, split: str, feature_set: str, param: str) -> None:
    if split not in store.splits:
        raise ProtocolError(
            f"{store.path}: no split {split!r} (the store has: {', '.join(store.splits) or 'none'})", param=param
        )
    if feature_set not in store.split_feature_sets(split):
        raise ProtocolError(f"{store.path}: split {split!r} has no feature set {feature_set!r}; extract it first")
    if not store.is_complete(split):
        logger.warning("split %r of %s is not complete; using its %d committed rows", split, store.path, store.n_rows(split))


def resolve_protocol(
    store: FeatureStore, methods, options: ProtocolOptions | None = None, **overrides
) -> Protocol:
    """Check the options against the store and fill in the defaults that depend on it.

    ``feature_set`` defaults to the store's only feature set (other than
    ``aux_feature_set``); ``text`` to its only text embeddings; ``base="auto"``
    is zero-shot when there is text and nearest class mean otherwise;
    ``val_split`` defaults to ``"val"`` when the store has it (and it is
    neither the train nor the test split).

    Parameters
    ----------
    store : FeatureStore
    methods : sequence of str
        From :data:`METHODS`.
    options : ProtocolOptions, optional
    **overrides
        Fields of :class:`ProtocolOptions` that replace those of ``options``.

    Raises
    ------
    InvalidParameterError
        Unknown method or bad option value (before the store is read).
    ProtocolError
        A store of fewer than 2 classes, unknown split or feature set, missing
        text for zero-shot, ``fusion`` without ``aux_feature_set``.
    StoreMismatchError
        Text embeddings from a different model than the image features.
    """
    methods = check_methods(methods)
    options = protocol_options(options, **overrides)
    classes = list(store.classes)
    if len(classes) < 2:
        raise ProtocolError(
            f"{store.path}: the store has {len(classes)} class{'' if len(classes) == 1 else 'es'} "
            f"({', '.join(classes) or 'none'}); few-shot classification needs at least 2, so extract a dataset "
            "with two or more classes"
        )
    feature_set, aux, text = options.feature_set, options.aux_feature_set, options.text
    sets = list(store.feature_sets)
    if feature_set is None:
        candidates = [n for n in sets if n != aux]
        if len(candidates) != 1:
            raise ProtocolError(
                f"{store.path} has feature sets {', '.join(sets) or 'none'}; give feature_set", param="feature_set"
            )
        feature_set = candidates[0]
    for name, param in ((feature_set, "feature_set"), (aux, "aux_feature_set")):
        if name is not None and name not in sets:
            raise ProtocolError(
                f"{store.path}: no feature set {name!r} (the store has: {', '.join(sets) or 'none'})", param=param
            )
    if text is None and len(store.text_names) == 1:
        text = store.text_names[0]
    if text is not None and text not in store.text_names:
        raise ProtocolError(
            f"{store.path}: no text embeddings {text!r} (the store has: {', '.join(store.text_names) or 'none'})",
            param="text",
        )
    base = options.base
    if base == "auto":
        base = "zeroshot" if text is not None else "ncm"
    if text is None and ("zeroshot" in methods or base == "zeroshot"):
        raise ProtocolError(
            f"{store.path} has no text embeddings, which zero-shot needs; extract them with a CLIP model "
            "or use base 'ncm' and methods without zero-shot"
        )
    if text is not None:
        store.check_text_matches(text, feature_set)
    if "fusion" in methods and aux is None:
        raise ProtocolError(
            "method fusion needs the auxiliary backbone's features; give aux_feature_set", param="aux_feature_set"
        )
    train, val, test = options.train_split, options.val_split, options.test_split
    if val is None and "val" in store.splits and "val" not in (train, test):
        val = "val"
    check_splits(train, val, test)
    pool = (options.pool_split or train) if options.center == "pool" else options.pool_split
    checks = [(train, "train_split"), (val, "val_split"), (pool, "pool_split")]
    if options.test_store is None:
        checks.append((test, "test_split"))
    for split, param in checks:
        if split is not None:
            _check_split(store, split, feature_set, param)
            if aux:
                _check_split(store, split, aux, param)
    return Protocol.from_options(
        options, feature_set=feature_set, text=text, base=base, val_split=val, pool_split=pool, classes=classes
    )


def zero_shot_classifier(protocol: Protocol, store: FeatureStore, classes=None) -> ZeroShotClassifier:
    """The zero-shot classifier of ``protocol.text``; with ``classes`` (int array), of those classes only.

    The prompts of ``classes`` keep their order and are renumbered 0 .. len(classes) - 1.
    """
    t = store.text(protocol.text)
    embeddings, index = np.asarray(t.embeddings), np.asarray(t.class_index, dtype=np.int64)
    if classes is not None:
        keep = np.isin(index, classes)
        embeddings, index = embeddings[keep], np.searchsorted(np.asarray(classes), index[keep])
    scale = float(t.provenance.get("logit_scale", 100.0))
    return ZeroShotClassifier(text_embeddings=embeddings, class_index=index, logit_scale=scale)


def build_estimator(method: str, protocol: Protocol, store: FeatureStore, *, n_neighbors: int = 5, center=None,
                    text_classes=None):
    """An unfitted estimator for ``method`` under ``protocol``.

    ``center`` (None, ``"support"`` or a (d,) mean vector) is the outer
    estimator's CL2N centring; its parts see centred features. ``text_classes``
    restricts the zero-shot parts to those classes' prompts (base-to-new).
    """

    def base():
        return zero_shot() if protocol.base == "zeroshot" else ClassMeanClassifier()

    def zero_shot():
        return zero_shot_classifier(protocol, store, text_classes)

    if method not in METHODS:
        raise InvalidParameterError(f"unknown method {method!r}; choose from {', '.join(METHODS)}", param="method")
    if method == "zeroshot":
        if protocol.text is None:
            raise ProtocolError("method zeroshot needs text embeddings; give text", param="text")
        return zero_shot().set_params(center=center)
    if method == "ncm":
        return ClassMeanClassifier(center=center)
    if method == "gda":
        return GDAClassifier(center=center)
    if method == "gda-zs":
        return LogitEnsemble(base=base(), model=GDAClassifier(), center=center)
    if method == "tip":
        return TipAdapter(base=base(), center=center)
    if method == "fusion":
        aux_dim = store.feature_sets[protocol.aux_feature_set].dim
        return LogitBiasFusion(aux_dim=aux_dim, base=base(), aux=ClassMeanClassifier(), center=center)
    if method == "auto":
        candidates = default_candidates(base=base() if protocol.base == "zeroshot" else None)
        return SelectByValidation(candidates=candidates, center=center)
    return KNNClassifier(n_neighbors=n_neighbors, center=center)


def pool_mean(store: FeatureStore, protocol: Protocol, method: str = "gda", chunk_rows: int | None = None) -> np.ndarray:
    """The CL2N mean of ``protocol.pool_split``, read chunk by chunk; its labels are never read.

    Returns
    -------
    ndarray of shape (d,), float32
        The mean of every row of the pool split; for ``fusion`` the means of
        ``feature_set`` and ``aux_feature_set`` side by side, (d + d_aux,).
    """
    names = [protocol.feature_set] + ([protocol.aux_feature_set] if method == "fusion" else [])
    parts = []
    for name in names:
        total, n = np.zeros(store.feature_sets[name].dim), 0
        for chunk in store.iter_chunks(protocol.pool_split, name, chunk_rows):
            total += chunk.features.sum(axis=0, dtype=np.float64)
            n += len(chunk.features)
        if n == 0:
            raise ProtocolError(f"{store.path}: the pool split {protocol.pool_split!r} is empty", param="pool_split")
        parts.append(total / n)
    return np.concatenate(parts).astype(np.float32)


def _uses_text(method: str, protocol: Protocol) -> bool:
    return method == "zeroshot" or (method in ("gda-zs", "tip", "fusion") and protocol.base == "zeroshot")


def read_features(store: FeatureStore, split: str, method: str, protocol: Protocol, rows=None) -> np.ndarray:
    """Features of ``rows`` of ``split`` for ``method``.

    Returns
    -------
    ndarray of shape (n, d), float32
        ``feature_set``; for ``fusion`` the columns of ``feature_set`` then
        those of ``aux_feature_set``, shape (n, d + d_aux).
    """
    x = store.features(split, protocol.feature_set, rows)
    if method == "fusion":
        x = np.hstack([x, store.features(split, protocol.aux_feature_set, rows)])
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
    """Fit ``estimator``; hyper-parameters (alpha, beta, power, k, the method of ``auto``) are chosen on (X_val, y_val)."""
    if method in ("gda-zs", "tip", "fusion", "auto"):
        return estimator.fit(X, y, X_val, y_val)
    if method == "knn":
        best = None
        for k in KNN_GRID:
            candidate = KNNClassifier(**{**estimator.get_params(), "n_neighbors": k}).fit(X, y)
            score = float(np.mean(candidate.predict(X_val) == y_val))
            if best is None or score > best[0]:
                best = (score, candidate)
        return best[1]
    return estimator.fit(X, y)


def hyperparameters(estimator) -> dict:
    """The chosen hyper-parameters of a fitted estimator, JSON-serialisable.

    ``auto`` adds ``selected`` (the candidate's name) and the selected
    candidate's own hyper-parameters. The calibration temperature is not a
    hyper-parameter: runs and model metadata record it beside them.
    """
    out = {}
    for key in ("alpha_", "beta_", "power_", "n_neighbors_", "shrinkage_", "strength_"):
        if hasattr(estimator, key):
            out[key.rstrip("_")] = float(getattr(estimator, key))
    model = getattr(estimator, "model_", None)
    if model is not None and hasattr(model, "shrinkage_"):
        out["gda_ridge"] = float(model.shrinkage_)
    chosen = getattr(estimator, "best_estimator_", None)
    if chosen is not None:
        out = {"selected": str(estimator.best_name_), **hyperparameters(chosen), **out}
    return out


def fit_from_store(
    store_path: str | os.PathLike,
    method: str,
    output: str | os.PathLike,
    *,
    shots: int,
    seed: int,
    options: ProtocolOptions | None = None,
    chunk_rows: int | None = None,
    **overrides,
) -> dict:
    """Fit one method on a few-shot support set of a store and save it (``clipcache fit``).

    ``shots=0`` uses every labelled row of the training split; GDA then streams
    the split chunk by chunk instead of loading it.

    Parameters
    ----------
    store_path : path
    method : str
        One of :data:`METHODS`.
    output : path
        The model file, ``.h5``/``.hdf5`` or ``.npz`` (:func:`clipcache.classifiers.save_model`).
    shots : int
        Support samples per class; 0 for every labelled row.
    seed : int
        Seed of the support sampling.
    options : ProtocolOptions, optional
        Feature sets, text, base and splits; ``test_split`` is ignored.
    chunk_rows : int, optional
        Rows per block of the streamed GDA fit.
    **overrides
        Fields of :class:`ProtocolOptions` that replace those of ``options``.

    Returns
    -------
    dict
        The metadata saved with the model (feature sets, support ids, chosen hyper-parameters ...).
    """
    shots = check_shots([shots])[0]
    options = protocol_options(options, **{**overrides, "test_split": None})
    check_methods([method])
    if options.transductive or options.center == "transductive" or options.base_to_new or options.test_store:
        raise InvalidParameterError(
            "fit_from_store fits one inductive model; transductive, base_to_new and test_store are evaluation "
            "protocols (run_evaluation)",
            param="transductive",
        )
    with FeatureStore(store_path, "r") as store:
        protocol = resolve_protocol(store, [method], options)
        train_split = protocol.train_split
        rows = split_rows(store, protocol)
        labels = store.labels(train_split)
        sample = sample_few_shot(labels, shots, seed, len(protocol.classes), rows.train_candidates, protocol.classes)
        support = rows.expand(sample.rows)
        estimator = build_estimator(method, protocol, store, center=center_parameter(store, protocol, method))
        X_val = read_features(store, rows.val_split, method, protocol, rows.val_rows)
        y_val = store.labels(rows.val_split, rows.val_rows)
        if method == "gda" and shots == 0:
            estimator.fit_store(store, train_split, protocol.feature_set, rows=support, chunk_rows=chunk_rows)
        else:
            X, y = read_features(store, train_split, method, protocol, support), labels[support]
            estimator = fit_method(estimator, method, X, y, X_val, y_val)
        estimator.calibrate(X_val, y_val)
        metadata = {
            "method": method,
            "store": str(Path(store_path).resolve()),
            "store_uuid": store.uuid,
            "classes": protocol.classes,
            "feature_set": protocol.feature_set,
            "aux_feature_set": protocol.aux_feature_set,
            "text": protocol.text if _uses_text(method, protocol) else None,
            "base": protocol.base,
            "identities": protocol.identities(store),
            "train_split": train_split,
            "val": {"split": rows.val_split, "carved": rows.carved, "n": int(len(rows.val_rows)), "seed": VAL_SEED},
            "support": sample.record(store.ids(train_split, sample.rows)),
            "center": protocol.center,
            "pool_split": protocol.pool_split,
            "hyperparameters": hyperparameters(estimator),
            "temperature": float(estimator.temperature_),
        }
    save_model(estimator, output, metadata)
    return metadata


def center_parameter(store: FeatureStore, protocol: Protocol, method: str, test_mean: np.ndarray | None = None):
    """The estimators' ``center`` under ``protocol.center``: None, ``"support"``, or a (d,) mean vector.

    ``"pool"`` reads the pool split's mean (:func:`pool_mean`); ``"transductive"``
    uses ``test_mean``, the mean of the test features, which the caller computed.
    """
    if protocol.center == "none":
        return None
    if protocol.center == "support":
        return "support"
    if protocol.center == "pool":
        return pool_mean(store, protocol, method)
    if test_mean is None:
        raise ProtocolError("center 'transductive' needs the test features' mean", param="center")
    return test_mean


def model_feature_sets(metadata: dict) -> tuple[str | None, str | None]:
    """``(feature_set, aux_feature_set)`` of a saved model's metadata.

    Models saved by clipcache 0.1.0 record them under
    ``features`` and ``aux_features``; both spellings are read.
    """
    feature_set = metadata.get("feature_set", metadata.get("features"))
    aux = metadata.get("aux_feature_set", metadata.get("aux_features"))
    return feature_set, aux


def check_model_matches(store: FeatureStore, metadata: dict, classes: list[str] | None = None) -> None:
    """Raise StoreMismatchError unless the store has the model's classes and feature sets.

    Parameters
    ----------
    store : FeatureStore
    metadata : dict
        The metadata saved with the model.
    classes : list of str, optional
        ``store.classes``, when the caller has read it already.
    """
    classes = list(store.classes) if classes is None else list(classes)
    if classes != list(metadata.get("classes", [])):
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

    Columns: id, path, label (true, -1 if unlabelled), pred, pred_name, confidence
    (the highest probability, 6 decimals). The CSV is written through
    :func:`clipcache._io.atomic_output`.

    Parameters
    ----------
    store_path, model_path, output : path
    split : str, default="test"
    chunk_rows : int, default=65536
        Rows predicted per block.

    Returns
    -------
    int
        Rows written.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise InvalidParameterError(f"chunk_rows={chunk_rows!r} must be a positive number of rows", param="chunk_rows")
    estimator, metadata = load_model(model_path)
    method = metadata.get("method", "")
    feature_set, aux = model_feature_sets(metadata)
    if feature_set is None:
        raise ModelFileError(f"{model_path}: the model's metadata names no feature set; refit it with fit_from_store")
    with FeatureStore(store_path, "r") as store:
        classes = store.classes  # read once: the property reads the file on every access
        check_model_matches(store, metadata, classes)
        protocol = Protocol(
            feature_set=feature_set, aux_feature_set=aux, text=metadata.get("text"),
            base=metadata.get("base", "ncm"), train_split=metadata.get("train_split", "train"),
            test_split=None, classes=classes,
        )
        for name in (feature_set, aux) if method == "fusion" else (feature_set,):
            _check_split(store, split, name, "split")
        names = np.asarray(classes, dtype=object)
        model_classes = np.asarray(estimator.classes_)
        n = store.n_rows(split)
        with atomic_output(output) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "path", "label", "pred", "pred_name", "confidence"])
            for start in range(0, n, chunk_rows):
                sl = slice(start, min(n, start + chunk_rows))
                proba = estimator.predict_proba(read_features(store, split, method, protocol, sl))
                pred = model_classes[proba.argmax(axis=1)].astype(np.int64)
                conf = proba.max(axis=1)
                writer.writerows(
                    zip(store.ids(split, sl), store.paths(split, sl), store.labels(split, sl).tolist(),
                        pred.tolist(), names[pred], [f"{c:.6f}" for c in conf], strict=True)
                )
    return n


def fit_transductive(X, y, X_val, y_val, X_test, *, center=None, text=None, cache=None) -> TransductiveGDA:
    """:class:`TransductiveGDA` fitted on the support set and the test features, which it gets without labels.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    y : ndarray of shape (n,), int64
    X_val, y_val : validation features (m, d) and labels (m,)
        Choose the EM strength (the guard) and the temperatures.
    X_test : ndarray of shape (t, d), float32
        The rows to predict; this function never receives their labels.
    center : None, "support" or ndarray of shape (d,)
    text : (embeddings, class_index), optional
        Adds the zero-shot prior term.
    cache : GramCache, optional
        Shares the test rows' Gram matrix across support sets.
    """
    kwargs = {} if text is None else {"text_embeddings": text[0], "class_index": text[1]}
    est = TransductiveGDA(center=center, cache=cache, **kwargs)
    labels = np.concatenate([np.asarray(y, dtype=np.int64), np.full(len(X_test), UNLABELLED, dtype=np.int64)])
    return est.fit(np.vstack([X, X_test]), labels, X_val, y_val)


def score(fitted, X_val, y_val, X_test, y_test, n_classes: int) -> dict:
    """Metrics of a fitted estimator on test: ``all_metrics``, ``ece`` before and ``ece_calibrated`` after calibration.

    The estimator is calibrated on (X_val, y_val) first (temperature scaling);
    ``ece`` is the ECE of the uncalibrated softmax, ``ece_calibrated`` that of
    ``softmax(logits / temperature_)``. Top-1, top-5 and recall follow the logits' order, which T
    keeps; they are read from the calibrated probabilities, whose ties are not artefacts of
    float32 saturation.
    """
    fitted.calibrate(X_val, y_val)
    cols = np.asarray(fitted.classes_, dtype=np.int64)
    logits = fitted.logits(X_test)
    raw = np.zeros((len(X_test), n_classes), dtype=np.float32)
    calibrated = np.zeros_like(raw)
    raw[:, cols] = softmax(logits.copy())
    calibrated[:, cols] = softmax(logits / np.float32(fitted.temperature_))
    # Ranks come from the calibrated probabilities: the raw softmax of large logits saturates to
    # exact 0s and 1s, whose ties would decide top-5 arbitrarily. T > 0 keeps the logits' order.
    metrics = all_metrics(calibrated, y_test)
    return {**metrics, "ece": expected_calibration_error(raw, y_test), "ece_calibrated": metrics["ece"]}


def evaluate_one(estimator, method, X, y, X_val, y_val, X_test, y_test, n_classes: int) -> tuple[dict, dict]:
    """Fit on the support set, choose hyper-parameters on validation, calibrate, score on test."""
    fitted = fit_method(estimator, method, X, y, X_val, y_val)
    return score(fitted, X_val, y_val, X_test, y_test, n_classes), hyperparameters(fitted)

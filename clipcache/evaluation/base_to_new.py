"""The base-to-new protocol of CoOp/CoCoOp: fit on the base classes, score the new classes zero-shot.

The classes are split in half by label order, as CoCoOp splits its data sets:
the base classes are labels ``0 .. ceil(C/2) - 1`` and the new classes the
rest (:func:`class_split`). Support sets and validation rows are drawn from the
base classes only. Each method is fitted there and scored on the test rows of
the base classes, among the base classes; the test rows of the new classes are
scored by the zero-shot classifier among the new classes, which no support
sample informs. The report gives, per run, ``base`` and ``new`` top-1 and their
harmonic mean ``hm = 2 base new / (base + new)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from clipcache.evaluation.options import BASE_TO_NEW_METRICS, ProtocolOptions
from clipcache.evaluation.protocol import (
    build_estimator,
    center_parameter,
    fit_method,
    hyperparameters,
    read_features,
    resolve_protocol,
    split_rows,
    zero_shot_classifier,
)
from clipcache.evaluation.results import EvaluationReport
from clipcache.evaluation.sampling import ProtocolError, sample_few_shot
from clipcache.feature_store import FeatureStore

__all__ = ["class_split", "harmonic_mean", "run_base_to_new"]


def class_split(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Base classes ``0 .. ceil(C/2) - 1`` and new classes ``ceil(C/2) .. C - 1`` (label order)."""
    cut = math.ceil(n_classes / 2)
    return np.arange(cut), np.arange(cut, n_classes)


def harmonic_mean(base: float, new: float) -> float:
    """2 b n / (b + n); 0 when both are 0."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def run_base_to_new(store_path: str | os.PathLike, methods, shots, seeds, options: ProtocolOptions):
    """Run the base-to-new protocol (called by :func:`clipcache.evaluation.run_evaluation` for ``base_to_new=True``).

    Returns
    -------
    EvaluationReport
        Runs with ``base``, ``new`` and ``hm`` (top-1 in [0, 1]); ``metrics`` is
        :data:`BASE_TO_NEW_METRICS`; ``config["base_classes"]`` and ``config["new_classes"]``.

    Raises
    ------
    ProtocolError
        The store has no text embeddings (the new classes are scored zero-shot).
    """
    report = EvaluationReport(metrics=BASE_TO_NEW_METRICS)
    with FeatureStore(store_path, "r") as store:
        protocol = resolve_protocol(store, methods, options)
        if protocol.text is None:
            raise ProtocolError(
                f"{store.path} has no text embeddings; base-to-new scores the new classes zero-shot, so extract "
                "them with a CLIP model",
                param="text",
            )
        base_cls, new_cls = class_split(len(protocol.classes))
        base_protocol = dataclasses.replace(protocol, classes=[protocol.classes[i] for i in base_cls])
        rows = split_rows(store, protocol)
        labels = store.labels(protocol.train_split)
        candidates = rows.train_candidates[np.isin(labels[rows.train_candidates], base_cls)]
        val_labels = store.labels(rows.val_split, rows.val_rows)
        val_rows = rows.val_rows[np.isin(val_labels, base_cls)]
        y_val = store.labels(rows.val_split, val_rows)
        test_labels = store.labels(protocol.test_split)
        test_base = np.flatnonzero(np.isin(test_labels, base_cls))
        test_new = np.flatnonzero(np.isin(test_labels, new_cls))
        zs_new = zero_shot_classifier(protocol, store, new_cls)
        X_new = store.features(protocol.test_split, protocol.feature_set, test_new)
        new_acc = float(np.mean(zs_new.fit(X_new).predict(X_new) == np.searchsorted(new_cls, test_labels[test_new])))
        report.config = {
            "store": str(Path(store_path).resolve()), "classes": protocol.classes, "protocol": "base-to-new",
            "base_classes": base_cls.tolist(), "new_classes": new_cls.tolist(),
            "feature_set": protocol.feature_set, "text": protocol.text, "base": protocol.base,
            "center": protocol.center, "test_split": protocol.test_split,
            "n_test": int(len(test_base) + len(test_new)),
            "n_test_base": int(len(test_base)), "n_test_new": int(len(test_new)),
            "val": {"split": rows.val_split, "carved": rows.carved, "n": int(len(val_rows))},
            "methods": list(methods), "shots": list(shots), "seeds": list(seeds),
        }
        features: dict = {}
        for k in shots:
            for seed in seeds:
                sample = sample_few_shot(labels, k, seed, len(base_cls), candidates, base_protocol.classes)
                report.supports.append(sample.record(store.ids(protocol.train_split, sample.rows)))
                support = rows.expand(sample.rows)
                for method in methods:
                    key = "fusion" if method == "fusion" else "plain"
                    if key not in features:
                        features[key] = (read_features(store, rows.val_split, method, protocol, val_rows),
                                         read_features(store, protocol.test_split, method, protocol, test_base),
                                         center_parameter(store, protocol, method))
                    X_val, X_test, center = features[key]
                    X = read_features(store, protocol.train_split, method, protocol, support)
                    estimator = build_estimator(method, base_protocol, store, center=center, text_classes=base_cls)
                    fitted = fit_method(estimator, method, X, labels[support], X_val, y_val)
                    base_acc = float(np.mean(fitted.predict(X_test) == test_labels[test_base]))
                    report.runs.append({
                        "method": method, "shots": k, "seed": seed, "base": base_acc, "new": new_acc,
                        "hm": harmonic_mean(base_acc, new_acc), "hyperparameters": hyperparameters(fitted),
                    })
    return report

"""Scores behind the out-of-distribution panel, recomputed from the store.

``clipcache ood --json`` keeps the metrics of each detector, not its scores. The
histograms need the scores, so :func:`ood_panels` fits each detector again, with
the settings the JSON records (feature set, fit, in-distribution and validation
splits, OOD sets), and checks that the AUROC it gets matches the recorded one.
Nothing is re-extracted: the detectors are closed form on the stored features.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from clipcache.classifiers import GDAClassifier
from clipcache.errors import ClipCacheError
from clipcache.feature_store import FeatureStore
from clipcache.ood import LOGIT_METHODS, OODDetector, auroc

__all__ = ["ood_panels"]

logger = logging.getLogger(__name__)

_AUROC_TOLERANCE = 1e-6


def _labelled(store, split: str, feature_set: str) -> tuple[np.ndarray, np.ndarray | None]:
    X, y = store.features(split, feature_set), store.labels(split)
    keep = y >= 0
    return X[keep], (y[keep] if keep.any() else None)


def _out_features(store, label: str, feature_set: str) -> np.ndarray:
    """Features of an OOD set named as the JSON names it: ``SPLIT`` or ``OTHER_STORE:SPLIT``."""

    path, sep, split = label.rpartition(":")
    if sep and path and os.path.isfile(path):
        with FeatureStore(path, "r") as other:
            return other.features(split, feature_set)
    return store.features(label, feature_set)


def ood_panels(store, ood: dict) -> tuple[list, list[str]]:
    """Fit the detectors of an OOD report again and score its sets, for the histograms.

    Parameters
    ----------
    store : FeatureStore
        The store the OOD report was made on.
    ood : dict
        What :func:`clipcache.ood.evaluate_ood` returns (``clipcache ood --json``).

    Returns
    -------
    panels : list of (method, in_scores, [(out_label, out_scores), ...])
        Scores are float64 arrays, higher for more in-distribution.
    notes : list of str
        Detectors that could not be rescored, and AUROCs that differ from the JSON.
    """

    notes: list[str] = []
    fs, val_split = ood["feature_set"], ood.get("val_split")
    try:
        X, y = _labelled(store, ood["fit_split"], fs)
        X_in = store.features(ood["in_split"], fs)
        X_val = y_val = None
        if val_split:
            X_val, y_val = store.features(val_split, fs), store.labels(val_split)
            y_val = y_val if (y_val >= 0).all() else None
        labels = list(dict.fromkeys(r["out"] for r in ood["results"]))
        outs = [(label, _out_features(store, label, fs)) for label in labels]
    except (ClipCacheError, KeyError, OSError) as exc:
        return [], [f"the OOD scores cannot be recomputed from {store.path} ({exc}); the histograms are left out"]
    classifier = None
    recorded = {(r["method"], r["out"]): r.get("auroc") for r in ood["results"]}
    panels = []
    for method in dict.fromkeys(r["method"] for r in ood["results"]):
        options = {}
        if method == "mcm":
            names = store.text_names
            text = store.text(names[0]) if len(names) == 1 else None
            options = {"text_embeddings": text.embeddings, "class_index": text.class_index} if text else {}
        elif (method in LOGIT_METHODS or method in ("vim", "fdbd", "nnguide")) and y is not None and len(np.unique(y)) > 1:
            classifier = classifier or GDAClassifier().fit(X, y)  # one fit serves every logit method
            options = {"classifier": classifier}
        try:
            detector = OODDetector(method, **options).fit(X, y, X_val=X_val, y_val=y_val)
            s_in = np.asarray(detector.score_samples(X_in), dtype=np.float64)
            scored = [(label, np.asarray(detector.score_samples(Xo), dtype=np.float64)) for label, Xo in outs]
        except (ClipCacheError, ValueError) as exc:
            notes.append(f"{method}: cannot be rescored ({exc})")
            continue
        for label, s_out in scored:
            want = recorded.get((method, label))
            got = auroc(s_in, s_out)
            if want is not None and abs(got - want) > _AUROC_TOLERANCE:
                notes.append(f"{method} vs {label}: the rescored AUROC {got:.4f} differs from the recorded {want:.4f} "
                             "(the histogram shows the rescored scores; an ill-conditioned fit can move with the BLAS "
                             "thread count)")
        panels.append((method, s_in, scored))
    return panels, notes

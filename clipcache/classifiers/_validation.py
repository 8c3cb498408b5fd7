"""Checks shared by the ensembles: class alignment and validation labels."""

from __future__ import annotations

import numpy as np

from clipcache.errors import InvalidFeaturesError

__all__ = ["check_part_classes", "check_same_classes", "encode_validation"]


def check_same_classes(base_classes: np.ndarray, support_classes: np.ndarray, what: str) -> None:
    """Raise unless the support set has a sample of every class the base classifier knows."""
    missing = np.setdiff1d(base_classes, support_classes)
    if len(missing) or len(np.setdiff1d(support_classes, base_classes)):
        label = missing[0] if len(missing) else np.setdiff1d(support_classes, base_classes)[0]
        raise InvalidFeaturesError(
            f"{what}: the support set and the base classifier disagree on class {label!r} "
            f"({len(missing)} of {len(base_classes)} base classes have no support sample); "
            "sample at least one support example per class",
            param="y",
        )


def encode_validation(classes: np.ndarray, y_val) -> np.ndarray:
    """Column index of each validation label in ``classes``; unknown labels raise."""
    y_val = np.asarray(y_val)
    idx = np.searchsorted(classes, y_val)
    idx = np.clip(idx, 0, len(classes) - 1)
    if not (classes[idx] == y_val).all():
        raise InvalidFeaturesError(
            "y_val holds labels that the support set does not; validate on the same classes", param="y_val"
        )
    return idx.astype(np.int64)


def check_part_classes(owner: str, part, classes: np.ndarray) -> None:
    """Raise unless a fitted part's ``classes_`` are ``classes``, in the same order (its logit columns)."""
    if not np.array_equal(np.asarray(part.classes_), classes):
        raise InvalidFeaturesError(
            f"{owner}: {type(part).__name__} has classes {np.asarray(part.classes_).tolist()} but the support set "
            f"has {np.asarray(classes).tolist()}; give parts that learn their classes from y",
            param="y",
        )

"""Checks shared by the ensembles: validation data and class alignment."""

from __future__ import annotations

import numpy as np

from clipcache.classifiers.base import InvalidFeaturesError


def check_grid(values, name: str, default: np.ndarray) -> np.ndarray:
    """A 1-D float64 grid (the default when None), non-empty, finite and non-negative."""
    grid = default if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.isfinite(grid).all() or (grid < 0).any():
        raise InvalidFeaturesError(f"{name} must be a non-empty list of finite non-negative numbers")
    return grid


def check_same_classes(base_classes: np.ndarray, support_classes: np.ndarray, what: str) -> None:
    """Raise unless the support set has a sample of every class the base classifier knows."""
    missing = np.setdiff1d(base_classes, support_classes)
    if len(missing) or len(np.setdiff1d(support_classes, base_classes)):
        label = missing[0] if len(missing) else np.setdiff1d(support_classes, base_classes)[0]
        raise InvalidFeaturesError(
            f"{what}: the support set and the base classifier disagree on class {label!r} "
            f"({len(missing)} of {len(base_classes)} base classes have no support sample); "
            "sample at least one support example per class"
        )


def encode_validation(classes: np.ndarray, y_val) -> np.ndarray:
    """Column index of each validation label in ``classes``; unknown labels raise."""
    y_val = np.asarray(y_val)
    idx = np.searchsorted(classes, y_val)
    idx = np.clip(idx, 0, len(classes) - 1)
    if not (classes[idx] == y_val).all():
        raise InvalidFeaturesError("y_val holds labels that the support set does not; validate on the same classes")
    return idx.astype(np.int64)

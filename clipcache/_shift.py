"""Helpers shared by the distribution-shift modules (:mod:`clipcache.ood`, :mod:`clipcache.estimate`).

Internal: the functions are public to those modules, not part of the package API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils.validation import check_array

from clipcache.errors import InvalidFeaturesError, InvalidParameterError

if TYPE_CHECKING:
    from clipcache.feature_store import FeatureStore

__all__ = ["check_features", "check_split", "read_split", "resolve_feature_set"]


def check_features(X, what: str, min_samples: int = 1) -> np.ndarray:
    """``X`` as a float32 (n, d) array; NaN, inf, a wrong shape or fewer than ``min_samples`` rows raise.

    Parameters
    ----------
    X : array-like of shape (n, d)
    what : str
        The parameter's name, for the error message.
    min_samples : int, default=1

    Returns
    -------
    ndarray of shape (n, d), float32

    Raises
    ------
    InvalidFeaturesError
    """
    try:
        return check_array(X, dtype=np.float32, ensure_min_samples=min_samples, input_name=what)
    except ValueError as exc:
        text = str(exc)
        if "NaN" in text or "inf" in text:
            raise InvalidFeaturesError(
                f"{what} contains NaN or inf; drop or re-extract those rows before fitting or scoring"
            ) from None
        raise InvalidFeaturesError(f"{what}: {text.rstrip('.')}") from None


def resolve_feature_set(store: FeatureStore, feature_set: str | None) -> str:
    """``feature_set``, checked against the store; the store's only feature set when None."""
    sets = list(store.feature_sets)
    if feature_set is None:
        if len(sets) != 1:
            raise InvalidParameterError(
                f"{store.path} has the feature sets {', '.join(sets) or 'none'}; choose one with feature_set",
                param="feature_set",
            )
        return sets[0]
    if feature_set not in sets:
        raise InvalidParameterError(
            f"{store.path} has no feature set {feature_set!r} (it has: {', '.join(sets) or 'none'})", param="feature_set"
        )
    return feature_set


def check_split(store: FeatureStore, split: str, feature_set: str, param: str) -> None:
    """Raise InvalidParameterError (for ``param``) unless ``split`` exists and holds ``feature_set``."""
    if split not in store.splits:
        raise InvalidParameterError(
            f"{store.path} has no split {split!r} (it has: {', '.join(store.splits) or 'none'})", param=param
        )
    if feature_set not in store.split_feature_sets(split):
        raise InvalidParameterError(f"{store.path}: split {split!r} has no feature set {feature_set!r}", param=param)


def read_split(store: FeatureStore, split: str, feature_set: str, param: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, d) float32 and labels (n,) int64 (-1: unlabelled) of one split, after :func:`check_split`."""
    check_split(store, split, feature_set, param)
    return store.to_numpy(split, feature_set)

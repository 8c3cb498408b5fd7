"""Centring, as SimpleShot's CL2N: subtract a mean, then L2-normalise.

Every estimator takes ``center``:

- ``None``: features are used as given (no centring, no normalisation here);
- ``"support"``: the mean of the rows given to ``fit`` (for :class:`TransductiveGDA`,
  the labelled rows only);
- ``"transductive"`` (:class:`TransductiveGDA` only): the mean of every row given
  to ``fit``, the unlabelled rows being predicted included;
- an array of shape (d,): a mean computed elsewhere, e.g. over an unlabelled pool
  of images (:func:`clipcache.evaluation.protocol.pool_mean`).

The mean used is kept in ``center_`` (d,) float32, or None, and saved with the
model. A feature vector that concatenates several feature sets (logit-bias
fusion) is centred and normalised block by block.
"""

from __future__ import annotations

import numpy as np

from clipcache.classifiers._params import Options
from clipcache.errors import InvalidParameterError
from clipcache.ops import l2_normalize

__all__ = ["CENTER_CONSTRAINT", "apply_center", "check_center_vector", "mean_of_rows"]

#: The declared rule of every estimator's ``center`` parameter.
CENTER_CONSTRAINT = [None, Options("support"), "array-like"]


def check_center_vector(owner: str, center, d: int) -> np.ndarray:
    """``center`` as a (d,) float32 vector, or InvalidParameterError (``param="center"``)."""
    try:
        vec = np.asarray(center, dtype=np.float32)
    except (TypeError, ValueError):
        vec = None
    if vec is None or vec.shape != (d,) or not np.isfinite(vec).all():
        shape = "?" if vec is None else vec.shape
        raise InvalidParameterError(
            f"{owner} got a center of shape {shape}; center must be a finite mean vector of shape ({d},), "
            "'support' or None",
            param="center",
        )
    return vec


def mean_of_rows(X: np.ndarray) -> np.ndarray:
    """The mean row of X (n, d), accumulated in float64, as (d,) float32."""
    return X.mean(axis=0, dtype=np.float64).astype(np.float32)


def apply_center(X: np.ndarray, mean: np.ndarray | None, blocks: list[slice]) -> np.ndarray:
    """CL2N: ``normalize(x - mean)`` within each column block; X unchanged when ``mean`` is None.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    mean : ndarray of shape (d,), float32, or None
    blocks : list of slice
        Column blocks normalised separately (one per feature set).

    Returns
    -------
    ndarray of shape (n, d), float32 (a new array when centred)
    """
    if mean is None:
        return X
    out = X - mean
    for block in blocks:
        out[:, block] = l2_normalize(out[:, block])
    return out

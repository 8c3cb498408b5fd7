"""Vectorised hyper-parameter search for logit ensembles ``logits = base + alpha * delta``.

For one sample with true class t, ``argmax_c base_c + alpha delta_c == t`` holds
exactly on an interval of alpha: each rival c gives one linear inequality
``(base_t - base_c) + alpha (delta_t - delta_c) >= 0``. Computing the interval
(lo, hi) per sample costs O(C), after which the accuracy at every alpha of a
grid is a comparison, so a whole alpha grid costs about as much as one alpha.
Ties count as correct (measure zero on real-valued logits).
"""

from __future__ import annotations

import numpy as np

__all__ = ["alpha_intervals", "correct_over_alpha", "grid_argmax"]

_BLOCK = 2048


def alpha_intervals(base: np.ndarray, delta: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the alpha interval on which the prediction is correct.

    Parameters
    ----------
    base, delta : ndarray of shape (n, C), float
        Base logits and the term scaled by alpha.
    y : ndarray of shape (n,), int
        Column index of the true class.

    Returns
    -------
    lo, hi : ndarray of shape (n,), float64
        The prediction is correct iff ``lo <= alpha <= hi``; lo > hi means never.
    """
    rows = np.arange(len(y))
    dz = base[rows, y][:, None].astype(np.float64) - base
    dv = delta[rows, y][:, None].astype(np.float64) - delta
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -dz / dv
    lo = np.where(dv > 0, t, -np.inf).max(axis=1)
    hi = np.where(dv < 0, t, np.inf).min(axis=1)
    never = ((dv == 0) & (dz < 0)).any(axis=1)
    lo[never], hi[never] = np.inf, -np.inf
    return lo, hi


def correct_over_alpha(base: np.ndarray, delta: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Number of correct predictions of ``base + alpha * delta`` for each alpha.

    Parameters
    ----------
    base, delta : ndarray of shape (n, C), float
    y : ndarray of shape (n,), int
    alphas : ndarray of shape (A,), float

    Returns
    -------
    ndarray of shape (A,), int64
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    counts = np.zeros(len(alphas), dtype=np.int64)
    for start in range(0, len(y), _BLOCK):
        sl = slice(start, start + _BLOCK)
        lo, hi = alpha_intervals(base[sl], delta[sl], y[sl])
        counts += ((lo[None, :] <= alphas[:, None]) & (alphas[:, None] <= hi[None, :])).sum(axis=1)
    return counts


def grid_argmax(scores: np.ndarray) -> tuple[int, ...]:
    """Index of the best cell of a score grid; the first in C order on ties."""
    return np.unravel_index(int(np.argmax(scores)), scores.shape)

"""Few-shot support sampling and validation carving, seeded and reproducible."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from clipcache.errors import InvalidParameterError, ProtocolError

__all__ = ["ProtocolError", "FewShotSample", "sample_few_shot", "carve_validation", "VAL_SEED"]

logger = logging.getLogger(__name__)

#: Fixed seed of the validation split carved from train when a store has none.
VAL_SEED = 0


@dataclass(frozen=True)
class FewShotSample:
    """A support set: which rows of the training split, and how they were drawn.

    Attributes
    ----------
    rows : ndarray of shape (n,), int64
        Row indices into the training split, ascending.
    shots : int
        Samples per class asked for (0: every candidate row).
    seed : int
    per_class : ndarray of shape (C,), int64
        Rows drawn per class (fewer than ``shots`` where a class has fewer candidates).
    """

    rows: np.ndarray
    shots: int
    seed: int
    per_class: np.ndarray

    def record(self, ids: np.ndarray | None = None) -> dict:
        """JSON-serialisable description (with the sample ids when given)."""
        out = {"shots": self.shots, "seed": self.seed, "n": int(len(self.rows)),
               "per_class": self.per_class.tolist()}
        if ids is not None:
            out["ids"] = [str(i) for i in ids]
        return out


def sample_few_shot(
    labels: np.ndarray,
    shots: int,
    seed: int,
    n_classes: int,
    candidates: np.ndarray | None = None,
    class_names=None,
) -> FewShotSample:
    """Draw ``shots`` rows per class without replacement.

    Class c's rows are drawn by ``numpy.random.default_rng((seed, c))``, so the
    draw of one class does not depend on the others, and a larger ``shots`` with
    the same seed extends the smaller support set (nested support sets).

    Parameters
    ----------
    labels : ndarray of shape (n,), int64
        Labels of the training split (-1 unlabelled rows are never drawn).
    shots : int
        k per class; 0 takes every candidate.
    seed : int
    n_classes : int
        C; every class in ``range(C)`` must have at least one candidate.
    candidates : ndarray of int, optional
        Rows that may be drawn (e.g. train minus a carved validation set).
    class_names : sequence of str, optional
        Used in error messages.

    Returns
    -------
    FewShotSample

    Raises
    ------
    InvalidParameterError
        If ``shots`` is negative.
    ProtocolError
        If a class has no candidate row.
    """
    if shots < 0:
        raise InvalidParameterError(f"shots={shots} must be a non-negative number of samples per class", param="shots")
    labels = np.asarray(labels, dtype=np.int64)
    pool = np.arange(len(labels)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    picked, per_class = [], np.zeros(n_classes, dtype=np.int64)
    for c in range(n_classes):
        rows = pool[labels[pool] == c]
        if len(rows) == 0:
            name = f"{class_names[c]!r} (index {c})" if class_names is not None else f"index {c}"
            raise ProtocolError(
                f"class {name} has no labelled sample in the training split, so a support set "
                "cannot cover every class; add samples of it or use a split that has them"
            )
        if shots and len(rows) < shots:
            logger.warning("class %d has %d training samples, fewer than %d shots; using all", c, len(rows), shots)
        take = rows if not shots else np.random.default_rng((seed, c)).permutation(rows)[:shots]
        picked.append(take)
        per_class[c] = len(take)
    return FewShotSample(np.sort(np.concatenate(picked)), int(shots), int(seed), per_class)


def carve_validation(labels: np.ndarray, per_class: int, n_classes: int, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into a validation set and the rest, with a fixed seed.

    Parameters
    ----------
    labels : ndarray of shape (n,), int64
    per_class : int
        Validation rows per class, at most half of the class, so that at least half stays for training.
    n_classes : int
    seed : int, default=VAL_SEED

    Returns
    -------
    val_rows, train_rows : ndarray of int64, ascending and disjoint
    """
    labels = np.asarray(labels, dtype=np.int64)
    val = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        k = min(per_class, len(rows) // 2)  # at least half of each class stays for training
        val.append(np.random.default_rng((seed, c)).permutation(rows)[:k])
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_rows = np.setdiff1d(np.flatnonzero(labels >= 0), val_rows)
    return val_rows.astype(np.int64), train_rows.astype(np.int64)

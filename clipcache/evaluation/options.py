"""The protocol's names and options, checked before any store is opened.

This module imports nothing heavy (no scikit-learn, no faiss), so the command
line reads its lists from here and ``clipcache --help`` stays fast.
:func:`clipcache.evaluation.resolve_protocol` checks the options against a store
and fills in the defaults that depend on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from clipcache.errors import InvalidParameterError

__all__ = [
    "BASES",
    "METHODS",
    "METRICS",
    "ProtocolOptions",
    "check_methods",
    "check_shots",
    "check_splits",
    "protocol_options",
]

#: The methods of the protocol, as ``clipcache fit --method`` and ``evaluate --methods`` name them.
METHODS = ("zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn")
#: Base logits of ``gda-zs``, ``tip`` and ``fusion``; ``"auto"`` is zero-shot when the store has text.
BASES = ("auto", "zeroshot", "ncm")
#: The metrics of a report, in the order the JSON summary lists them.
METRICS = ("top1", "top5", "recall", "ece")


def check_methods(methods) -> list[str]:
    """``methods`` as a list, or InvalidParameterError (``param="methods"``) when one is unknown or none is given."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        what = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise InvalidParameterError(f"{what}; choose from {', '.join(METHODS)}", param="methods")
    return methods


def check_shots(shots) -> list[int]:
    """``shots`` (a sequence of samples per class; 0 means every row) as ints.

    Raises
    ------
    InvalidParameterError
        ``param="shots"``, when a value is negative or not an integer, or none is given.
    """
    values = list(shots)
    bad = [k for k in values if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0]
    if bad or not values:
        what = f"shots={bad[0]!r}" if bad else "no shots given"
        raise InvalidParameterError(f"{what}; give non-negative numbers of samples per class (0: every row)", param="shots")
    return [int(k) for k in values]


def check_splits(train_split: str, val_split: str | None, test_split: str | None) -> None:
    """Refuse a validation or test split that is also the support split (or each other).

    Raises
    ------
    InvalidParameterError
        With ``param`` naming the split at fault.
    """
    if val_split is not None and val_split in (train_split, test_split):
        raise InvalidParameterError(
            f"the validation split {val_split!r} must differ from the train and test splits", param="val_split"
        )
    if test_split is not None and test_split == train_split:
        raise InvalidParameterError(
            f"the test split {test_split!r} must differ from the split the support sets are drawn from",
            param="test_split",
        )


@dataclass(frozen=True)
class ProtocolOptions:
    """What a run reads from a store: feature sets, text, base logits and splits.

    Every value is checked when the options are made, before a store is opened.

    Attributes
    ----------
    feature_set : str, optional
        Feature set the methods use; default: the store's only feature set
        other than ``aux_feature_set``.
    aux_feature_set : str, optional
        Auxiliary feature set, used by ``fusion`` only.
    text : str, optional
        Text embeddings for the zero-shot weights; default: the store's only set.
    base : {"auto", "zeroshot", "ncm"}, default="auto"
        Base logits of ``gda-zs``, ``tip`` and ``fusion``.
    train_split : str, default="train"
        Split the support sets are drawn from.
    val_split : str, optional
        Validation split; default ``"val"`` when the store has it, otherwise
        ``val_per_class`` rows per class are carved from ``train_split``.
    test_split : str or None, default="test"
        Split that is scored; None when nothing is scored (``fit``).
    val_per_class : int, default=10
        Rows per class carved from train when there is no validation split.
    """

    feature_set: str | None = None
    aux_feature_set: str | None = None
    text: str | None = None
    base: str = "auto"
    train_split: str = "train"
    val_split: str | None = None
    test_split: str | None = "test"
    val_per_class: int = 10

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise InvalidParameterError(f"base={self.base!r} is not one of {', '.join(BASES)}", param="base")
        if isinstance(self.val_per_class, bool) or not isinstance(self.val_per_class, int) or self.val_per_class < 1:
            raise InvalidParameterError(
                f"val_per_class={self.val_per_class!r} must be a positive number of rows per class",
                param="val_per_class",
            )
        if self.aux_feature_set is not None and self.aux_feature_set == self.feature_set:
            raise InvalidParameterError(
                f"the auxiliary feature set {self.aux_feature_set!r} is the main one; give another feature set",
                param="aux_feature_set",
            )
        check_splits(self.train_split, self.val_split, self.test_split)


def protocol_options(options: ProtocolOptions | None = None, **overrides) -> ProtocolOptions:
    """``options`` (the defaults when None) with the fields in ``overrides`` replaced.

    Raises
    ------
    TypeError
        When an override is not a field of :class:`ProtocolOptions`.
    InvalidParameterError
        When a value is out of range.
    """
    options = options if options is not None else ProtocolOptions()
    return dataclasses.replace(options, **overrides) if overrides else options

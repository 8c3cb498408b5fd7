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
    "BASE_TO_NEW_METRICS",
    "CENTERS",
    "METHODS",
    "METRICS",
    "TRANSDUCTIVE_METHOD",
    "ProtocolOptions",
    "check_methods",
    "check_shots",
    "check_splits",
    "format_hyperparameters",
    "protocol_options",
]

#: The inductive methods of the protocol, as ``clipcache fit --method`` and ``evaluate --methods`` name them;
#: ``auto`` is :class:`~clipcache.classifiers.SelectByValidation` over the others.
METHODS = ("zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn", "auto")
#: The name under which a transductive evaluation reports :class:`~clipcache.classifiers.TransductiveGDA`.
TRANSDUCTIVE_METHOD = "transductive-gda"
#: Base logits of ``gda-zs``, ``tip`` and ``fusion``; ``"auto"`` is zero-shot when the store has text.
BASES = ("auto", "zeroshot", "ncm")
#: Where the CL2N mean comes from: nowhere, each support set, an unlabelled pool split, or the test features.
CENTERS = ("none", "support", "pool", "transductive")
#: The metrics of a report, in the order the JSON summary lists them; ``ece`` is before calibration,
#: ``ece_calibrated`` after temperature scaling on validation.
METRICS = ("top1", "top5", "recall", "ece", "ece_calibrated")
#: The metrics of a base-to-new report: top-1 on the base classes, on the new classes, and their harmonic mean.
BASE_TO_NEW_METRICS = ("base", "new", "hm")


def format_hyperparameters(hyperparameters: dict, sep: str = "=") -> str:
    """``"alpha=2.5, method=gda"``: numbers in ``%g``, anything else (a selected method's name) as it is."""
    items = [
        f"{k}{sep}{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}{sep}{v}"
        for k, v in hyperparameters.items()
    ]
    return ", ".join(items) or "none"


def check_methods(methods) -> list[str]:
    """``methods`` as a list, or InvalidParameterError (``param="methods"``) when one is unknown or none is given.

    :data:`TRANSDUCTIVE_METHOD` is not among them: ``transductive=True`` adds it.
    """
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
    center : {"none", "support", "pool", "transductive"}, default="none"
        CL2N centring of every method: no centring, the mean of each support
        set, the mean of ``pool_split`` (its labels are never read), or the mean
        of the test features (``transductive=True`` only).
    pool_split : str, optional
        The unlabelled pool of ``center="pool"``; default ``train_split``.
    transductive : bool, default=False
        Also report :data:`TRANSDUCTIVE_METHOD`, fitted on each support set
        together with the test features (never their labels).
    test_store : str, optional
        Score on the test split of this other store (cross-store), whose class
        list and feature-set model identities must equal the first store's.
    base_to_new : bool, default=False
        The base-to-new protocol: support sets from the base classes only, the
        new classes scored zero-shot, and their harmonic mean reported.
    """

    feature_set: str | None = None
    aux_feature_set: str | None = None
    text: str | None = None
    base: str = "auto"
    train_split: str = "train"
    val_split: str | None = None
    test_split: str | None = "test"
    val_per_class: int = 10
    center: str = "none"
    pool_split: str | None = None
    transductive: bool = False
    test_store: str | None = None
    base_to_new: bool = False

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
        if self.center not in CENTERS:
            raise InvalidParameterError(f"center={self.center!r} is not one of {', '.join(CENTERS)}", param="center")
        if self.center == "transductive" and not self.transductive:
            raise InvalidParameterError(
                "center='transductive' takes the mean of the test features, which only a transductive "
                "evaluation may read; set transductive=True or use center='pool'",
                param="center",
            )
        if self.pool_split is not None and self.pool_split in (self.val_split, self.test_split):
            raise InvalidParameterError(
                f"the pool split {self.pool_split!r} must differ from the validation and test splits",
                param="pool_split",
            )
        if self.base_to_new and (self.transductive or self.test_store is not None):
            raise InvalidParameterError(
                "base_to_new cannot be combined with transductive or test_store; run them separately",
                param="base_to_new",
            )


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

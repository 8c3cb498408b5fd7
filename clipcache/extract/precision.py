"""Which arithmetic precision each backbone computes its features in (``--amp``).

A request (``RunOptions.amp``, ``--amp``) names a precision for every backbone
(``"bf16"``), or for one feature set (``"clip=bf16"``), or both
(``"fp32,clip=bf16"``); :func:`parse_amp` turns it into a dict whose key ``"*"``
stands for every backbone. :func:`resolve_precisions` then gives each backbone
of a run its precision:

1. on a device other than cuda, fp32: autocast is not used there;
2. the precision the request names for the backbone's feature set;
3. the precision the request gives every backbone (``"*"``);
4. when resuming, the precision the store recorded for the feature set;
5. the backbone's default (:attr:`Backbone.default_precision`): bf16 for
   open_clip models whose image tower is open_clip's ViT, fp32 for the others.

The precision applied is recorded in each feature set's provenance
(``schema.PRECISION``) and is part of its identity in the store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from clipcache.errors import InvalidParameterError
from clipcache.feature_store.schema import FULL_PRECISION, PRECISIONS

if TYPE_CHECKING:
    from clipcache.extract.backbones import Backbone

__all__ = [
    "ALL_BACKBONES",
    "AUTOCAST_DEVICE",
    "OLD_FULL_PRECISION",
    "applies_on",
    "autocast",
    "check_amp_names",
    "parse_amp",
    "resolve_precisions",
]

logger = logging.getLogger(__name__)

#: The key of a parsed request that applies to every backbone.
ALL_BACKBONES = "*"
#: The device type on which reduced precisions are applied (elsewhere features are fp32).
AUTOCAST_DEVICE = "cuda"
#: The old spelling of fp32 (``amp="none"``), accepted for one release.
OLD_FULL_PRECISION = "none"

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _precision(value: str, item: str) -> str:
    value = str(value).strip().lower()
    if value == OLD_FULL_PRECISION:
        return FULL_PRECISION
    if value not in PRECISIONS:
        raise InvalidParameterError(
            f"amp {item!r}: {value!r} is not one of {', '.join(PRECISIONS)}; write PRECISION for every backbone, "
            "or FEATURE_SET=PRECISION for one, e.g. clip=bf16",
            param="amp",
        )
    return value


def _items(amp) -> list[tuple[str, str, str]]:
    """``(key, precision, as written)`` of every entry of a request."""
    if isinstance(amp, Mapping):
        return [(str(k), str(v), f"{k}={v}") for k, v in amp.items()]
    texts = [amp] if isinstance(amp, str) else list(amp)
    items = []
    for text in texts:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.rpartition("=")
            items.append((name.strip() if sep else ALL_BACKBONES, value, part))
    return items


def parse_amp(amp: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Normalise a precision request.

    Parameters
    ----------
    amp : str, mapping, sequence of str, or None
        None: every backbone takes its default. A string holds comma-separated
        entries, each a precision for every backbone (``"bf16"``) or
        ``FEATURE_SET=PRECISION`` (``"clip=bf16"``); a sequence holds such
        strings (the repeated ``--amp`` flag); a mapping maps feature-set names,
        or ``"*"`` for every backbone, to precisions. Precisions are ``fp32``,
        ``bf16`` and ``fp16``; ``none`` is the old spelling of ``fp32``.

    Returns
    -------
    dict of str to str
        Feature-set name, or ``"*"`` (:data:`ALL_BACKBONES`), to precision.

    Raises
    ------
    InvalidParameterError
        An unknown precision, an empty name, or one key given two precisions.
    """
    if amp is None:
        return {}
    parsed: dict[str, str] = {}
    written: dict[str, str] = {}
    for key, value, item in _items(amp):
        if not key:
            raise InvalidParameterError(f"amp {item!r} names no feature set; write FEATURE_SET=PRECISION, e.g. clip=bf16", param="amp")
        precision = _precision(value, item)
        if key in parsed and parsed[key] != precision:
            raise InvalidParameterError(
                f"amp gives {'every backbone' if key == ALL_BACKBONES else repr(key)} two precisions "
                f"({written[key]!r} and {item!r}); give one",
                param="amp",
            )
        parsed[key], written[key] = precision, item
    return parsed


def applies_on(device: str | torch.device) -> bool:
    """Whether reduced precisions are applied on ``device`` (its type is :data:`AUTOCAST_DEVICE`)."""
    return torch.device(device).type == AUTOCAST_DEVICE


def check_amp_names(requested: Mapping[str, str], names: Sequence[str]) -> None:
    """Raise InvalidParameterError when a parsed request names a feature set that no backbone of the run has.

    Parameters
    ----------
    requested : mapping of str to str
        The output of :func:`parse_amp`.
    names : sequence of str
        The feature-set names of the run's backbones.
    """
    unknown = [key for key in requested if key != ALL_BACKBONES and key not in names]
    if unknown:
        raise InvalidParameterError(
            f"amp names feature set {unknown[0]!r}, which no backbone of this run makes (they make "
            f"{', '.join(names)}); name one of these",
            param="amp",
        )


def resolve_precisions(
    backbones: Sequence[Backbone],
    requested: Mapping[str, str],
    device: str | torch.device,
    recorded: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The precision each backbone computes in on ``device`` (see the module docstring for the order of the rules).

    Parameters
    ----------
    backbones : sequence of Backbone
    requested : mapping of str to str
        The output of :func:`parse_amp`.
    device : str or torch.device
    recorded : mapping of str to str, optional
        The precision a resumed store recorded for each of its feature sets
        (``schema.precision_of`` of the provenance).

    Returns
    -------
    dict of str to str
        Feature-set name to the precision applied.
    """
    recorded = recorded or {}
    wanted = {b.name: requested.get(b.name, requested.get(ALL_BACKBONES)) for b in backbones}
    if not applies_on(device):
        ignored = [f"{name}={p}" for name, p in wanted.items() if p not in (None, FULL_PRECISION)]
        if ignored:
            logger.warning(
                "amp %s is not applied on %s: autocast is used on cuda devices only, so every feature set "
                "is computed and recorded in fp32", ",".join(ignored), device
            )
        return {name: FULL_PRECISION for name in wanted}
    return {b.name: wanted[b.name] or recorded.get(b.name) or b.default_precision for b in backbones}


def autocast(device: str | torch.device, precision: str):
    """The autocast context of ``precision`` on ``device``: a no-op for fp32 and off cuda."""
    if precision == FULL_PRECISION or not applies_on(device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])

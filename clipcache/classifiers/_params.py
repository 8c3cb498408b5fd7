"""Declared parameter rules for the estimators (the shape of scikit-learn's ``_parameter_constraints``).

An estimator lists, for each ``__init__`` parameter, the values it accepts::

    _parameter_constraints = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [Options("cosine", "ip")],
        "device": [None, Device()],
    }

A parameter is valid when it satisfies at least one of its constraints. A
constraint is one of:

- ``None``: the value ``None``;
- a type (``str``, ``numbers.Real`` ...): an instance of it;
- ``"boolean"``: ``bool`` or ``numpy.bool_``;
- ``"array-like"``: a list, tuple or array with at least one dimension;
- ``callable``: any callable;
- an instance of a :class:`Constraint` subclass here (:class:`Interval`,
  :class:`Options`, :class:`HasMethods`, :class:`Grid`, :class:`Device`).

:func:`validate_parameters` checks the values at the start of ``fit`` (before
any data is read) and raises :class:`~clipcache.errors.InvalidParameterError`,
whose message names the estimator, the parameter and what it accepts, and whose
``param`` is the parameter's name. scikit-learn's own ``_param_validation`` is
private and changes between releases, so clipcache keeps this small copy of the idea.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from clipcache.errors import InvalidParameterError

__all__ = [
    "Constraint",
    "Device",
    "Grid",
    "HasMethods",
    "Interval",
    "Options",
    "make_constraint",
    "validate_parameters",
]


class Constraint:
    """One rule a parameter value may satisfy; ``str()`` says what it accepts, for messages."""

    def is_satisfied_by(self, value) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class _Is(Constraint):
    """The value None."""

    def is_satisfied_by(self, value) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class _InstanceOf(Constraint):
    """An instance of a type (bool is not an instance of ``Integral`` or ``Real`` here)."""

    _NAMES = {Integral: "an int", Real: "a number", str: "a str", bool: "a bool"}

    def __init__(self, kind: type):
        self.kind = kind

    def is_satisfied_by(self, value) -> bool:
        if self.kind in (Integral, Real) and isinstance(value, bool | np.bool_):
            return False
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return self._NAMES.get(self.kind, f"an instance of {self.kind.__name__}")


class _Boolean(Constraint):
    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, bool | np.bool_)

    def __str__(self) -> str:
        return "a bool"


class _ArrayLike(Constraint):
    def is_satisfied_by(self, value) -> bool:
        if isinstance(value, list | tuple):
            return True
        return hasattr(value, "__array__") and np.ndim(value) > 0

    def __str__(self) -> str:
        return "an array-like"


class _Callable(Constraint):
    def is_satisfied_by(self, value) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return "a callable"


class Interval(Constraint):
    """A number of ``kind`` (``numbers.Integral`` or ``numbers.Real``) between two bounds.

    Parameters
    ----------
    kind : {numbers.Integral, numbers.Real}
        ``Real`` accepts ints and floats, ``Integral`` ints only; bool and NaN never pass.
    left, right : float or None
        The bounds; None is unbounded on that side.
    closed : {"left", "right", "both", "neither"}
        Which bounds belong to the interval.
    """

    def __init__(self, kind: type, left: float | None, right: float | None, *, closed: str):
        if kind not in (Integral, Real):
            raise TypeError("Interval kind must be numbers.Integral or numbers.Real")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError("Interval closed must be 'left', 'right', 'both' or 'neither'")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value) -> bool:
        if not _InstanceOf(self.kind).is_satisfied_by(value) or math.isnan(float(value)):
            return False
        left_in = self.closed in ("left", "both")
        right_in = self.closed in ("right", "both")
        if self.left is not None and (value < self.left or (value == self.left and not left_in)):
            return False
        return not (self.right is not None and (value > self.right or (value == self.right and not right_in)))

    def __str__(self) -> str:
        kind = "an int" if self.kind is Integral else "a number"
        if self.left is not None and self.right is not None:
            lb = "[" if self.closed in ("left", "both") else "("
            rb = "]" if self.closed in ("right", "both") else ")"
            return f"{kind} in {lb}{self.left}, {self.right}{rb}"
        if self.left is not None:
            return f"{kind} {'>=' if self.closed in ('left', 'both') else '>'} {self.left}"
        if self.right is not None:
            return f"{kind} {'<=' if self.closed in ('right', 'both') else '<'} {self.right}"
        return kind


class Options(Constraint):
    """One of a fixed set of strings."""

    def __init__(self, *options: str):
        self.options = tuple(options)

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def __str__(self) -> str:
        names = [repr(o) for o in self.options]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class HasMethods(Constraint):
    """An object with the named methods (e.g. an estimator with ``fit`` and ``logits``)."""

    def __init__(self, *methods: str):
        self.methods = tuple(methods)

    def is_satisfied_by(self, value) -> bool:
        return not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in self.methods)

    def __str__(self) -> str:
        return f"an estimator with {' and '.join(self.methods)} methods"


class Grid(Constraint):
    """A non-empty 1-D sequence of finite numbers >= 0 (a hyper-parameter search grid)."""

    def is_satisfied_by(self, value) -> bool:
        if not _ArrayLike().is_satisfied_by(value):
            return False
        try:
            grid = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        return grid.ndim == 1 and grid.size > 0 and bool(np.isfinite(grid).all()) and bool((grid >= 0).all())

    def __str__(self) -> str:
        return "a non-empty 1-D sequence of finite numbers >= 0"


class Device(Constraint):
    """A torch device: a name such as ``"cpu"`` or ``"cuda:1"``, or a ``torch.device`` (torch is not imported)."""

    def is_satisfied_by(self, value) -> bool:
        kind = type(value)
        return isinstance(value, str) or (kind.__module__ == "torch" and kind.__name__ == "device")

    def __str__(self) -> str:
        return "a torch device name such as 'cpu' or 'cuda'"


def make_constraint(constraint) -> Constraint:
    """The :class:`Constraint` that a declared constraint stands for."""
    if isinstance(constraint, Constraint):
        return constraint
    if constraint is None:
        return _Is()
    if constraint is callable:
        return _Callable()
    if constraint == "boolean":
        return _Boolean()
    if constraint == "array-like":
        return _ArrayLike()
    if isinstance(constraint, type):
        return _InstanceOf(constraint)
    raise TypeError(f"unknown parameter constraint {constraint!r}")


def _short_repr(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_COMPILED: dict[int, tuple[dict, tuple, dict]] = {}


def _compiled(constraints: dict) -> dict[str, list[Constraint]]:
    """``{name: [Constraint, ...]}`` of a declared constraints dict, made once per dict (an estimator class's
    ``_parameter_constraints``; a fit validates its parameters every time)."""
    key = tuple(map(id, constraints.values()))  # a rule list replaced in place is compiled again
    cached = _COMPILED.get(id(constraints))
    if cached is None or cached[0] is not constraints or cached[1] != key:
        cached = constraints, key, {name: [make_constraint(c) for c in rules] for name, rules in constraints.items()}
        _COMPILED[id(constraints)] = cached
    return cached[2]


def validate_parameters(owner: str, constraints: dict, params: dict) -> None:
    """Raise unless every parameter satisfies one of its declared constraints.

    Parameters
    ----------
    owner : str
        The estimator's name, for the message.
    constraints : dict
        ``{name: [constraint, ...]}``; it must declare every entry of ``params``.
    params : dict
        ``{name: value}``, e.g. ``estimator.get_params(deep=False)``.

    Raises
    ------
    InvalidParameterError
        The first parameter that satisfies none of its constraints (``param`` is its name).
    """
    undeclared = sorted(set(params) - set(constraints))
    if undeclared:
        raise TypeError(f"{owner} declares no constraint for parameter {undeclared[0]!r}")
    compiled = _compiled(constraints)
    for name, value in params.items():
        rules = compiled[name]
        if any(rule.is_satisfied_by(value) for rule in rules):
            continue
        allowed = [str(rule) for rule in rules]
        allowed_text = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise InvalidParameterError(
            f"{owner} got {name}={_short_repr(value)}; {name} must be {allowed_text}", param=name
        )

"""The result of an evaluation: every run, the support sets drawn, the configuration, and its JSON form."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from clipcache._io import atomic_output
from clipcache.errors import InvalidParameterError
from clipcache.evaluation.metrics import mean_ci
from clipcache.evaluation.options import METRICS

__all__ = ["EvaluationReport"]


@dataclass
class EvaluationReport:
    """Every run of an evaluation and its summary.

    Attributes
    ----------
    runs : list of dict
        One per (method, shots, seed): the metrics and the chosen hyper-parameters.
    supports : list of dict
        One per (shots, seed): the support set drawn (ids, per-class counts).
    config : dict
        Store, splits, feature sets, base, centring, validation (carved or not).
    metrics : tuple of str
        The metrics every run holds (:data:`METRICS`, or the base-to-new ones).
    predictions : dict
        ``{(method, shots, seed): ndarray (t,) of predicted classes}`` when asked for; not in the JSON.
    ood : dict
        With ``ood_splits``: the OOD detectors' ``config``, ``runs`` and ``summary``
        (:mod:`clipcache.evaluation.ood_report`, keys in docs/ood.md); empty otherwise.
    """

    runs: list = field(default_factory=list)
    supports: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    metrics: tuple = METRICS
    predictions: dict = field(default_factory=dict)
    ood: dict = field(default_factory=dict)

    def summary(self, metric: str = "top1") -> dict:
        """``{method: {shots: (mean, ci95 half-width)}}`` over seeds, for one of ``self.metrics``."""
        if metric not in self.metrics:
            raise InvalidParameterError(f"metric={metric!r} is not one of {', '.join(self.metrics)}", param="metric")
        out: dict = {}
        for run in self.runs:
            out.setdefault(run["method"], {}).setdefault(run["shots"], []).append(run[metric])
        return {m: {k: mean_ci(v) for k, v in sorted(by.items())} for m, by in out.items()}

    def to_dict(self) -> dict:
        """``config``, ``summary`` (metric -> method -> shots -> mean and ci95), ``runs`` and ``supports``."""
        summary = {
            metric: {m: {str(k): {"mean": v[0], "ci95": v[1]} for k, v in by.items()} for m, by in self.summary(metric).items()}
            for metric in self.metrics
        }
        out = {"config": self.config, "summary": summary, "runs": self.runs, "supports": self.supports}
        if self.ood:
            out["ood"] = self.ood
        return out

    def to_json(self) -> str:
        """The report as a JSON document (what ``clipcache evaluate --json`` prints)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` through :func:`clipcache._io.atomic_output`."""
        with atomic_output(path) as tmp:
            tmp.write_text(self.to_json() + "\n", encoding="utf-8")

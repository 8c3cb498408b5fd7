"""Running the protocol over methods x shots x seeds, and reporting it (table, JSON, plot)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipcache._io import atomic_output
from clipcache.errors import InvalidParameterError
from clipcache.evaluation.metrics import mean_ci
from clipcache.evaluation.options import (
    METRICS,
    ProtocolOptions,
    check_methods,
    check_shots,
    protocol_options,
)
from clipcache.evaluation.protocol import (
    build_estimator,
    evaluate_one,
    read_features,
    resolve_protocol,
    split_rows,
)
from clipcache.evaluation.sampling import VAL_SEED, sample_few_shot
from clipcache.feature_store import FeatureStore

__all__ = ["EvaluationReport", "run_evaluation", "format_table", "plot_accuracy", "METRICS"]

logger = logging.getLogger(__name__)


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
        Store, splits, feature sets, base, validation (carved or not).
    ood : dict
        With ``ood_splits``: the OOD detectors' ``config``, ``runs`` and ``summary``
        (:mod:`clipcache.evaluation.ood_report`, keys in docs/ood.md); empty otherwise.
    """

    runs: list = field(default_factory=list)
    supports: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    ood: dict = field(default_factory=dict)

    def summary(self, metric: str = "top1") -> dict:
        """``{method: {shots: (mean, ci95 half-width)}}`` over seeds, for one of :data:`METRICS`."""
        if metric not in METRICS:
            raise InvalidParameterError(f"metric={metric!r} is not one of {', '.join(METRICS)}", param="metric")
        out: dict = {}
        for run in self.runs:
            out.setdefault(run["method"], {}).setdefault(run["shots"], []).append(run[metric])
        return {m: {k: mean_ci(v) for k, v in sorted(by.items())} for m, by in out.items()}

    def to_dict(self) -> dict:
        """``config``, ``summary`` (metric -> method -> shots -> mean and ci95), ``runs`` and ``supports``."""
        summary = {
            metric: {m: {str(k): {"mean": v[0], "ci95": v[1]} for k, v in by.items()} for m, by in self.summary(metric).items()}
            for metric in METRICS
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


def run_evaluation(
    store_path: str | os.PathLike,
    methods,
    shots,
    seeds,
    options: ProtocolOptions | None = None,
    *,
    ood_splits=(),
    ood_methods=None,
    **overrides,
) -> EvaluationReport:
    """Fit every method on k-shot support sets for every seed; report test metrics.

    Support sets are drawn with :func:`sample_few_shot` (seeded per class), so
    the same (shots, seed) gives every method the same support set. Validation
    data chooses each method's hyper-parameters; test is only scored.

    Parameters
    ----------
    store_path : path
    methods : sequence of str
        From :data:`clipcache.evaluation.METHODS`.
    shots : sequence of int
        Support samples per class (0: every labelled row).
    seeds : sequence of int
    options : ProtocolOptions, optional
        Feature sets, text, base and splits; the default test split is ``"test"``.
    ood_splits : sequence of str, optional
        OOD splits of the store: OOD detectors are fitted on each support set too and
        score the test split against them (:mod:`clipcache.evaluation.ood_report`).
    ood_methods : sequence of str, optional
        Their detectors (:data:`clipcache.ood.DEFAULT_METHODS` by default).
    **overrides
        Fields of :class:`ProtocolOptions` that replace those of ``options``.

    Returns
    -------
    EvaluationReport
        ``config`` names the store, ``classes``, ``feature_set``,
        ``aux_feature_set``, ``text``, ``base``, the splits and the validation set.
    """
    methods, shots, seeds = check_methods(methods), check_shots(shots), [int(s) for s in seeds]
    options = protocol_options(options, **overrides)
    if options.test_split is None:
        raise InvalidParameterError("run_evaluation needs a test split to score; give test_split", param="test_split")
    report = EvaluationReport()
    with FeatureStore(store_path, "r") as store:
        protocol = resolve_protocol(store, methods, options)
        train_split, test_split = protocol.train_split, protocol.test_split
        rows = split_rows(store, protocol)
        labels = store.labels(train_split)
        n_classes = len(protocol.classes)
        y_val = store.labels(rows.val_split, rows.val_rows)
        test_rows = np.flatnonzero(store.labels(test_split) >= 0)
        y_test = store.labels(test_split, test_rows)
        cache: dict = {}

        def features_for(method):
            key = "fusion" if method == "fusion" else "plain"
            if key not in cache:
                cache[key] = (
                    read_features(store, rows.val_split, method, protocol, rows.val_rows),
                    read_features(store, test_split, method, protocol, test_rows),
                )
            return cache[key]

        report.config = {
            "store": str(Path(store_path).resolve()), "classes": protocol.classes,
            "feature_set": protocol.feature_set, "aux_feature_set": protocol.aux_feature_set,
            "text": protocol.text, "base": protocol.base,
            "train_split": train_split, "test_split": test_split, "n_test": int(len(test_rows)),
            "val": {"split": rows.val_split, "carved": rows.carved, "n": int(len(rows.val_rows)),
                    "seed": VAL_SEED if rows.carved else None},
            "methods": methods, "shots": shots, "seeds": seeds,
        }
        ood = None
        if ood_splits:
            from clipcache.evaluation.ood_report import OODEvaluation

            ood = OODEvaluation(store, protocol, lambda: (*features_for("ood"), y_val), ood_splits, ood_methods)
        for k in shots:
            for seed in seeds:
                sample = sample_few_shot(labels, k, seed, n_classes, rows.train_candidates, protocol.classes)
                report.supports.append(sample.record(store.ids(train_split, sample.rows)))
                support = rows.expand(sample.rows)
                y = labels[support]
                if ood is not None:
                    ood.score(store.features(train_split, protocol.feature_set, support), y, k, seed)
                for method in methods:
                    X_val, X_test = features_for(method)
                    X = read_features(store, train_split, method, protocol, support)
                    estimator = build_estimator(method, protocol, store)
                    metrics, hp = evaluate_one(estimator, method, X, y, X_val, y_val, X_test, y_test, n_classes)
                    logger.info("%s %d-shot seed %d: top-1 %.4f", method, k, seed, metrics["top1"])
                    report.runs.append({"method": method, "shots": k, "seed": seed, **metrics, "hyperparameters": hp})
        if ood is not None:
            report.ood = ood.to_dict()
    return report


def format_table(report: EvaluationReport, metric: str = "top1", percent: bool = True) -> str:
    """A method x shots text table of ``mean ± ci95`` over seeds."""
    summary = report.summary(metric)
    shots = sorted({k for by in summary.values() for k in by})
    scale = 100.0 if percent and metric != "ece" else 1.0
    head = ["method"] + [f"{k}-shot" for k in shots]
    rows = [head]
    for method, by in summary.items():
        cells = [method]
        for k in shots:
            if k in by:
                m, ci = by[k]
                cells.append(f"{m * scale:.2f} ± {ci * scale:.2f}" if scale != 1 else f"{m:.4f} ± {ci:.4f}")
            else:
                cells.append("n/a")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_accuracy(report: EvaluationReport, path: str | os.PathLike, metric: str = "top1") -> None:
    """Write a PNG of the metric against shots (log2 axis), one line per method with 95% CI bars.

    The file is written through :func:`clipcache._io.atomic_output`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, by in report.summary(metric).items():
        ks = sorted(by)
        ax.errorbar(ks, [by[k][0] for k in ks], yerr=[by[k][1] for k in ks], marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")

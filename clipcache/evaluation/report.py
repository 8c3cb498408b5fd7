"""Running the protocol over methods x shots x seeds, and reporting it (table, JSON, plot)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from clipcache._io import atomic_output
from clipcache.classifiers.transductive import GramCache
from clipcache.errors import InvalidParameterError
from clipcache.evaluation.base_to_new import run_base_to_new
from clipcache.evaluation.options import (
    METRICS,
    TRANSDUCTIVE_METHOD,
    ProtocolOptions,
    check_methods,
    check_shots,
    protocol_options,
)
from clipcache.evaluation.protocol import (
    _check_split,
    build_estimator,
    center_parameter,
    check_model_matches,
    fit_method,
    fit_transductive,
    hyperparameters,
    read_features,
    resolve_protocol,
    score,
    split_rows,
)
from clipcache.evaluation.results import EvaluationReport
from clipcache.evaluation.sampling import VAL_SEED, sample_few_shot
from clipcache.feature_store import FeatureStore

__all__ = ["EvaluationReport", "run_evaluation", "format_table", "plot_accuracy", "METRICS"]

logger = logging.getLogger(__name__)


def run_evaluation(
    store_path: str | os.PathLike,
    methods,
    shots,
    seeds,
    options: ProtocolOptions | None = None,
    *,
    keep_predictions: bool = False,
    ood_splits=(),
    ood_methods=None,
    **overrides,
) -> EvaluationReport:
    """Fit every method on k-shot support sets for every seed; report test metrics.

    Support sets are drawn with :func:`sample_few_shot` (seeded per class), so
    the same (shots, seed) gives every method the same support set. Validation
    data chooses each method's hyper-parameters and calibrates it; test is only
    scored (and, for :data:`TRANSDUCTIVE_METHOD`, its features are fitted on
    without their labels). Work that does not depend on the method or seed is
    done once: the validation, test and pool features, the CL2N means, and the
    Gram matrix of the test rows of the transductive fits.

    Parameters
    ----------
    store_path : path
    methods : sequence of str
        From :data:`clipcache.evaluation.METHODS`.
    shots : sequence of int
        Support samples per class (0: every labelled row).
    seeds : sequence of int
    options : ProtocolOptions, optional
        Feature sets, text, base, splits, centring, and the protocol
        (``transductive``, ``test_store``, ``base_to_new``).
    keep_predictions : bool, default=False
        Keep each run's test predictions (class indices) in ``report.predictions``.
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
        ``aux_feature_set``, ``text``, ``base``, the splits, the centring and the validation set.
    """
    methods, shots, seeds = check_methods(methods), check_shots(shots), [int(s) for s in seeds]
    options = protocol_options(options, **overrides)
    if options.test_split is None:
        raise InvalidParameterError("run_evaluation needs a test split to score; give test_split", param="test_split")
    if options.base_to_new:
        return run_base_to_new(store_path, methods, shots, seeds, options)
    report = EvaluationReport()
    with FeatureStore(store_path, "r") as store, _test_store(store_path, options) as test_store:
        protocol = resolve_protocol(store, methods, options)
        test_store = test_store or store
        if test_store is not store:
            check_model_matches(test_store, {"classes": protocol.classes, "identities": protocol.identities(store)})
        run = _Run(store, test_store, protocol, keep_predictions)
        report.config = run.config(store_path, methods, shots, seeds)
        all_methods = methods + ([TRANSDUCTIVE_METHOD] if protocol.transductive else [])
        ood = None
        if ood_splits:
            from clipcache.evaluation.ood_report import OODEvaluation

            ood = OODEvaluation(store, protocol, lambda: (*run.val_test("ood"), run.y_val), ood_splits, ood_methods)
        for k in shots:
            for seed in seeds:
                sample = sample_few_shot(run.labels, k, seed, run.n_classes, run.rows.train_candidates, protocol.classes)
                report.supports.append(sample.record(store.ids(protocol.train_split, sample.rows)))
                support = run.rows.expand(sample.rows)
                if ood is not None:
                    ood.score(store.features(protocol.train_split, protocol.feature_set, support), run.labels[support],
                              k, seed)
                for method in all_methods:
                    metrics, hp, pred = run.evaluate(method, support)
                    logger.info("%s %d-shot seed %d: top-1 %.4f", method, k, seed, metrics["top1"])
                    report.runs.append({"method": method, "shots": k, "seed": seed, **metrics, "hyperparameters": hp})
                    if keep_predictions:
                        report.predictions[(method, k, seed)] = pred
        if ood is not None:
            report.ood = ood.to_dict()
    return report


@contextlib.contextmanager
def _test_store(store_path, options: ProtocolOptions):
    """The other store of a cross-store run, open for reading, or None."""
    if options.test_store is None or Path(options.test_store).resolve() == Path(store_path).resolve():
        yield None
        return
    with FeatureStore(options.test_store, "r") as other:
        yield other


class _Run:
    """What one evaluation reads once and shares across seeds and methods."""

    def __init__(self, store: FeatureStore, test_store: FeatureStore, protocol, keep_predictions: bool):
        self.store, self.test_store, self.protocol = store, test_store, protocol
        self.rows = split_rows(store, protocol)
        self.labels = store.labels(protocol.train_split)
        self.n_classes = len(protocol.classes)
        self.y_val = store.labels(self.rows.val_split, self.rows.val_rows)
        for name in (protocol.feature_set, protocol.aux_feature_set):
            if name is not None:
                _check_split(test_store, protocol.test_split, name, "test_split")
        self.test_rows = np.flatnonzero(test_store.labels(protocol.test_split) >= 0)
        self.y_test = test_store.labels(protocol.test_split, self.test_rows)
        self.features: dict = {}
        self.centers: dict = {}
        self.support: tuple = (None, {})
        self.gram_cache = GramCache()
        self.keep_predictions = keep_predictions

    def config(self, store_path, methods, shots, seeds) -> dict:
        p, rows = self.protocol, self.rows
        return {
            "store": str(Path(store_path).resolve()), "classes": p.classes,
            "feature_set": p.feature_set, "aux_feature_set": p.aux_feature_set,
            "text": p.text, "base": p.base,
            "train_split": p.train_split, "test_split": p.test_split, "n_test": int(len(self.test_rows)),
            "test_store": str(Path(self.test_store.path).resolve()),
            "val": {"split": rows.val_split, "carved": rows.carved, "n": int(len(rows.val_rows)),
                    "seed": VAL_SEED if rows.carved else None},
            "center": p.center, "pool_split": p.pool_split, "transductive": p.transductive,
            "methods": methods, "shots": shots, "seeds": seeds,
        }

    @staticmethod
    def _key(method: str) -> str:
        return "fusion" if method == "fusion" else "plain"

    def val_test(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Validation and test features for ``method``, read once per feature layout."""
        key = self._key(method)
        if key not in self.features:
            p = self.protocol
            self.features[key] = (
                read_features(self.store, self.rows.val_split, method, p, self.rows.val_rows),
                read_features(self.test_store, p.test_split, method, p, self.test_rows),
            )
        return self.features[key]

    def train(self, method: str, support: np.ndarray) -> np.ndarray:
        """Support features for ``method``, read once per support set and layout."""
        rows, cache = self.support
        if rows is None or not np.array_equal(rows, support):
            rows, cache = support, {}
            self.support = (rows, cache)
        key = self._key(method)
        if key not in cache:
            cache[key] = read_features(self.store, self.protocol.train_split, method, self.protocol, support)
        return cache[key]

    def center(self, method: str):
        """The ``center`` parameter of ``method``'s estimator, computed once per layout."""
        key = self._key(method)
        if key not in self.centers:
            test_mean = None
            if self.protocol.center == "transductive":
                test_mean = self.val_test(method)[1].mean(axis=0, dtype=np.float64).astype(np.float32)
            self.centers[key] = center_parameter(self.store, self.protocol, method, test_mean)
        return self.centers[key]

    def evaluate(self, method: str, support: np.ndarray) -> tuple[dict, dict, np.ndarray | None]:
        """Metrics, hyper-parameters and (when kept) test predictions of one method on one support set."""
        X_val, X_test = self.val_test(method)
        X, y = self.train(method, support), self.labels[support]
        if method == TRANSDUCTIVE_METHOD:
            text = None
            if self.protocol.base == "zeroshot":
                t = self.store.text(self.protocol.text)
                text = (t.embeddings, t.class_index)
            fitted = fit_transductive(X, y, X_val, self.y_val, X_test, center=self.center(method), text=text,
                                      cache=self.gram_cache)
        else:
            estimator = build_estimator(method, self.protocol, self.store, center=self.center(method))
            fitted = fit_method(estimator, method, X, y, X_val, self.y_val)
        metrics = score(fitted, X_val, self.y_val, X_test, self.y_test, self.n_classes)
        pred = np.asarray(fitted.predict(X_test)) if self.keep_predictions else None
        return {**metrics, "temperature": float(fitted.temperature_)}, hyperparameters(fitted), pred


def format_table(report: EvaluationReport, metric: str = "top1", percent: bool = True) -> str:
    """A method x shots text table of ``mean ± ci95`` over seeds."""
    summary = report.summary(metric)
    shots = sorted({k for by in summary.values() for k in by})
    scale = 100.0 if percent and not metric.startswith("ece") else 1.0
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

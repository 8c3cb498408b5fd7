"""OOD detection inside the few-shot protocol: ``run_evaluation(..., ood_splits=[...])``, ``evaluate --ood``.

For every (shots, seed) support set that the classifiers are fitted on, each
detector of :mod:`clipcache.ood` is fitted on the same support features and the
protocol's validation rows (threshold of ``predict``, temperature of the logit
methods), then scores the test split (in-distribution) against each OOD split
of the store. The classifier methods (msp, energy, vim ...) score a
``GDAClassifier()`` fitted on that support set. The keys written to the report
JSON are described in docs/ood.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clipcache._shift import check_split
from clipcache.errors import InvalidParameterError
from clipcache.evaluation.metrics import mean_ci
from clipcache.ood import DEFAULT_METHODS, check_methods, score_detectors, text_options

if TYPE_CHECKING:
    from clipcache.evaluation.protocol import Protocol
    from clipcache.feature_store import FeatureStore

__all__ = ["OOD_METRICS", "OODEvaluation", "format_ood_table"]

logger = logging.getLogger(__name__)

#: The metrics recorded per run and summarised per shots.
OOD_METRICS = ("auroc", "aupr_in", "fpr95")


class OODEvaluation:
    """The OOD part of one evaluation: its splits' features, read once, and its runs.

    Parameters
    ----------
    store : FeatureStore
        Open for reading.
    protocol : Protocol
        The resolved protocol (feature set, text, test split).
    features : callable
        Returns ``(X_val, X_in, y_val)``: the protocol's validation features (m, d) float32
        (of ``protocol.feature_set``), the labelled test rows (n_in, d) float32, the
        in-distribution set, and the validation labels (m,) int. Called after the checks.
    out_splits : sequence of str
        OOD splits of the store (labels ignored).
    detectors : sequence of str, optional
        Keys of :data:`clipcache.ood.METHODS`; :data:`clipcache.ood.DEFAULT_METHODS` by default.

    Attributes
    ----------
    runs : list of dict
        ``{"detector", "out_split", "shots", "seed", "auroc", "aupr_in", "fpr95", "in_kept"}``.
    """

    def __init__(self, store: FeatureStore, protocol: Protocol, features, out_splits, detectors=None):
        self.detectors = check_methods(DEFAULT_METHODS if detectors is None else detectors, "ood_methods")
        self.out_splits = list(dict.fromkeys(out_splits))
        used = {protocol.train_split, protocol.val_split, protocol.test_split}
        for split in self.out_splits:
            check_split(store, split, protocol.feature_set, "ood_splits")
            if split in used:
                raise InvalidParameterError(
                    f"OOD split {split!r} is also a train, validation or test split; name a split of other images",
                    param="ood_splits",
                )
        self.feature_set = protocol.feature_set
        self.X_val, self.X_in, self.y_val = features()
        self.outs = [(s, store.features(s, protocol.feature_set)) for s in self.out_splits]
        self.mcm_options = text_options(store, protocol.text, protocol.feature_set) if "mcm" in self.detectors else None
        self.runs: list[dict] = []

    def score(self, X, y, shots: int, seed: int) -> None:
        """Fit the detectors on one support set ``(X (n, d) float32, y (n,) int)`` and record their runs."""
        results = score_detectors(self.detectors, X, y, self.X_val, self.y_val, self.X_in, self.outs,
                                  mcm_options=self.mcm_options)
        for r in results:
            self.runs.append({
                "detector": r["method"], "out_split": r["out"], "shots": int(shots), "seed": int(seed),
                **{m: float(r[m]) for m in (*OOD_METRICS, "in_kept")},
            })
            logger.info("OOD %s vs %s, %d-shot seed %d: AUROC %.4f", r["method"], r["out"], shots, seed, r["auroc"])

    def summary(self) -> dict:
        """``{metric: {detector: {out_split: {shots (str): {"mean", "ci95"}}}}}`` over seeds."""
        grouped: dict = {}
        for r in self.runs:
            key = (r["detector"], r["out_split"], r["shots"])
            grouped.setdefault(key, []).append(r)
        out: dict = {m: {} for m in OOD_METRICS}
        for (detector, split, shots), runs in grouped.items():
            for m in OOD_METRICS:
                mean, ci = mean_ci([r[m] for r in runs])
                out[m].setdefault(detector, {}).setdefault(split, {})[str(shots)] = {"mean": mean, "ci95": ci}
        return out

    def to_dict(self) -> dict:
        """``{"config", "runs", "summary"}``, the report's ``ood`` entry."""
        return {
            "config": {
                "feature_set": self.feature_set, "detectors": self.detectors, "out_splits": self.out_splits,
                "n_in": int(len(self.X_in)), "n_out": {s: int(len(x)) for s, x in self.outs},
                "classifier": "GDAClassifier()", "tpr": 0.95,
            },
            "runs": self.runs,
            "summary": self.summary(),
        }


def format_ood_table(ood: dict, metric: str = "auroc") -> str:
    """A detector x shots text table of ``mean ± ci95`` per OOD split, from a report's ``ood`` entry."""
    lines = []
    summary = ood["summary"][metric]
    for split in ood["config"]["out_splits"]:
        shots = sorted({int(k) for by in summary.values() for k in by.get(split, {})})
        rows = [[f"{metric} vs {split}"] + [f"{k}-shot" for k in shots]]
        for detector in ood["config"]["detectors"]:
            by = summary.get(detector, {}).get(split, {})
            rows.append([detector] + [
                f"{by[str(k)]['mean']:.4f} ± {by[str(k)]['ci95']:.4f}" if str(k) in by else "n/a" for k in shots
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        block = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        block.insert(1, "  ".join("-" * w for w in widths))
        lines.extend(block)
    return "\n".join(lines)

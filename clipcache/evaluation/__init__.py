"""The few-shot evaluation protocol: sampling, validation, metrics, reports.

- :class:`ProtocolOptions`, :data:`METHODS`, :data:`BASES`, :data:`METRICS`: what a run reads.
- :func:`sample_few_shot`, :func:`carve_validation`: seeded support and validation sets.
- :func:`resolve_protocol`, :func:`fit_from_store`, :func:`predict_to_csv`: one method on a store.
- :func:`run_evaluation`, :func:`format_table`, :func:`plot_accuracy`: methods x shots x seeds,
  also transductive (:data:`TRANSDUCTIVE_METHOD`), cross-store and base-to-new runs.
- :func:`pool_mean`, :func:`fit_transductive`, :func:`run_base_to_new`: centring, the transductive fit,
  the base-to-new protocol.
- :mod:`clipcache.evaluation.metrics`: top-k, mean per-class recall, ECE, mean ± 95% CI.

The names and options (:mod:`clipcache.evaluation.options`) are imported at
once; the rest, which needs scikit-learn and faiss, is imported on first use,
so that the command line can read the method list without paying for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from clipcache.errors import ProtocolError
from clipcache.evaluation.options import BASES, METHODS, METRICS, ProtocolOptions

if TYPE_CHECKING:
    from clipcache.evaluation.base_to_new import run_base_to_new
    from clipcache.evaluation.metrics import (
        all_metrics,
        expected_calibration_error,
        mean_ci,
        mean_per_class_recall,
        top_k_accuracy,
    )
    from clipcache.evaluation.options import BASE_TO_NEW_METRICS, CENTERS, TRANSDUCTIVE_METHOD
    from clipcache.evaluation.protocol import (
        Protocol,
        fit_from_store,
        fit_transductive,
        pool_mean,
        predict_to_csv,
        resolve_protocol,
    )
    from clipcache.evaluation.report import (
        EvaluationReport,
        format_table,
        plot_accuracy,
        run_evaluation,
    )
    from clipcache.evaluation.sampling import FewShotSample, carve_validation, sample_few_shot

_LAZY = {
    "BASE_TO_NEW_METRICS": "options",
    "CENTERS": "options",
    "TRANSDUCTIVE_METHOD": "options",
    "all_metrics": "metrics",
    "expected_calibration_error": "metrics",
    "mean_ci": "metrics",
    "mean_per_class_recall": "metrics",
    "top_k_accuracy": "metrics",
    "Protocol": "protocol",
    "fit_from_store": "protocol",
    "fit_transductive": "protocol",
    "pool_mean": "protocol",
    "run_base_to_new": "base_to_new",
    "predict_to_csv": "protocol",
    "resolve_protocol": "protocol",
    "EvaluationReport": "report",
    "format_table": "report",
    "plot_accuracy": "report",
    "run_evaluation": "report",
    "FewShotSample": "sampling",
    "carve_validation": "sampling",
    "sample_few_shot": "sampling",
}

__all__ = [
    "BASES",
    "METHODS",
    "METRICS",
    "EvaluationReport",
    "FewShotSample",
    "Protocol",
    "ProtocolError",
    "ProtocolOptions",
    "all_metrics",
    "carve_validation",
    "expected_calibration_error",
    "fit_from_store",
    "fit_transductive",
    "format_table",
    "mean_ci",
    "mean_per_class_recall",
    "plot_accuracy",
    "pool_mean",
    "predict_to_csv",
    "resolve_protocol",
    "run_base_to_new",
    "run_evaluation",
    "sample_few_shot",
    "top_k_accuracy",
    # the protocols' names, from clipcache.evaluation.options
    "BASE_TO_NEW_METRICS",
    "CENTERS",
    "TRANSDUCTIVE_METHOD",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

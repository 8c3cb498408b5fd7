"""The few-shot evaluation protocol: sampling, validation, metrics, reports.

- :func:`sample_few_shot`, :func:`carve_validation`: seeded support and validation sets.
- :func:`resolve_protocol`, :func:`fit_from_store`, :func:`predict_to_csv`: one method on a store.
- :func:`run_evaluation`, :func:`format_table`, :func:`plot_accuracy`: methods x shots x seeds.
- :mod:`clipcache.evaluation.metrics`: top-k, mean per-class recall, ECE, mean ± 95% CI.
"""

from clipcache.evaluation.metrics import (
    all_metrics,
    expected_calibration_error,
    mean_ci,
    mean_per_class_recall,
    top_k_accuracy,
)
from clipcache.evaluation.protocol import (
    METHODS,
    Protocol,
    fit_from_store,
    predict_to_csv,
    resolve_protocol,
)
from clipcache.evaluation.report import (
    EvaluationReport,
    format_table,
    plot_accuracy,
    run_evaluation,
)
from clipcache.evaluation.sampling import (
    FewShotSample,
    ProtocolError,
    carve_validation,
    sample_few_shot,
)

__all__ = [
    "METHODS",
    "EvaluationReport",
    "FewShotSample",
    "Protocol",
    "ProtocolError",
    "all_metrics",
    "carve_validation",
    "expected_calibration_error",
    "fit_from_store",
    "format_table",
    "mean_ci",
    "mean_per_class_recall",
    "plot_accuracy",
    "predict_to_csv",
    "resolve_protocol",
    "run_evaluation",
    "sample_few_shot",
    "top_k_accuracy",
]

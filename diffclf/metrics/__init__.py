"""Accuracy intervals, results records and effective robustness (plain numpy/scipy/pandas, no Lightning)."""

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.results import (
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    ResultsError,
    append_record,
    load_records,
    validate_record,
    write_results_json,
)
from diffclf.metrics.robustness import (
    DEFAULT_ID_FOR,
    LinearFit,
    effective_robustness,
    effective_robustness_interval,
    fit_linear,
    logit,
    plot_effective_robustness,
    robustness_points,
)

__all__ = [
    "DEFAULT_ID_FOR",
    "REQUIRED_FIELDS",
    "SCHEMA_VERSION",
    "LinearFit",
    "ResultsError",
    "append_record",
    "clopper_pearson",
    "effective_robustness",
    "effective_robustness_interval",
    "fit_linear",
    "load_records",
    "logit",
    "plot_effective_robustness",
    "robustness_points",
    "validate_record",
    "write_results_json",
]

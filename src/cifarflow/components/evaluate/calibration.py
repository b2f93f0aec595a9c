"""Moved to `cifarflow.calibration` (train uses it too); kept until train imports it from there."""

from cifarflow.calibration import (  # noqa: F401
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)

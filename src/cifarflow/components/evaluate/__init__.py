"""The evaluate step: metrics, calibration, the HTML report and its KFP component."""

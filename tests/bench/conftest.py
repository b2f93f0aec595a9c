"""The serving tests' exported test model, shared with the benchmark tests."""

from tests.serving.conftest import exported_model  # noqa: F401  (a session fixture)

"""The serving tests' exported test models, shared with the benchmark tests."""

from tests.serving.conftest import exported_model, favour7_model  # noqa: F401  (session fixtures)

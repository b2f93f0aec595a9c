"""Fixtures shared by the component tests (session-scoped, so each is built once)."""

from tests.components.train_data import candidate, sample_data, sample_slice, trained_model  # noqa: F401

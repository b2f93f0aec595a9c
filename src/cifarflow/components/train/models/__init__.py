"""Model architectures (pure Keras 3) and the builder that wires a trial's model."""

from cifarflow.components.train.models.build import BuiltModel, build_model

__all__ = ["BuiltModel", "build_model"]

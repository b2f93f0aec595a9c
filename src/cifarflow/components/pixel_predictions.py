"""Runs a SavedModel's `predict_pixels` signature over arrays of images.

Evaluate, and the gate when it re-scores a champion, run the exported graph,
the exact thing that is served, not the Keras object it came from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.errors import BadInputError

SIGNATURE = "predict_pixels"


@dataclasses.dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # [N, C] float32, temperature-scaled as served
    probabilities: np.ndarray  # [N, C] float32
    class_ids: np.ndarray  # [N] int64


def has_saved_model(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / "saved_model.pb").is_file()


def load_signature(model_dir: str | os.PathLike, name: str = SIGNATURE):
    """The loaded SavedModel's `name` signature (`predict_pixels` by default)."""
    if not has_saved_model(model_dir):
        raise BadInputError(
            f"{model_dir} has no saved_model.pb; pass the output folder of 'cifarflow train'"
        )
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    if name not in loaded.signatures:
        raise BadInputError(f"{model_dir}: the SavedModel has no {name!r} signature")
    fn = loaded.signatures[name]
    fn._cifarflow_owner = loaded  # keep the variables alive as long as the function
    return fn


def predict_arrays(
    model: str | os.PathLike | object, images: np.ndarray, batch_size: int = 500
) -> Predictions:
    """Predicts `images` (uint8 [N, 32, 32, 3]) in batches; N may be 0.

    Args:
        model: a SavedModel folder, or a signature from `load_signature`.
        images: the pixels.
        batch_size: images per signature call.
    """
    import tensorflow as tf

    fn: Any = load_signature(model) if isinstance(model, (str, os.PathLike)) else model
    logits, probabilities = [], []
    # The serving contract leaves empty batches to the caller: never send one.
    for start in range(0, len(images), batch_size):
        batch = tf.constant(
            np.ascontiguousarray(images[start : start + batch_size], dtype=np.uint8)
        )
        out = fn(images=batch)
        logits.append(out["logits"].numpy())
        probabilities.append(out["probabilities"].numpy())
    if not logits:
        num_classes = int(fn.structured_outputs["logits"].shape[-1])
        empty = np.zeros((0, num_classes), dtype=np.float32)
        return Predictions(empty, empty, np.zeros(0, dtype=np.int64))
    logits_all = np.concatenate(logits)
    probs_all = np.concatenate(probabilities)
    return Predictions(logits_all, probs_all, probs_all.argmax(axis=1).astype(np.int64))

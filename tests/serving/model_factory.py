"""A tiny model exported to the SavedModel contract (docs/training.md, "Signatures"), for serving tests.

Faster to build than a trained one: a deterministic linear
layer over the 32x32x3 pixels (its answers depend on every pixel, so a
rotated or wrongly decoded image changes them), with the two signatures of
the contract. `serving_default` decodes and antialias-resizes in the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarflow.classes import COARSE_CLASS_NAMES

NUM_CLASSES = len(COARSE_CLASS_NAMES)


def export_test_model(
    export_dir: str | Path, seed: int = 0, favour_class: int | None = None
) -> Path:
    """Writes the SavedModel into `export_dir` and returns it.

    Args:
        export_dir: created; must not exist.
        seed: picks the weights; different seeds give different answers.
        favour_class: adds a large bias to this class, so every image gets it
            (tests tell versions apart by this).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.05, size=(32 * 32 * 3, NUM_CLASSES)).astype(np.float32)
    bias = np.zeros(NUM_CLASSES, np.float32)
    if favour_class is not None:
        bias[favour_class] = 100.0

    class TestClassifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(weights, name="weights")
            self.bias = tf.Variable(bias, name="bias")
            self.class_names = tf.constant(list(COARSE_CLASS_NAMES))

        def _heads(self, pixels):
            x = tf.reshape(tf.cast(pixels, tf.float32) / 255.0 - 0.5, [-1, 32 * 32 * 3])
            logits = tf.matmul(x, self.weights) + self.bias
            class_ids = tf.argmax(logits, axis=1, output_type=tf.int64)
            return {
                "probabilities": tf.nn.softmax(logits),
                "logits": logits,
                "class_ids": class_ids,
                "class_names": tf.gather(self.class_names, class_ids),
            }

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
        def predict_pixels(self, images):
            return self._heads(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serving_default(self, image_bytes):
            def decode(encoded):
                image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
                image = tf.image.resize(image, [32, 32], antialias=True)
                return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

            pixels = tf.map_fn(
                decode, image_bytes, fn_output_signature=tf.TensorSpec([32, 32, 3], tf.uint8)
            )
            return self._heads(pixels)

    module = TestClassifier()
    export_dir = Path(export_dir)
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            "serving_default": module.serving_default,
            "predict_pixels": module.predict_pixels,
        },
    )
    # What the training engineer's Model artifact carries besides the SavedModel.
    (export_dir / "model.keras").write_bytes(b"not a real keras file")
    return export_dir


def reference_logits(
    images: np.ndarray, seed: int = 0, favour_class: int | None = None
) -> np.ndarray:
    """The same model in numpy, for checking served answers."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.05, size=(32 * 32 * 3, NUM_CLASSES)).astype(np.float32)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
    logits = x @ weights
    if favour_class is not None:
        logits[:, favour_class] += 100.0
    return logits

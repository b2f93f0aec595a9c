"""Preprocessing layers that live inside every model (pure Keras 3).

Normalisation and augmentation are part of the model so they run on the
accelerator and so serving can never drift from training. Augmentation layers
are identity at inference (`training=False`), which is how the exported model
calls them.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cifarflow")
class PixelNormalization(keras.layers.Layer):
    """Maps raw pixels (0..255, any dtype) to per-channel zero mean, unit variance.

    Args:
        mean: per-channel mean of the training pixels, in 0..255 units.
        std: per-channel standard deviation, in 0..255 units.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="cifarflow")
class Cutout(keras.layers.Layer):
    """Zeroes one random `size`×`size` square per image during training.

    Applied after normalisation, so the erased patch is the data mean.
    Identity at inference.
    """

    def __init__(self, size: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.size <= 0:
            return inputs
        shape = ops.shape(inputs)
        batch, height, width = shape[0], shape[1], shape[2]
        cy = keras.random.randint((batch, 1, 1), 0, height, seed=self.seed_generator)
        cx = keras.random.randint((batch, 1, 1), 0, width, seed=self.seed_generator)
        rows = ops.reshape(ops.arange(height), (1, -1, 1))
        cols = ops.reshape(ops.arange(width), (1, 1, -1))
        half = self.size // 2
        inside = (
            (rows >= cy - half)
            & (rows < cy - half + self.size)
            & (cols >= cx - half)
            & (cols < cx - half + self.size)
        )
        keep = ops.cast(ops.logical_not(inside), inputs.dtype)
        return inputs * ops.expand_dims(keep, -1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cifarflow")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors images left-right, always (the second view of flip test-time augmentation)."""

    def call(self, inputs):
        return ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


def augmentation_layers(
    flip: bool, crop_padding: int, seed: int | None
) -> list[keras.layers.Layer]:
    """Flip and pad-and-crop, both per image, identity at inference.

    Pad-and-crop is a random integer translation by up to `crop_padding`
    pixels with zero fill (nearest interpolation keeps pixels unblurred),
    which is the classic CIFAR "pad 4, random crop 32" augmentation.
    """
    layers: list[keras.layers.Layer] = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="random_flip"))
    if crop_padding > 0:
        factor = crop_padding / 32.0
        layers.append(
            keras.layers.RandomTranslation(
                factor,
                factor,
                fill_mode="constant",
                fill_value=0.0,
                interpolation="nearest",
                seed=seed,
                name="random_crop",
            )
        )
    return layers

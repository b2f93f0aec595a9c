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


def pad_and_crop(images, shift_y, shift_x):
    """Translates each image by its own whole-pixel shift, filling with zeros.

    The same as padding by `max|shift|` and cropping back to the original size
    at an offset, written as two one-hot matrix products (`out = Ry @ x @ Rxᵀ`
    per image and channel), so every backend compiles it: no gather with
    data-dependent shapes, no image-transform kernel without an XLA lowering.
    Each output pixel is one input pixel times 1 plus zeros, so the result is
    exact (matmuls at reduced precision, TF32 or bfloat16, are still exact
    for 0..255 pixels).

    Args:
        images: [batch, height, width, channels].
        shift_y: [batch] integers; output row i reads input row i + shift_y.
        shift_x: [batch] integers; output column j reads input column j + shift_x.
    """
    shape = ops.shape(images)
    height, width = shape[1], shape[2]

    def one_hot_rows(shift, size):
        # [batch, size, size]: row i has its 1 at column i + shift (none when outside).
        # A comparison, not ops.one_hot: backends disagree on out-of-range indices.
        positions = ops.arange(size, dtype="int32")
        source = ops.expand_dims(positions, 0) + ops.expand_dims(shift, 1)
        hits = ops.equal(ops.expand_dims(source, 2), ops.reshape(positions, (1, 1, -1)))
        return ops.cast(hits, images.dtype)

    rows = one_hot_rows(ops.cast(shift_y, "int32"), height)
    cols = one_hot_rows(ops.cast(shift_x, "int32"), width)
    channels = shape[3]
    # Two batched matmuls rather than one einsum: about half the time on a CPU.
    moved = ops.matmul(rows, ops.reshape(images, (-1, height, width * channels)))
    moved = ops.transpose(ops.reshape(moved, (-1, height, width, channels)), (0, 2, 1, 3))
    moved = ops.matmul(cols, ops.reshape(moved, (-1, width, height * channels)))
    return ops.transpose(ops.reshape(moved, (-1, width, height, channels)), (0, 2, 1, 3))


@keras.saving.register_keras_serializable(package="cifarflow")
class RandomPadCrop(keras.layers.Layer):
    """The classic CIFAR "pad N, random crop 32" augmentation, per image, identity at inference.

    Shifts are uniform integers in [-padding, padding] on each axis. Replaces
    Keras' RandomTranslation, whose `supports_jit = False` turned XLA and
    `jax.jit` off for the whole model, and whose rounded float translation
    drew the outermost shifts half as often as the others.

    Args:
        padding: the largest shift, in pixels.
        seed: seed of the shifts.
    """

    def __init__(self, padding: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.padding <= 0:
            return inputs
        batch = ops.shape(inputs)[0]
        shifts = keras.random.randint(
            (2, batch), -self.padding, self.padding + 1, seed=self.seed_generator
        )
        return pad_and_crop(inputs, shifts[0], shifts[1])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


def augmentation_layers(
    flip: bool, crop_padding: int, seed: int | None
) -> list[keras.layers.Layer]:
    """Flip and pad-and-crop, both per image, identity at inference, both compilable."""
    layers: list[keras.layers.Layer] = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="random_flip"))
    if crop_padding > 0:
        layers.append(RandomPadCrop(crop_padding, seed=seed, name="random_crop"))
    return layers

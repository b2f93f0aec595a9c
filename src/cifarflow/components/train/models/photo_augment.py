"""Training-time changes that make CIFAR images look more like the photos people send.

CIFAR-100 images are clean, well exposed and sharp; photos that reach the
gateway are darker or paler, soft, and noisy from the sensor, and the model
loses most on exactly these (bench/robustness.py: noise and blur are its worst
corruption families). `RandomPhotoConditions` draws, per image, a colour
change (brightness, contrast, saturation), a blur and a sensor noise level,
each uniform between none and its configured maximum, so most images stay
close to clean and some get the full strength. Written with backend-neutral
`keras.ops` only, so the train step still compiles (XLA, `jax.jit`), and
identity at inference, so the exported model does not change.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

# Rec. 601 luma: the grey a saturation change blends towards.
_LUMA = (0.299, 0.587, 0.114)
# Binomial 3x3 (the outer product of [1, 2, 1] / 4): a Gaussian of sigma ~0.7 px.
_BLUR_TAPS = (0.25, 0.5, 0.25)


@dataclasses.dataclass(frozen=True)
class PhotoConditions:
    """The largest change of each kind; each image draws its own, uniformly, up to these.

    Attributes:
        color: brightness shift up to ±color × 255 levels, contrast and
            saturation scaled by a factor in [1 - color, 1 + color] (0: off).
        blur: weight, up to this, of a 3×3 binomial blur blended into the image (0..1).
        noise: standard deviation of Gaussian sensor noise, up to this, in 0..255 levels.
    """

    color: float = 0.0
    blur: float = 0.0
    noise: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.color or self.blur or self.noise)


def apply_photo_conditions(images, draws, noise, conditions: PhotoConditions):
    """The change itself, for given draws (the layer draws them; tests pass their own).

    Args:
        images: float [batch, height, width, 3], pixels in 0..255.
        draws: [batch, 5] uniform in [0, 1): brightness, contrast, saturation, blur, noise.
        noise: [batch, height, width, 3] standard normal samples.
        conditions: the maxima.

    Returns:
        The changed images, clipped to 0..255.
    """
    dtype = images.dtype

    def spread(column):  # [batch] in [0, 1) -> [-1, 1), shaped to broadcast over pixels
        return ops.reshape(draws[:, column] * 2.0 - 1.0, (-1, 1, 1, 1))

    x = images
    if conditions.color:
        grey = ops.sum(x * ops.convert_to_tensor(_LUMA, dtype=dtype), axis=-1, keepdims=True)
        x = grey + (x - grey) * (1.0 + conditions.color * spread(2))
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * (1.0 + conditions.color * spread(1))
        x = x + conditions.color * 255.0 * spread(0)
    if conditions.blur:
        padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        rows = sum(tap * padded[:, i : i + height, :, :] for i, tap in enumerate(_BLUR_TAPS))
        blurred = sum(tap * rows[:, :, j : j + width, :] for j, tap in enumerate(_BLUR_TAPS))
        weight = ops.reshape(draws[:, 3], (-1, 1, 1, 1)) * conditions.blur
        x = x + weight * (blurred - x)
    if conditions.noise:
        x = x + ops.reshape(draws[:, 4], (-1, 1, 1, 1)) * conditions.noise * noise
    return ops.clip(x, 0.0, 255.0)


@keras.saving.register_keras_serializable(package="cifarflow")
class RandomPhotoConditions(keras.layers.Layer):
    """Per-image colour, blur and sensor noise on 0..255 pixels during training; identity at inference.

    Args:
        color: see `PhotoConditions`.
        blur: see `PhotoConditions`.
        noise: see `PhotoConditions`.
        seed: seed of the draws.
    """

    def __init__(
        self,
        color: float = 0.0,
        blur: float = 0.0,
        noise: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.conditions = PhotoConditions(float(color), float(blur), float(noise))
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or not self.conditions.active:
            return inputs
        x = ops.cast(inputs, self.compute_dtype)
        batch = ops.shape(x)[0]
        draws = keras.random.uniform((batch, 5), seed=self.seed_generator, dtype=x.dtype)
        noise = (
            keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
            if self.conditions.noise
            else None
        )
        return apply_photo_conditions(x, draws, noise, self.conditions)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            **dataclasses.asdict(self.conditions),
            "seed": self.seed,
        }

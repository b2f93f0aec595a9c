"""The 2023 project's transfer-learning heads on `keras.applications` bases.

Base (DenseNet121, ResNet50 or Xception) at an enlarged input size, global
average pooling, dropout, Dense(size_inner, relu), then the 20-class layer.
Weights: `imagenet` when reachable (offline it falls back to random
initialisation with a warning), a local weights file, or none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers

from cifarflow.errors import BadInputError

_log = logging.getLogger(__name__)

# Each base's own input scaling, applied to raw 0..255 pixels.
_BASES = {
    "densenet121": (keras.applications.DenseNet121, "torch"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "xception": (keras.applications.Xception, "tf"),
}
_MIN_INPUT = {"densenet121": 32, "resnet50": 32, "xception": 71}

TRANSFER_ARCHITECTURES: tuple[str, ...] = tuple(_BASES)


@keras.saving.register_keras_serializable(package="cifarflow")
class ApplicationPreprocess(keras.layers.Layer):
    """`keras.applications` input scaling ("torch", "caffe" or "tf" mode) as a layer."""

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        return keras.applications.imagenet_utils.preprocess_input(x, mode=self.mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def transfer_features(
    pixels,
    architecture: str,
    input_size: int,
    weights: str,
    freeze_base: bool,
    dropout: float,
    size_inner: int,
):
    """Resizes raw pixels, runs the base and the 2023 head up to the inner layer.

    Args:
        pixels: augmented images, 0..255 floats, [batch, 32, 32, 3].
        weights: "imagenet", "none", or a path to a weights file.
    """
    constructor, mode = _BASES[architecture]
    if input_size < _MIN_INPUT[architecture]:
        raise BadInputError(
            f"{architecture} needs input_size >= {_MIN_INPUT[architecture]}, got {input_size}"
        )
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise BadInputError(
            f"weights file {weights} does not exist (use 'imagenet', 'none' or a file path)"
        )
    x = layers.Resizing(input_size, input_size, interpolation="bilinear", name="upsample")(pixels)
    x = ApplicationPreprocess(mode, name="app_preprocess")(x)
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        try:
            base = constructor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # offline: "imagenet when reachable", else random init
            _log.warning(
                "ImageNet weights for %s unreachable (%s); training the base from random initialisation",
                architecture,
                type(exc).__name__,
            )
            base = constructor(include_top=False, weights=None, input_shape=shape)
    else:
        base = constructor(include_top=False, weights=None, input_shape=shape)
    if weights not in ("imagenet", "none"):
        base.load_weights(weights)
    base.trainable = not freeze_base
    # A frozen base also keeps its BatchNorm statistics frozen.
    x = base(x, training=False if freeze_base else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(size_inner, activation="relu", name="inner")(x)

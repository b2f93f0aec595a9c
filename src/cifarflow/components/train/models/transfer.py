"""The 2023 project's transfer-learning heads on `keras.applications` bases.

Base (DenseNet121, ResNet50 or Xception) at an enlarged input size, global
average pooling, dropout, Dense(size_inner, relu), then the 20-class layer.
Weights (models/imagenet_weights.py): `imagenet` (Keras's own file, or the
same file from a mirror), a URL with its checksum, a local weights file, or
none; weights that cannot be had fail the trial with one line.
"""

from __future__ import annotations

import keras
from keras import layers

from cifarflow.components.train.models.imagenet_weights import pretrained_base
from cifarflow.errors import BadInputError

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
        weights: "imagenet", "none", a weights file path or a URL#sha256=HEX
            (models/imagenet_weights.py).
    """
    constructor, mode = _BASES[architecture]
    if input_size < _MIN_INPUT[architecture]:
        raise BadInputError(
            f"{architecture} needs input_size >= {_MIN_INPUT[architecture]}, got {input_size}"
        )
    x = layers.Resizing(input_size, input_size, interpolation="bilinear", name="upsample")(pixels)
    x = ApplicationPreprocess(mode, name="app_preprocess")(x)
    base = pretrained_base(constructor, architecture, weights, (input_size, input_size, 3))
    base.trainable = not freeze_base
    # A frozen base also keeps its BatchNorm statistics frozen.
    x = base(x, training=False if freeze_base else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(size_inner, activation="relu", name="inner")(x)

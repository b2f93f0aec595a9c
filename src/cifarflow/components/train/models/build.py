"""Builds a trial's model: uint8-range pixels in, 20 coarse logits out.

Every model has the same skeleton, so export and evaluation never care which
architecture won:

    pixels [N, 32, 32, 3] (0..255) -> augmentation, photo conditions (training only)
      -> normalisation -> features -> dropout -> Dense(20) "logits"

With `fine_label_weight > 0` a second head predicts the 100 fine labels; it
only exists in the training model and shapes the shared features (the coarse
classes are unions of fine ones, so the finer target is a richer signal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
from keras import layers

from cifarflow.classes import NUM_COARSE_CLASSES, NUM_FINE_CLASSES
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.models.layers import (
    Cutout,
    HorizontalFlip,
    PixelNormalization,
    augmentation_layers,
)
from cifarflow.components.train.models.photo_augment import RandomPhotoConditions
from cifarflow.components.train.models.resnet import resnet_features
from cifarflow.components.train.models.transfer import transfer_features

LOGITS_LAYER = "logits"
FINE_LOGITS_LAYER = "fine_logits"


@dataclasses.dataclass
class BuiltModel:
    """`inference` maps pixels to coarse logits; `training` may add the fine head.

    Both share their layers (and so their weights); without a fine head and
    without test-time augmentation they are the same object.
    """

    inference: keras.Model
    training: keras.Model
    has_fine_head: bool = False


def with_flip_tta(core: keras.Model) -> keras.Model:
    """Wraps a pixels-to-logits model so it averages the logits of the image and its mirror.

    The weights stay those of `core` (it is called twice, as a nested model).
    """
    pixels = keras.Input(shape=(32, 32, 3), dtype="float32", name="pixels")
    mirrored = HorizontalFlip(name="mirror")(pixels)
    logits = layers.Average(name="tta_average", dtype="float32")([core(pixels), core(mirrored)])
    return keras.Model(pixels, logits, name=f"{core.name}_tta")


def build_model(
    config: TrialConfig,
    pixel_mean: Sequence[float] = (129.3, 124.1, 112.4),
    pixel_std: Sequence[float] = (68.2, 65.4, 70.4),
    num_classes: int = NUM_COARSE_CLASSES,
) -> BuiltModel:
    """Builds the trial's model.

    Args:
        config: the trial.
        pixel_mean: per-channel training-set mean (0..255 units), folded into the model.
        pixel_std: per-channel training-set standard deviation.
        num_classes: size of the output layer.
    """
    keras.utils.set_random_seed(config.seed)
    pixels = keras.Input(shape=(32, 32, 3), dtype="float32", name="pixels")
    x = pixels
    for layer in augmentation_layers(config.flip, config.crop_padding, config.seed):
        x = layer(x)
    if config.photo_color or config.photo_blur or config.photo_noise:
        # float32 whatever the policy: noise and blur on 0..255 need more than bfloat16's 8 bits.
        x = RandomPhotoConditions(
            config.photo_color,
            config.photo_blur,
            config.photo_noise,
            seed=config.seed,
            dtype="float32",
            name="photo_conditions",
        )(x)
    if config.architecture == "resnet":
        x = PixelNormalization(pixel_mean, pixel_std, name="normalize")(x)
        if config.cutout:
            x = Cutout(config.cutout, seed=config.seed, name="cutout")(x)
        features = resnet_features(x, config.depth, config.width, config.weight_decay)
        if config.dropout > 0:
            features = layers.Dropout(config.dropout, name="dropout")(features)
    else:
        features = transfer_features(
            x,
            config.architecture,
            config.input_size,
            config.weights,
            config.freeze_base,
            config.dropout,
            config.size_inner,
        )
    reg = (
        keras.regularizers.L2(config.weight_decay / 2)
        if config.weight_decay > 0 and config.optimizer != "adamw"
        else None
    )
    # float32 logits even under mixed precision: softmax and the loss need the range.
    logits = layers.Dense(num_classes, kernel_regularizer=reg, dtype="float32", name=LOGITS_LAYER)(
        features
    )
    name = f"{config.architecture}{config.depth if config.architecture == 'resnet' else ''}"
    core = keras.Model(pixels, logits, name=name)
    inference = with_flip_tta(core) if config.tta_flip else core
    if config.fine_label_weight <= 0:
        return BuiltModel(inference=inference, training=core)
    fine = layers.Dense(
        NUM_FINE_CLASSES, kernel_regularizer=reg, dtype="float32", name=FINE_LOGITS_LAYER
    )(features)
    training = keras.Model(
        pixels, {LOGITS_LAYER: logits, FINE_LOGITS_LAYER: fine}, name=f"{name}_train"
    )
    return BuiltModel(inference=inference, training=training, has_fine_head=True)

"""A from-scratch residual network family sized for 32×32 images.

He et al.'s CIFAR ResNet (three stages at 32, 16 and 8 pixels, `depth = 6n + 2`)
with a width multiplier, so one builder covers ResNet-20 for two CPU cores
(16-32-64 filters, 0.27 M parameters) and wide variants for a GPU
(e.g. depth 14, width 8: 128-256-512 filters, two blocks per stage like WRN-16-8).
"""

from __future__ import annotations

import keras
from keras import layers

_STAGE_FILTERS = (16, 32, 64)


def _conv(filters: int, kernel: int, stride: int, weight_decay: float, name: str) -> layers.Conv2D:
    # Coupled L2 (gradient += weight_decay * w), the classic SGD weight decay.
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name=name,
    )


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _basic_block(x, filters: int, stride: int, weight_decay: float, name: str):
    shortcut = x
    y = _conv(filters, 3, stride, weight_decay, f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, weight_decay, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        # Projection shortcut: a strided 1×1 conv keeps it cheap on CPU.
        shortcut = _conv(filters, 1, stride, weight_decay, f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet_features(x, depth: int, width: int, weight_decay: float):
    """Applies the residual trunk and global pooling; returns the feature vector.

    Args:
        x: normalised images, [batch, 32, 32, 3].
        depth: 6n + 2 (20, 32, 44, 56, ... or 8, 14 for small runs).
        width: filter multiplier of the 16-32-64 stages.
        weight_decay: coupled L2 coefficient on convolution kernels.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
    blocks = (depth - 2) // 6
    x = _conv(16 * width, 3, 1, weight_decay, "stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, base in enumerate(_STAGE_FILTERS):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, base * width, stride, weight_decay, f"s{stage + 1}b{block + 1}")
    return layers.GlobalAveragePooling2D(name="pool")(x)

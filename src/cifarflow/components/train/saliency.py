"""Grad-CAM saliency maps computed inside the exported graph (the `explain` signature).

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last
convolutional block's activations by the mean gradient of the explained
class's logit with respect to it, sums the channels, keeps the positive part
and upsamples the result to the image. Every shipped architecture ends its
convolutional trunk in the global-average-pooling layer named `pool`
(models/resnet.py and models/transfer.py), so that layer's input is the last
block's activations for all of them: 8×8 for the CIFAR ResNets, 2×2 or 3×3
for the transfer bases at 75×75 (a coarser map). A model served with flip
test-time augmentation (`with_flip_tta`) averages the logits of the image
and its mirror; its map is the sum of both views' maps, the mirror's flipped
back, which is Grad-CAM of the averaged logit.

The map explains the predicted class (the served argmax), is 32×32 like the
model's input, and is scaled so its largest value is 1 (all zeros when no
region raises the class's logit).
"""

from __future__ import annotations

import dataclasses

import keras

POOL_LAYER = "pool"
MIRROR_LAYER = "mirror"
MAP_SIZE = 32


@dataclasses.dataclass(frozen=True)
class GradCamModel:
    """A served model opened up where Grad-CAM needs it.

    Attributes:
        features_and_logits: pixels -> [last block's activations, logits], the
            core model's own layers (and weights).
        mirrored: the served model averages the logits of the image and its
            mirror (flip test-time augmentation).
    """

    features_and_logits: keras.Model
    mirrored: bool


def _has_pool(model: keras.Model) -> bool:
    return any(layer.name == POOL_LAYER for layer in model.layers)


def grad_cam_model(model: keras.Model) -> GradCamModel:
    """Finds the last convolutional block of a model `build_model` made.

    Args:
        model: the inference model (pixels -> coarse logits), possibly wrapped
            in flip test-time augmentation.

    Raises:
        ValueError: the model has no `pool` layer (not built by build_model).
    """
    core, mirrored = model, False
    if not _has_pool(model):
        nested = [
            layer for layer in model.layers if isinstance(layer, keras.Model) and _has_pool(layer)
        ]
        names = {layer.name for layer in model.layers}
        if len(nested) != 1 or MIRROR_LAYER not in names:
            raise ValueError(
                f"model {model.name!r} has no {POOL_LAYER!r} layer ending its convolutional trunk: "
                "Grad-CAM cannot find the last convolutional block"
            )
        core, mirrored = nested[0], True
    pool = core.get_layer(POOL_LAYER)
    split = keras.Model(core.inputs, [pool.input, core.outputs[0]], name=f"{core.name}_grad_cam")
    return GradCamModel(split, mirrored)


def grad_cam(cam_model: GradCamModel, pixels):
    """Grad-CAM of each image's most probable class (TensorFlow ops, traceable).

    Args:
        cam_model: from `grad_cam_model`.
        pixels: float32 [N, 32, 32, 3], 0..255.

    Returns:
        (saliency float32 [N, 32, 32] in [0, 1], logits float32 [N, classes]),
        the logits those of the served model before any temperature.
    """
    import tensorflow as tf

    count = tf.shape(pixels)[0]
    views = tf.concat([pixels, tf.reverse(pixels, axis=[2])], 0) if cam_model.mirrored else pixels
    with tf.GradientTape() as tape:
        activations, view_logits = cam_model.features_and_logits(views, training=False)
        view_logits = tf.cast(view_logits, tf.float32)
        if cam_model.mirrored:
            logits = (view_logits[:count] + view_logits[count:]) / 2.0
        else:
            logits = view_logits
        class_ids = tf.argmax(logits, axis=1, output_type=tf.int32)
        # Images are independent at inference (BatchNorm uses its moving
        # statistics), so the gradient of the sum is each image's own.
        score = tf.reduce_sum(tf.gather(logits, class_ids, batch_dims=1))
    gradients = tf.cast(tape.gradient(score, activations), tf.float32)
    activations = tf.cast(activations, tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(channel_weights * activations, axis=-1))
    if cam_model.mirrored:
        cams = cams[:count] + tf.reverse(cams[count:], axis=[2])
    # Bilinear weights are convex, so the upsampled map stays non-negative.
    upsampled = tf.image.resize(cams[..., tf.newaxis], [MAP_SIZE, MAP_SIZE], method="bilinear")
    upsampled = upsampled[..., 0]
    peak = tf.reduce_max(upsampled, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(upsampled, peak), logits

"""The `explain` signature's Grad-CAM map, on small ResNets and real CIFAR-100 test images.

Checked against an eager Grad-CAM written here from its definition (the
gradient of the class logit by GradientTape, the rest in NumPy), on the
exported SavedModel reloaded as a server would load it.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.export import EXPLAIN_SIGNATURE, export_saved_model
from cifarflow.components.train.models.build import build_model
from cifarflow.components.train.saliency import grad_cam_model
from tests.serving.images import cifar_test_images

TEMPERATURE = 1.7


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _core_cam(core: keras.Model, pixels: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Low-resolution Grad-CAM terms (before ReLU) of `core` for the given classes, eagerly."""
    split = keras.Model(core.inputs, [core.get_layer("pool").input, core.outputs[0]])
    x = tf.constant(pixels, tf.float32)
    with tf.GradientTape() as tape:
        activations, logits = split(x, training=False)
        picked = tf.reduce_sum(logits * tf.one_hot(class_ids, logits.shape[-1]))
    gradients = tape.gradient(picked, activations).numpy()
    activations = activations.numpy()
    weights = gradients.mean(axis=(1, 2))  # [N, C]
    return np.einsum("nhwc,nc->nhw", activations, weights)


def _reference_saliency(model: keras.Model, pixels: np.ndarray, mirrored: bool) -> np.ndarray:
    logits = model(tf.constant(pixels, tf.float32), training=False).numpy()
    class_ids = logits.argmax(axis=1)
    if mirrored:
        core = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        # The mirror's gradient is half the averaged logit's; the view's own
        # logit gradient halved gives the same map up to that common factor.
        cams = np.maximum(_core_cam(core, pixels, class_ids) / 2, 0)
        cams += np.maximum(_core_cam(core, pixels[:, :, ::-1], class_ids) / 2, 0)[:, :, ::-1]
    else:
        cams = np.maximum(_core_cam(model, pixels, class_ids), 0)
    up = tf.image.resize(cams[..., None], [32, 32], method="bilinear").numpy()[..., 0]
    peak = up.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, up / np.where(peak > 0, peak, 1), 0.0)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "flip-tta"])
def exported(request, tmp_path_factory):
    built = build_model(TrialConfig(architecture="resnet", depth=8, tta_flip=request.param))
    out = tmp_path_factory.mktemp("explain") / "model"
    out.mkdir()
    export_saved_model(built.inference, out, COARSE_CLASS_NAMES, temperature=TEMPERATURE)
    return built.inference, tf.saved_model.load(str(out)), request.param


def test_explain_map_matches_an_eager_grad_cam_of_the_same_model(exported):
    model, loaded, mirrored = exported
    pixels = cifar_test_images()[0][:6]
    served = loaded.signatures[EXPLAIN_SIGNATURE](
        image_bytes=tf.constant([_png(p) for p in pixels])
    )
    saliency = served["saliency"].numpy()
    assert saliency.shape == (6, 32, 32) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert np.allclose(saliency.max(axis=(1, 2)), 1.0)  # each map scaled to its own peak
    np.testing.assert_allclose(saliency, _reference_saliency(model, pixels, mirrored), atol=2e-4)
    # Explains the class serving_default answers, with its calibrated probability.
    default = loaded.signatures["serving_default"](
        image_bytes=tf.constant([_png(p) for p in pixels])
    )
    np.testing.assert_array_equal(served["class_ids"], default["class_ids"])
    np.testing.assert_allclose(served["probabilities"], default["probabilities"], atol=1e-5)
    picked = np.take_along_axis(
        default["probabilities"].numpy(), default["class_ids"].numpy()[:, None], 1
    )[:, 0]
    np.testing.assert_allclose(served["probability"], picked, atol=1e-5)
    assert [n.decode() for n in served["class_names"].numpy()] == [
        COARSE_CLASS_NAMES[i] for i in served["class_ids"].numpy()
    ]


def test_explain_map_follows_the_image(exported):
    _, loaded, _ = exported
    pixels = cifar_test_images()[0][10:14]
    explain = loaded.signatures[EXPLAIN_SIGNATURE]
    maps = explain(image_bytes=tf.constant([_png(p) for p in pixels]))["saliency"].numpy()
    # Different images, different maps.
    assert min(np.abs(maps[0] - m).max() for m in maps[1:]) > 0.05
    # The same image alone or in a batch: the same map (no leak between images).
    alone = explain(image_bytes=tf.constant([_png(pixels[2])]))["saliency"].numpy()[0]
    np.testing.assert_allclose(alone, maps[2], atol=1e-5)


def test_a_model_without_the_pooling_layer_is_refused():
    pixels = keras.Input((32, 32, 3))
    model = keras.Model(pixels, keras.layers.Dense(20)(keras.layers.Flatten()(pixels)))
    with pytest.raises(ValueError, match="'pool'"):
        grad_cam_model(model)


def test_transfer_heads_expose_their_base_output():
    built = build_model(
        TrialConfig(architecture="resnet50", input_size=64, weights="none", freeze_base=True)
    )
    cam_model = grad_cam_model(built.inference)
    activations, logits = cam_model.features_and_logits(
        tf.constant(cifar_test_images()[0][:2], tf.float32)
    )
    assert tuple(activations.shape) == (2, 2, 2, 2048) and tuple(logits.shape) == (2, 20)

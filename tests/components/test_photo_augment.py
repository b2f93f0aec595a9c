"""Photo conditions in training: the change against NumPy, the layer's draws, and the model around it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.models import build_model
from cifarflow.components.train.models.photo_augment import (
    PhotoConditions,
    RandomPhotoConditions,
    apply_photo_conditions,
)
from cifarflow.components.train.run import compile_for_training
from cifarflow.components.train.schedules import WarmupSchedule
from cifarflow.errors import BadInputError
from tests.serving.images import cifar_test_images

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
IMAGES = cifar_test_images()[0][:24].astype("float32")


def reference(images, draws, noise, color, blur, sigma) -> np.ndarray:
    """The same change, image by image, in float64 NumPy."""
    out = []
    for image, (b, c, s, w, n), z in zip(images.astype(np.float64), draws, noise, strict=True):
        grey = image @ np.array([0.299, 0.587, 0.114])
        x = grey[..., None] + (image - grey[..., None]) * (1 + color * (2 * s - 1))
        x = x.mean() + (x - x.mean()) * (1 + color * (2 * c - 1)) + color * 255 * (2 * b - 1)
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
        kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
        blurred = sum(
            kernel[i, j] * padded[i : i + 32, j : j + 32] for i in range(3) for j in range(3)
        )
        x = x + w * blur * (blurred - x) + n * sigma * z
        out.append(np.clip(x, 0, 255))
    return np.stack(out)


def test_the_change_matches_numpy_for_given_draws():
    rng = np.random.default_rng(0)
    draws = rng.uniform(size=(len(IMAGES), 5)).astype("float32")
    draws[0] = (0.0, 1.0, 0.0, 1.0, 1.0)  # the extremes: darkest, most contrast, grey, ...
    draws[1] = (1.0, 0.0, 1.0, 0.0, 0.0)
    noise = rng.standard_normal(IMAGES.shape).astype("float32")
    conditions = PhotoConditions(color=0.4, blur=1.0, noise=12.0)
    got = keras.ops.convert_to_numpy(apply_photo_conditions(IMAGES, draws, noise, conditions))
    expected = reference(IMAGES, draws, noise, 0.4, 1.0, 12.0)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert got.min() == 0.0 and got.max() == 255.0  # the strongest draws clip


def test_middle_draws_and_zero_weights_leave_the_pixels_as_they_were():
    draws = np.tile(np.array([[0.5, 0.5, 0.5, 0.0, 0.0]], "float32"), (len(IMAGES), 1))
    noise = np.ones_like(IMAGES)
    got = apply_photo_conditions(IMAGES, draws, noise, PhotoConditions(0.5, 1.0, 20.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), IMAGES, atol=1e-3)


def test_the_layer_is_identity_at_inference_and_seeded_in_training():
    layer = RandomPhotoConditions(color=0.3, blur=0.8, noise=10.0, seed=5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(IMAGES)), IMAGES)
    first = keras.ops.convert_to_numpy(layer(IMAGES, training=True))
    again = keras.ops.convert_to_numpy(
        RandomPhotoConditions(color=0.3, blur=0.8, noise=10.0, seed=5)(IMAGES, training=True)
    )
    np.testing.assert_array_equal(first, again)
    assert 0.0 <= first.min() and first.max() <= 255.0
    # Each image draws its own strength: some barely change, some a lot.
    change = np.abs(first - IMAGES).mean(axis=(1, 2, 3))
    assert change.min() < 0.5 * change.max()
    assert not np.array_equal(first, keras.ops.convert_to_numpy(layer(IMAGES, training=True)))


def test_noise_alone_adds_the_drawn_spread_and_nothing_else():
    layer = RandomPhotoConditions(noise=16.0, seed=1)
    grey = np.full((400, 32, 32, 3), 128.0, "float32")  # no clipping at 128 +- 4 sd
    spread = (keras.ops.convert_to_numpy(layer(grey, training=True)) - 128.0).std(axis=(1, 2, 3))
    # sigma uniform in [0, 16): mean 8, and the whole range is used.
    assert 7.0 < spread.mean() < 9.0 and spread.min() < 1.0 and spread.max() > 15.0


def test_a_model_with_photo_conditions_compiles_its_train_step_and_saves(tmp_path):
    trial = TrialConfig.from_dict(
        {"depth": 8, "photo_color": 0.3, "photo_blur": 0.5, "photo_noise": 8, "batch_size": 8}
    )
    built = build_model(trial)
    layer = built.training.get_layer("photo_conditions")
    assert layer.dtype_policy.compute_dtype == "float32"
    compile_for_training(built, trial, WarmupSchedule(0.1, 100, 10), jit_compile=True)
    assert built.training.jit_compile is True
    built.training.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").get_layer("photo_conditions")
    assert loaded.get_config()["noise"] == 8.0 and loaded.get_config()["blur"] == 0.5
    # The inference model, as export calls it, is untouched by it.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(built.inference(IMAGES[:4], training=False)),
        keras.ops.convert_to_numpy(built.inference(IMAGES[:4], training=False)),
    )


def test_out_of_range_photo_conditions_are_one_error_naming_each():
    with pytest.raises(BadInputError) as raised:
        TrialConfig.from_dict({"photo_color": 1.5, "photo_blur": -0.1, "photo_noise": 100})
    message = str(raised.value)
    assert "photo_color must be in [0, 1]" in message
    assert "photo_blur must be in [0, 1]" in message
    assert "photo_noise must be in [0, 64]" in message

"""The weight average: what Keras keeps inside the step, kept across fit() calls, swapped in on demand."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from cifarflow.components.train import ema
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.executor import TrainResult, train
from cifarflow.components.train.run import make_optimizer
from cifarflow.components.train.schedules import WarmupSchedule
from tests.components.train_data import TINY_TRIAL

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tiny_model(momentum: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    config = TrialConfig(optimizer="sgd", momentum=0.0, ema_momentum=momentum)
    schedule = WarmupSchedule(0.1, total_steps=100, warmup_steps=0, kind="constant")
    model.compile(optimizer=make_optimizer(config, schedule), loss="mse")
    return model


def weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def test_the_average_is_the_hand_computed_exponential_average_of_the_weights():
    model = tiny_model(momentum=0.8)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    expected = None
    for _ in range(6):
        model.train_on_batch(x, y)
        live = weights(model)
        # The first step copies the weights; then m · average + (1 − m) · weights.
        expected = (
            live
            if expected is None
            else [0.8 * a + 0.2 * w for a, w in zip(expected, live, strict=True)]
        )
    averages = [keras.ops.convert_to_numpy(v) for v in ema.averages(model)]
    for got, want, now in zip(averages, expected, live, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, now)  # it lags the live weights


def test_fit_keeps_training_the_live_weights_and_swapping_restores_them():
    model = tiny_model(momentum=0.9)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 3)), rng.normal(size=(32, 2))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    live = weights(model)
    averages = [keras.ops.convert_to_numpy(v) for v in ema.averages(model)]
    # Keras would have overwritten the weights with the averages at the end of fit().
    assert not all(np.allclose(a, w) for a, w in zip(averages, live, strict=True))
    with ema.swapped_in(model):
        for got, want in zip(weights(model), averages, strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(weights(model), live, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_model_without_an_average_says_so():
    with pytest.raises(ValueError, match="no weight average"):
        ema.averages(tiny_model(momentum=0.0))


@pytest.mark.slow
def test_training_with_an_average_scores_both_and_exports_the_better(tmp_path, sample_data):
    trial = TrialConfig.from_dict({**TINY_TRIAL, "epochs": 2, "ema_momentum": 0.9})
    out = tmp_path / "ema"
    result = train(sample_data, trial, out, log=lambda line: None, export_tflite=False)
    history = json.loads((out / "history.json").read_text())
    assert all("ema_val_accuracy" in row and "val_accuracy" in row for row in history)
    best = max(max(r["val_accuracy"], r["ema_val_accuracy"]) for r in history)
    assert result.best_val_accuracy == pytest.approx(best)
    row = history[result.best_epoch - 1]
    assert result.best_is_ema == (row["ema_val_accuracy"] > row["val_accuracy"])
    # The exported model is the one that scored best on val.
    exported = keras.saving.load_model(out / "model.keras", compile=False)
    val_images = np.load(sample_data / "val" / "images.npy").astype("float32")
    val_labels = np.load(sample_data / "val" / "coarse_labels.npy")
    logits = exported.predict(val_images, verbose=0)
    assert float((logits.argmax(axis=1) == val_labels).mean()) == pytest.approx(best)
    assert TrainResult.load(out).best_is_ema == result.best_is_ema

"""Every shipped model compiles its train step (XLA on TensorFlow, jax.jit on JAX).

Keras turns compiling off for the whole model when one layer cannot be
compiled (its RandomTranslation could not), even when it is asked for; the
pad-and-crop layer that replaced it is checked here against NumPy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cifarflow.components.train import device
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.models import build_model
from cifarflow.components.train.models.layers import RandomPadCrop, pad_and_crop
from cifarflow.components.train.run import compile_for_training
from cifarflow.components.train.schedules import WarmupSchedule
from cifarflow.configs import CONFIG_DIR
from cifarflow.grid import load_grid

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[2]
# For the subprocesses that only prove a step compiles and runs: XLA's CPU
# backend without its expensive LLVM optimisation passes. Whether jax.jit (or
# XLA) takes the step does not depend on them; how fast the compiled code runs
# does, which these tests do not judge. On JAX it turns each tiny initializer
# kernel's compile, and the ResNet-8 step's, from seconds into a fraction: the
# JAX check went from ~300 s to ~115 s on the 2-core machine.
QUICK_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def reference_pad_and_crop(images: np.ndarray, shift_y, shift_x) -> np.ndarray:
    """Pad with zeros, crop at the shifted offset: the textbook CIFAR augmentation."""
    pad = int(max(np.abs(shift_y).max(), np.abs(shift_x).max(), 1))
    _, height, width, _ = images.shape
    out = np.empty_like(images)
    for k, (dy, dx) in enumerate(zip(shift_y, shift_x, strict=True)):
        padded = np.pad(images[k], ((pad, pad), (pad, pad), (0, 0)))
        out[k] = padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return out


def test_pad_and_crop_is_bit_exact_against_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(100.0, 60.0, (50, 32, 32, 3)).astype("float32")
    shift_y = rng.integers(-4, 5, 50)
    shift_x = rng.integers(-4, 5, 50)
    shift_y[:2], shift_x[:2] = (-4, 4), (4, -4)  # the corners
    got = keras.ops.convert_to_numpy(pad_and_crop(images, shift_y, shift_x))
    np.testing.assert_array_equal(got, reference_pad_and_crop(images, shift_y, shift_x))


def test_random_pad_crop_draws_every_shift_equally_often():
    layer = RandomPadCrop(4, seed=3)
    # Each pixel holds its own position, so the centre pixel tells the shift.
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    marker = np.stack([rows + 1, cols + 1, np.zeros_like(rows)], axis=-1).astype("float32")
    images = np.repeat(marker[None], 4500, axis=0)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    dy = out[:, 16, 16, 0].astype(int) - 17
    dx = out[:, 16, 16, 1].astype(int) - 17
    for shifts in (dy, dx):
        counts = np.bincount(shifts + 4, minlength=9)
        # 500 expected per shift, sd 21: RandomTranslation drew ±4 about 250 times.
        assert len(counts) == 9 and counts.min() > 400 and counts.max() < 600, counts
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)


def test_the_pad_crop_layer_survives_a_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), RandomPadCrop(4, seed=1, name="crop")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("crop").get_config()["padding"] == 4


def shipped_trials() -> list[tuple[str, TrialConfig]]:
    """One trial per distinct model of each shipped grid (the reference grid repeats 3 bases)."""
    found: dict[tuple, tuple[str, TrialConfig]] = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        for index, trial in enumerate(load_grid(path).trials):
            if trial.weights == "imagenet":
                trial = TrialConfig.from_dict({**trial.to_dict(), "weights": "none"})  # offline
            key = (path.stem, trial.architecture, trial.depth, trial.width, trial.crop_padding)
            found.setdefault(key, (f"{path.stem}[{index}]", trial))
    return list(found.values())


@pytest.mark.parametrize("trial", [pytest.param(t, id=n) for n, t in shipped_trials()])
def test_every_shipped_model_compiles_its_train_step_when_asked(trial):
    built = build_model(trial)
    schedule = WarmupSchedule(trial.learning_rate, 100, 10)
    # Raises when Keras refuses: one layer without jit support turns it off.
    compile_for_training(built, trial, schedule, jit_compile=True)
    assert built.training.jit_compile is True


@pytest.mark.slow
def test_the_cpu_grids_model_trains_a_compiled_step_on_tensorflow():
    """One real XLA step of ResNet-20 with its fine head (not only the flag)."""
    trial = load_grid(CONFIG_DIR / "cpu.yaml").trials[0]
    trial = TrialConfig.from_dict({**trial.to_dict(), "mixed_precision": "off", "batch_size": 8})
    built = build_model(trial)
    compile_for_training(built, trial, WarmupSchedule(0.1, 100, 10), jit_compile=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype("float32")
    targets = {
        "logits": np.eye(20, dtype="float32")[rng.integers(0, 20, 16)],
        "fine_logits": np.eye(100, dtype="float32")[rng.integers(0, 100, 16)],
    }
    history = built.training.fit(images, targets, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert built.training.jit_compile is True


JAX_CHECK = """
import json, numpy as np
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.models import build_model
from cifarflow.components.train.run import compile_for_training
from cifarflow.components.train.schedules import WarmupSchedule
from tests.components.test_train_compile import shipped_trials
import keras
flags = {}
photo = TrialConfig.from_dict({"depth": 8, "photo_color": 0.3, "photo_blur": 0.8, "photo_noise": 24})
for name, trial in [*shipped_trials(), ("photo-conditions", photo)]:
    built = build_model(trial)
    compile_for_training(built, trial, WarmupSchedule(0.1, 100, 10), jit_compile=True)
    flags[name] = built.training.jit_compile
quick = [t for n, t in shipped_trials() if n.startswith("quick")][0]
built = build_model(quick)
compile_for_training(built, quick, WarmupSchedule(0.1, 100, 10), jit_compile=True)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (16, 32, 32, 3)).astype("float32")
y = {"logits": np.eye(20, dtype="float32")[rng.integers(0, 20, 16)],
     "fine_logits": np.eye(100, dtype="float32")[rng.integers(0, 100, 16)]}
loss = built.training.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][-1]
print(json.dumps({"backend": keras.backend.backend(), "flags": flags,
                  "loss": float(loss), "jit": built.training.jit_compile}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_every_shipped_model_compiles_its_train_step_on_jax():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": QUICK_XLA,
    }
    done = subprocess.run(
        [sys.executable, "-c", JAX_CHECK],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert set(report["flags"]) == {name for name, _ in shipped_trials()} | {"photo-conditions"}
    assert all(report["flags"].values()), report["flags"]
    assert report["jit"] is True and np.isfinite(report["loss"])


def test_compiling_is_the_default_on_a_gpu_and_follows_the_measurement_on_a_cpu():
    assert device.choose_jit_compile("auto", on_gpu=True, backend_name="tensorflow")
    assert device.choose_jit_compile("auto", on_gpu=True, backend_name="jax")
    for backend, faster in device.CPU_COMPILED_IS_FASTER.items():
        assert device.choose_jit_compile("auto", on_gpu=False, backend_name=backend) is faster
    assert device.choose_jit_compile("on", on_gpu=False, backend_name="torch")
    assert not device.choose_jit_compile("off", on_gpu=True, backend_name="jax")
    # Whatever the default, the measurement it rests on is recorded.
    recorded = json.loads((REPO / "bench" / "results" / "jit_compile_cpu.json").read_text())
    for backend, faster in device.CPU_COMPILED_IS_FASTER.items():
        steps = {r["mode"]: r["step_seconds"] for r in recorded[backend]["records"]}
        assert (steps["compiled"] < steps["eager"]) is faster, (backend, steps)


# The GPU machine has JAX but no TensorFlow: the probe runs there the same way.
PROBE_WITHOUT_TENSORFLOW = """
import runpy, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("no TensorFlow on the GPU machine")
sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ["bench/gpu_probe.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_probe.py", run_name="__main__")
"""


@pytest.mark.slow
def test_the_gpu_probe_runs_its_tiny_dry_run_on_a_cpu(tmp_path):
    out = tmp_path / "probe.json"
    # A dry run: it proves the probe runs and reports, not how fast the code XLA makes is.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": QUICK_XLA}
    command = [sys.executable, "bench/gpu_probe.py"]
    backend = "tensorflow"
    if importlib.util.find_spec("jax") is not None:
        env["KERAS_BACKEND"], backend = "jax", "jax"
        command = [sys.executable, "-c", PROBE_WITHOUT_TENSORFLOW]
    done = subprocess.run(
        [*command, "--tiny", "--modes", "compiled", "--out", str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tiny"] and report["config"] == "gpu" and report["machine"]["cores"] >= 1
    assert report["backend"] == backend
    # Only the compiled mode: eager JAX takes minutes here even for a ResNet-8
    # (its records in bench/results/jit_compile_cpu.json come from the same code).
    (record,) = report["records"]
    assert record["mode"] == "compiled" and record["keras_jit_compile"]
    assert record["first_call_seconds"] > 0 and record["step_seconds"] > 0
    # 45,000 images in whole batches of 16, plus the val pass.
    assert record["epoch_seconds"] >= record["step_seconds"] * (45_000 // 16)
    assert isinstance(record["epochs_in_budget"], int)


def test_a_layer_that_cannot_compile_is_refused_loudly_not_run_eagerly():
    # What every shipped model did before: Keras' RandomTranslation turned compiling off.
    pixels = keras.Input((32, 32, 3))
    x = keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant")(pixels)
    logits = keras.layers.Dense(20, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(pixels, logits)
    trial = TrialConfig(fine_label_weight=0.0)
    from cifarflow.components.train.models import BuiltModel

    with pytest.raises(RuntimeError, match="refused jit_compile"):
        compile_for_training(
            BuiltModel(model, model), trial, WarmupSchedule(0.1, 100, 10), jit_compile=True
        )

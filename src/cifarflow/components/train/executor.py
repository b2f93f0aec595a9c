"""The train step: one trial's hyper-parameters and the data in, a servable model out.

`train(data_dir, config, out_dir)` is what the CLI (`cifarflow train`), the
KFP component and the tests call. The training loop is pure Keras 3, so it
runs on TensorFlow here and on JAX on a GPU machine; only `export.py` uses
TensorFlow, to write the SavedModel.

Output folder (a KFP `Model` artifact; everything but `checkpoint/` is what a
model store version holds):

    saved_model.pb, variables/, assets/    SavedModel: serving_default + predict_pixels
    model.keras                            the best epoch's Keras model (coarse logits)
    model.tflite                           the predict_pixels signature for TFLite
    history.json, curves.png               per-epoch metrics and their plot
    train_summary.json                     trial, class names, temperature, timings;
                                           written last: its presence means "complete"
    checkpoint/                            resume state while training (removed at the end)

With a checkpoint store and a run id, each epoch's checkpoint is also copied
there (`durable_checkpoints`), so a new pod with an empty folder resumes too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cifarflow.atomic_files import write_json_atomic
from cifarflow.classes import NUM_FINE_CLASSES
from cifarflow.components.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from cifarflow.components.train import checkpointing, device
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.data import TrainingData, load_training_data
from cifarflow.components.train.durable_checkpoints import (
    Disabled,
    DurableCheckpoints,
    open_durable,
)
from cifarflow.components.train.models import build_model
from cifarflow.components.train.models.build import FINE_LOGITS_LAYER, LOGITS_LAYER
from cifarflow.components.train.schedules import WarmupSchedule
from cifarflow.errors import BadInputError
from cifarflow.s3 import S3Settings

SUMMARY_FILE = "train_summary.json"
HISTORY_FILE = "history.json"
KERAS_FILE = "model.keras"
CURVES_FILE = "curves.png"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished trial reports (also saved as `train_summary.json`)."""

    out_dir: str
    trial: dict[str, Any]
    class_names: list[str]
    best_epoch: int
    epochs_run: int
    best_val_accuracy: float
    val_loss: float
    temperature: float
    val_ece_before: float
    val_ece_after: float
    train_seconds: float
    stopped_early: bool
    resumed: bool
    params: int
    backend: str
    device: str
    dtype_policy: str
    tflite: bool

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> TrainResult:
        values = json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def is_complete(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / SUMMARY_FILE).is_file()


def _optimizer(config: TrialConfig, schedule: WarmupSchedule) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)


def _epoch_line(epoch: int, planned: int, row: dict[str, Any], best_epoch: int, best: float) -> str:
    return (
        f"epoch {epoch}/{planned}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['learning_rate']:.5f}  "
        f"{row['seconds']:.0f}s  (best {best:.4f} @ {best_epoch})"
    )


def train(
    data_dir: str | os.PathLike,
    config: TrialConfig,
    out_dir: str | os.PathLike,
    *,
    log: Callable[[str], None] | None = None,
    export_tflite: bool = True,
    checkpoint_store: str | None = None,
    run_id: str | None = None,
    s3_settings: S3Settings | None = None,
) -> TrainResult:
    """Trains one trial, resuming from `out_dir/checkpoint` if a previous run was killed.

    Args:
        data_dir: a preprocessed dataset (`cifarflow.data.splits` layout).
        config: the trial's hyper-parameters.
        out_dir: output folder; re-running with the same folder resumes, and
            a folder that holds a finished trial is returned as it is.
        log: where progress lines go (default: stderr).
        export_tflite: also write `model.tflite`.
        checkpoint_store: a model store (`s3://bucket/prefix` or a folder) that
            also keeps each epoch's checkpoint, under `.checkpoints/<run_id>/`,
            so a pod that lost `out_dir` resumes; None keeps checkpoints local.
        run_id: the pipeline run's id (required with `checkpoint_store`).
        s3_settings: S3 endpoint and keys (default: the S3_* environment variables).

    Returns:
        The trial's summary (also in `out_dir/train_summary.json`).

    Raises:
        BadInputError: the data folder is not a preprocessed dataset, or the
            checkpoint store is unusable.
        DataAnomalyError: the data breaks the schema.
        RemoteError: the checkpoint store cannot be read at the start.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out_dir)
    durable = open_durable(checkpoint_store, run_id, config, log, s3_settings)
    if is_complete(out):
        log(f"train: {out} already holds a finished trial; nothing to do")
        durable.remove()  # in case the last run died between its summary and this
        return TrainResult.load(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_training_data(data_dir)
    previous_policy = keras.mixed_precision.global_policy().name
    policy = device.dtype_policy(config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(data, config, out, log, policy, export_tflite, durable)
    finally:
        durable.close()  # after a failure, the newest checkpoint still reaches the store
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(
    data: TrainingData,
    config: TrialConfig,
    out: Path,
    log: Callable[[str], None],
    policy: str,
    export_tflite: bool,
    durable: DurableCheckpoints | Disabled,
) -> TrainResult:
    ckpt_dir = out / checkpointing.CHECKPOINT_DIR
    durable.restore(ckpt_dir)
    state = checkpointing.load_state(ckpt_dir)
    resumed = state is not None
    if state is not None and state.trial != config.to_dict():
        # Resuming someone else's trial would silently mix two experiments.
        raise BadInputError(
            f"{out} holds a checkpoint of a different trial; use a fresh --out or delete {ckpt_dir}"
        )
    state = state or checkpointing.TrainingState(
        planned_epochs=config.epochs, trial=config.to_dict()
    )

    built = build_model(config, data.pixel_mean, data.pixel_std, num_classes=len(data.class_names))
    model, inference = built.training, built.inference
    steps_per_epoch = math.ceil(len(data.train_images) / config.batch_size)
    schedule = WarmupSchedule(
        config.learning_rate,
        total_steps=state.planned_epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        kind=config.schedule,
    )
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing
    )
    y_train: Any = _one_hot(data.train_coarse, len(data.class_names))
    if not built.has_fine_head:
        model.compile(optimizer=_optimizer(config, schedule), loss=loss, metrics=["accuracy"])
    else:
        model.compile(
            optimizer=_optimizer(config, schedule),
            loss={LOGITS_LAYER: loss, FINE_LOGITS_LAYER: loss},
            loss_weights={LOGITS_LAYER: 1.0, FINE_LOGITS_LAYER: config.fine_label_weight},
            metrics={LOGITS_LAYER: ["accuracy"]},
        )
        y_train = {
            LOGITS_LAYER: y_train,
            FINE_LOGITS_LAYER: _one_hot(data.train_fine, NUM_FINE_CLASSES),
        }
    if resumed:
        checkpointing.restore_checkpoint(ckpt_dir, model)
        log(
            f"train: resuming from {ckpt_dir}: {state.epochs_done} of {state.planned_epochs} epochs done"
        )
    log(
        f"train: {model.name}, {model.count_params():,} parameters, {len(data.train_images):,} train / "
        f"{len(data.val_images):,} val images, {policy} on {device.backend()} ({device.describe_device()})"
    )

    budget = config.time_budget_minutes * 60.0
    run_seconds: list[float] = []
    stopped_early = False
    while state.epochs_done < state.planned_epochs:
        epoch = state.epochs_done
        started = time.monotonic()
        fit = model.fit(
            data.train_images,
            y_train,
            batch_size=config.batch_size,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=True,
            verbose=0,
        )
        val_logits = _predict_logits(inference, data.val_images)
        seconds = time.monotonic() - started
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        accuracy_key = next(k for k in logs if k.endswith("accuracy"))
        row = {
            "epoch": epoch + 1,
            "loss": logs["loss"],
            "accuracy": logs[accuracy_key],
            "val_loss": negative_log_likelihood(val_logits, data.val_coarse),
            "val_accuracy": float((val_logits.argmax(axis=1) == data.val_coarse).mean()),
            "learning_rate": float(
                keras.ops.convert_to_numpy(
                    schedule(
                        max(int(keras.ops.convert_to_numpy(model.optimizer.iterations)) - 1, 0)
                    )
                )
            ),
            "seconds": seconds,
        }
        improved = row["val_accuracy"] > state.best_val_accuracy
        if improved:
            state.best_val_accuracy, state.best_epoch, state.epochs_without_gain = (
                row["val_accuracy"],
                epoch + 1,
                0,
            )
        else:
            state.epochs_without_gain += 1
        state.history.append(row)
        state.epochs_done = epoch + 1
        state.train_seconds += seconds
        run_seconds.append(seconds)
        log(
            _epoch_line(
                epoch + 1, state.planned_epochs, row, state.best_epoch, state.best_val_accuracy
            )
        )
        if budget > 0:
            # The median resists one slow epoch (a neighbour's burst) but follows a lasting change.
            _replan(
                state,
                budget,
                float(np.median(run_seconds)),
                schedule,
                steps_per_epoch,
                model,
                log,
                config.epochs,
            )
        checkpointing.save_checkpoint(ckpt_dir, model, state, improved)
        durable.save(ckpt_dir, state.epochs_done)
        patience = config.early_stopping_patience
        if (
            patience
            and state.epochs_without_gain >= patience
            and state.epochs_done < state.planned_epochs
        ):
            log(f"train: stopping early, no val-accuracy gain for {patience} epochs")
            stopped_early = True
            break

    model.load_weights(ckpt_dir / checkpointing.BEST_WEIGHTS)
    val_logits = _predict_logits(inference, data.val_images)
    temperature = fit_temperature(val_logits, data.val_coarse)
    ece_before = expected_calibration_error(softmax(val_logits), data.val_coarse)
    ece_after = expected_calibration_error(softmax(val_logits / temperature), data.val_coarse)
    log(
        f"train: best epoch {state.best_epoch}: val_acc {state.best_val_accuracy:.4f}; temperature {temperature:.3f} (val ECE {ece_before:.4f} -> {ece_after:.4f})"
    )

    # Exported in float32 (see _write_outputs): the served graph should not depend on the training policy.
    _write_outputs(out, inference, data, config, temperature, export_tflite, log)
    (out / HISTORY_FILE).write_text(json.dumps(state.history, indent=1) + "\n")
    from cifarflow.components.train.plots import plot_curves

    plot_curves(
        state.history,
        out / CURVES_FILE,
        title=f"{inference.name} ({config.optimizer}, lr {config.learning_rate})",
    )
    result = TrainResult(
        out_dir=str(out),
        trial=config.to_dict(),
        class_names=list(data.class_names),
        best_epoch=state.best_epoch,
        epochs_run=state.epochs_done,
        best_val_accuracy=state.best_val_accuracy,
        val_loss=negative_log_likelihood(val_logits, data.val_coarse),
        temperature=temperature,
        val_ece_before=ece_before,
        val_ece_after=ece_after,
        train_seconds=state.train_seconds,
        stopped_early=stopped_early,
        resumed=resumed,
        params=int(inference.count_params()),
        backend=device.backend(),
        device=device.describe_device(),
        dtype_policy=policy,
        tflite=(out / "model.tflite").is_file(),
    )
    write_json_atomic(out / SUMMARY_FILE, dataclasses.asdict(result), indent=1)
    durable.remove()  # first: it stops uploads that still read from ckpt_dir
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


def _replan(
    state: checkpointing.TrainingState,
    budget: float,
    epoch_seconds: float,
    schedule: WarmupSchedule,
    steps_per_epoch: int,
    model: keras.Model,
    log: Callable[[str], None],
    max_epochs: int | None = None,
) -> None:
    """Re-plans the epochs (and the schedule's length) so training ends within the budget.

    On a shared machine the epoch time moves with the neighbours' load. The
    plan shrinks as soon as it no longer fits. It grows back (never past
    `max_epochs`) only in the first half of the plan and only when at least
    two more epochs fit: growing late would raise a learning rate that is
    already decaying, and every change recompiles the training step.
    """
    affordable = state.epochs_done + int(max(budget - state.train_seconds, 0.0) // epoch_seconds)
    ceiling = max_epochs or state.planned_epochs
    planned = state.planned_epochs
    if affordable < planned:
        planned = max(state.epochs_done, affordable)
    elif affordable >= planned + 2 and planned < ceiling and state.epochs_done * 2 <= planned:
        planned = min(ceiling, affordable - 1)
    if planned != state.planned_epochs:
        log(
            f"train: time budget, {epoch_seconds:.0f}s per epoch leaves room for {planned} epochs (planned {state.planned_epochs})"
        )
        state.planned_epochs = planned
        schedule.total_steps = max(planned * steps_per_epoch, 1)
        # The schedule's constants are baked into the compiled step: rebuild it.
        model.make_train_function(force=True)


def _write_outputs(
    out: Path,
    inference: keras.Model,
    data: TrainingData,
    config: TrialConfig,
    temperature: float,
    export_tflite: bool,
    log: Callable[[str], None],
) -> None:
    from cifarflow.components.train import export

    if keras.mixed_precision.global_policy().name != "float32":
        inference = _float32_copy(inference, config, data)
    partial = out / f".partial.{KERAS_FILE}"
    inference.save(partial)
    os.replace(partial, out / KERAS_FILE)
    if device.backend() != "tensorflow":
        log(
            f"train: SavedModel export skipped on {device.backend()}: run `cifarflow train --export-only --out {out}` with KERAS_BACKEND=tensorflow"
        )
        return
    export.export_saved_model(inference, out, data.class_names, temperature)
    if export_tflite:
        try:
            export.export_tflite(out, out / export.TFLITE_FILE)
        except Exception as exc:  # TFLite is a bonus; the SavedModel is the contract
            log(f"train: TFLite export skipped: {type(exc).__name__}: {exc}")


def _float32_copy(trained: keras.Model, config: TrialConfig, data: TrainingData) -> keras.Model:
    """The same model and weights with float32 compute.

    Mixed-precision variables are float32 already; only the layers' compute
    dtype changes, so the served graph and the `.keras` file never depend on
    the precision (or the CPU) training happened to use.
    """
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(
            config, data.pixel_mean, data.pixel_std, num_classes=len(data.class_names)
        ).inference
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(trained.get_weights())
    return copy

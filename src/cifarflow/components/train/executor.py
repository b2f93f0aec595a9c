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

import base64
import dataclasses
import html
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from cifarflow.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from cifarflow.components import candidate as contract
from cifarflow.components.train import device
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.data import TrainingData, load_training_data
from cifarflow.components.train.durable_checkpoints import (
    Disabled,
    DurableCheckpoints,
    open_durable,
)
from cifarflow.components.train.models import build_model
from cifarflow.components.train.run import TrainingRun, compiled_words, predict_logits
from cifarflow.s3 import S3Settings

_log = logging.getLogger(__name__)


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
    # Defaults: summaries written before these fields existed still load.
    jit_compile: bool = False
    train_step: str = ""
    best_is_ema: bool = False
    planned_epochs: int = 0

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> TrainResult:
        values = json.loads((Path(out_dir) / contract.TRAIN_SUMMARY_FILE).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def is_complete(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / contract.TRAIN_SUMMARY_FILE).is_file()


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
    log = log or _log.info
    out = Path(out_dir)
    durable = open_durable(checkpoint_store, run_id, config, log, s3_settings)
    if is_complete(out):
        log(f"{out} already holds a finished trial; nothing to do")
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
    jit_compile = device.use_jit_compile(config.jit_compile)
    run = TrainingRun(data, config, out, log, durable, jit_compile)
    log(run.header(policy))
    stopped_early = run.run()
    state = run.state

    run.load_best()
    val_logits = predict_logits(run.inference, data.val_images)
    temperature = fit_temperature(val_logits, data.val_coarse)
    ece_before = expected_calibration_error(softmax(val_logits), data.val_coarse)
    ece_after = expected_calibration_error(softmax(val_logits / temperature), data.val_coarse)
    weights = "weight average" if state.best_is_ema else "live weights"
    log(
        f"best epoch {state.best_epoch} ({weights}): val_acc {state.best_val_accuracy:.4f}; "
        f"temperature {temperature:.3f} (val ECE {ece_before:.4f} -> {ece_after:.4f})"
    )

    # Exported in float32 (see _write_outputs): the served graph should not depend on the training policy.
    _write_outputs(out, run.inference, data, config, temperature, export_tflite, log)
    (out / contract.HISTORY_FILE).write_text(json.dumps(state.history, indent=1) + "\n")
    from cifarflow.components.train.plots import plot_curves

    plot_curves(
        state.history,
        out / contract.CURVES_FILE,
        title=f"{run.inference.name} ({config.optimizer}, lr {config.learning_rate})",
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
        resumed=run.resumed,
        params=int(run.inference.count_params()),
        backend=device.backend(),
        device=device.describe_device(),
        dtype_policy=policy,
        tflite=(out / "model.tflite").is_file(),
        jit_compile=jit_compile,
        train_step=compiled_words(jit_compile),
        best_is_ema=state.best_is_ema,
        planned_epochs=state.planned_epochs,
    )
    contract.write_train_summary(out, dataclasses.asdict(result))
    durable.remove()  # first: it stops uploads that still read from ckpt_dir
    shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    return result


def checkpoint_target(
    checkpoint_store: str, run_id: str, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The (store, run id) a KFP train task keeps durable checkpoints under, or (None, None).

    The pipeline hands the run id over in the environment (CIFARFLOW_RUN_ID),
    not as a parameter: KFP's cache key holds every input, so a run id there
    would retrain unchanged trials in every run. Without a run id (kfp.local)
    checkpoints stay local.

    >>> checkpoint_target("s3://models/cifarflow", "", {"CIFARFLOW_RUN_ID": "run-7"})
    ('s3://models/cifarflow', 'run-7')
    >>> checkpoint_target("s3://models/cifarflow", "", {})
    (None, None)
    """
    run_id = run_id or environ.get("CIFARFLOW_RUN_ID", "")
    if not checkpoint_store or not run_id:
        if checkpoint_store:
            _log.info("no run id (kfp.local): checkpoints stay in the output folder")
        return None, None
    return checkpoint_store, run_id


def model_metadata(config: TrialConfig, result: TrainResult) -> dict[str, Any]:
    """What the KFP `Model` artifact's metadata says about the trained model."""
    return {
        "framework": "keras",
        "architecture": config.architecture,
        "params": result.params,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "temperature": result.temperature,
        "backend": result.backend,
        "device": result.device,
        "jit_compile": result.jit_compile,
        "best_is_ema": result.best_is_ema,
    }


def summary_metrics(result: TrainResult) -> dict[str, float]:
    """The numbers the KFP `Metrics` artifact shows for a trial."""
    return {
        "val_accuracy": result.best_val_accuracy,
        "val_loss": result.val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "temperature": result.temperature,
        "val_ece_before": result.val_ece_before,
        "val_ece_after": result.val_ece_after,
    }


def curves_html(trial: Mapping[str, Any], png: bytes) -> str:
    """A self-contained page with the trial's hyper-parameters and its curves (PNG inlined).

    >>> curves_html({"depth": 8}, b"png").startswith("<!doctype html>")
    True
    """
    encoded = base64.b64encode(png).decode()
    return (
        "<!doctype html><html><body><h1>Training curves</h1>"
        f"<pre>{html.escape(str(dict(trial)))}</pre>"
        f"<img alt='training curves' src='data:image/png;base64,{encoded}'></body></html>"
    )


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
    partial = out / f".partial.{contract.KERAS_FILE}"
    inference.save(partial)
    os.replace(partial, out / contract.KERAS_FILE)
    if device.backend() != "tensorflow":
        log(
            f"SavedModel export skipped on {device.backend()}: run `cifarflow train --export-only --out {out}` with KERAS_BACKEND=tensorflow"
        )
        return
    export.export_saved_model(inference, out, data.class_names, temperature)
    if export_tflite:
        try:
            export.export_tflite(out, out / export.TFLITE_FILE)
        except Exception as exc:  # TFLite is a bonus; the SavedModel is the contract
            log(f"TFLite export skipped: {type(exc).__name__}: {exc}")


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

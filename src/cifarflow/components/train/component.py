"""KFP v2 component for the train step (a thin wrapper over `executor.train`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from cifarflow.images import gpu_image


@dsl.component(base_image=gpu_image(), install_kfp_package=False)
def train_component(
    data: Input[Dataset],
    trial: dict,
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    checkpoint_store: str = "",
    run_id: str = "",
) -> None:
    """Trains one trial of a hyper-parameter grid.

    Args:
        data: the preprocessed dataset (train and val are used).
        trial: one item of `Grid.trial_dicts()` (ints may arrive as floats).
        model: the trial folder: SavedModel (serving_default, predict_pixels),
            model.keras, model.tflite, history.json, train_summary.json.
        metrics: best val accuracy, val loss, epochs, training seconds, temperature.
        curves: loss and accuracy per epoch (HTML with the plot inlined).
        checkpoint_store: the model store (s3://bucket/prefix or a folder);
            each epoch's checkpoint is also kept there under
            `.checkpoints/<run_id>/`, because `model.path` is pod-local
            scratch: a retried or preempted pod resumes from the store's copy.
            "" keeps checkpoints local. S3 settings come from S3_* variables.
        run_id: the pipeline run id; "" reads the CIFARFLOW_RUN_ID variable,
            which the pipeline fills from the pod's `pipeline/runid` label.
            Without either, checkpoints stay local (kfp.local).

    Example:
        >>> grid = load_grid(cifarflow.configs.resolve("quick"))
        >>> with dsl.ParallelFor(grid.trial_dicts()) as trial:
        ...     train_task = train_component(data=preprocess_task.outputs["dataset"], trial=trial,
        ...         checkpoint_store="s3://models/cifarflow")
    """
    import base64
    import html
    import os
    from pathlib import Path

    from cifarflow.components.metric_artifacts import log_metrics
    from cifarflow.components.train.config import TrialConfig
    from cifarflow.components.train.executor import CURVES_FILE, train

    config = TrialConfig.from_dict(trial)
    # The pipeline hands the run id over in the environment, not as `run_id`:
    # KFP's cache key holds every input, so a run id there would retrain
    # unchanged trials in every run.
    run_id = run_id or os.environ.get("CIFARFLOW_RUN_ID", "")
    store = checkpoint_store if run_id else ""
    if checkpoint_store and not run_id:
        print("train: no run id (kfp.local): checkpoints stay in the output folder", flush=True)
    result = train(
        data.path, config, model.path, checkpoint_store=store or None, run_id=run_id or None
    )
    model.metadata.update(
        {
            "framework": "keras",
            "architecture": config.architecture,
            "params": result.params,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "temperature": result.temperature,
            "backend": result.backend,
            "device": result.device,
        }
    )
    log_metrics(
        metrics,
        {
            "val_accuracy": result.best_val_accuracy,
            "val_loss": result.val_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_seconds": result.train_seconds,
            "temperature": result.temperature,
            "val_ece_before": result.val_ece_before,
            "val_ece_after": result.val_ece_after,
        },
    )
    png = base64.b64encode((Path(model.path) / CURVES_FILE).read_bytes()).decode()
    Path(curves.path).write_text(
        f"<!doctype html><html><body><h1>Training curves</h1><pre>{html.escape(str(config.to_dict()))}</pre>"
        f"<img alt='training curves' src='data:image/png;base64,{png}'></body></html>"
    )

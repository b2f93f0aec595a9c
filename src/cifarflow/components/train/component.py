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

    Example (inside a pipeline function)::

        grid = load_grid(cifarflow.configs.resolve("quick"))
        with dsl.ParallelFor(grid.trial_dicts()) as trial:
            train_task = train_component(
                data=preprocess_task.outputs["splits"],
                trial=trial,
                checkpoint_store="s3://models/cifarflow",
            )
    """
    import os
    from pathlib import Path

    from cifarflow import step_logging
    from cifarflow.components import candidate as contract
    from cifarflow.components.metric_artifacts import log_metrics
    from cifarflow.components.train import executor
    from cifarflow.components.train.config import TrialConfig

    step_logging.configure()
    config = TrialConfig.from_dict(trial)
    store, run = executor.checkpoint_target(checkpoint_store, run_id, os.environ)
    result = executor.train(data.path, config, model.path, checkpoint_store=store, run_id=run)
    model.metadata.update(executor.model_metadata(config, result))
    log_metrics(metrics, executor.summary_metrics(result))
    png = (Path(model.path) / contract.CURVES_FILE).read_bytes()
    Path(curves.path).write_text(executor.curves_html(config.to_dict(), png))

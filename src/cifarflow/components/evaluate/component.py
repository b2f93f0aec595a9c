"""KFP v2 component for the evaluate step (a thin wrapper over `executor.evaluate`)."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def evaluate_component(
    data: Input[Dataset],
    model: Input[Model],
    candidate: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> None:
    """Scores a trained model on val, gate and test.

    Args:
        data: the preprocessed dataset.
        model: a train_component output.
        candidate: the model plus its evaluation (metrics.json, gate and test
            predictions and labels): what select_best ranks and publish copies verbatim.
        metrics: test accuracy, top-5, macro precision/recall/F1, ECE; val_* for
            ranking; gate_* (the split the champion gate compares on).
        confusion: the test confusion matrix with the class names.
        report: per-class tables and confusion heat-maps.

    Example (inside a pipeline)::

        eval_task = evaluate_component(
            data=preprocess_task.outputs["splits"], model=train_task.outputs["model"]
        )
    """
    import shutil
    from pathlib import Path

    from cifarflow.components.evaluate.executor import (
        REPORT_FILE,
        candidate_metadata,
        evaluate,
        logged_metrics,
    )
    from cifarflow.components.metric_artifacts import log_metrics, write_metadata_file

    result = evaluate(model.path, data.path, candidate.path)
    log_metrics(metrics, logged_metrics(result.metrics))
    confusion.log_confusion_matrix(result.metrics.class_names, result.metrics.confusion_matrix)
    write_metadata_file(confusion)
    candidate.metadata.update(candidate_metadata(result.metrics))
    shutil.copyfile(Path(candidate.path) / REPORT_FILE, report.path)

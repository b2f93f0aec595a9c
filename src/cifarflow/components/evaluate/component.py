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
    """Scores a trained model on val and test.

    Args:
        data: the preprocessed dataset.
        model: a train_component output.
        candidate: the model plus its evaluation (metrics.json,
            test_predictions.npy, test_labels.npy): what select_best ranks and
            publish copies verbatim.
        metrics: test accuracy, top-5, macro precision/recall/F1, ECE; val_* for selection.
        confusion: the test confusion matrix with the class names.
        report: per-class tables and confusion heat-maps.

    Example:
        >>> eval_task = evaluate_component(data=preprocess_task.outputs["dataset"],
        ...                                model=train_task.outputs["model"])
    """
    import shutil
    from pathlib import Path

    from cifarflow.components.evaluate.executor import REPORT_FILE, evaluate
    from cifarflow.components.metric_artifacts import log_metrics, write_metadata_file

    result = evaluate(model.path, data.path, candidate.path)
    m = result.metrics
    names = (
        "accuracy",
        "top5_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "ece",
        "ece_uncalibrated",
        "val_accuracy",
        "val_top5_accuracy",
        "val_macro_f1",
        "val_loss",
    )
    log_metrics(metrics, {name: m[name] for name in names if name in m})
    confusion.log_confusion_matrix(list(m["class_names"]), m["confusion_matrix"])
    write_metadata_file(confusion)
    candidate.metadata.update(
        {
            "accuracy": m["accuracy"],
            "val_accuracy": m.get("val_accuracy", 0.0),
            "trial": m.get("trial", {}),
        }
    )
    shutil.copyfile(Path(candidate.path) / REPORT_FILE, report.path)

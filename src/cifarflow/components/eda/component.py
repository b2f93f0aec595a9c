"""KFP v2 component for the EDA step (a thin wrapper over `executor.eda`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def eda_component(
    splits: Input[Dataset],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> None:
    """Writes the EDA report the KFP UI shows (HTML and Markdown) and its metrics.

    Args:
        splits: preprocess output.
        report: self-contained HTML report, images embedded.
        summary: Markdown summary.
        metrics: scalar dataset metrics (counts, imbalance, duplicates, channel stats).

    Example::

        eda_task = eda_component(splits=preprocess_task.outputs["splits"])
    """
    import os
    import shutil
    import tempfile

    from cifarflow import step_logging
    from cifarflow.components.eda.executor import REPORT_HTML, SUMMARY_MD, eda
    from cifarflow.components.metric_artifacts import log_metrics

    step_logging.configure()
    workdir = tempfile.mkdtemp(prefix="eda-")
    result = eda(splits.path, workdir)
    os.makedirs(os.path.dirname(report.path), exist_ok=True)
    os.makedirs(os.path.dirname(summary.path), exist_ok=True)
    # The KFP UI renders an HTML/Markdown artifact from the file at its path.
    shutil.copyfile(os.path.join(workdir, REPORT_HTML), report.path)
    shutil.copyfile(os.path.join(workdir, SUMMARY_MD), summary.path)
    log_metrics(metrics, result.metrics)
    shutil.rmtree(workdir, ignore_errors=True)

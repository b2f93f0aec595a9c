"""KFP v2 exit-handler component: records how the run ended, failed runs included."""

from kfp import dsl
from kfp.dsl import Markdown, Output, PipelineTaskFinalStatus

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def record_status_component(status: PipelineTaskFinalStatus, record: Output[Markdown]) -> str:
    """Writes the run's final state as the engine reports it.

    Runs after every other task, whatever their outcome (it is the pipeline's
    `dsl.ExitHandler`), so a failed run still leaves a record in the UI. It
    records the state only: Kubeflow Pipelines (up to 2.17 at least) leaves
    the status's error code and message empty, so the cause of a failure is
    in the failed step's log (see `cifarflow.components.record_status.executor`).

    Args:
        status: filled in by the engine with the state of the tasks under the exit handler.
        record: Markdown shown in the UI.

    Returns:
        The engine's state name: COMPLETE, FAILED, CANCELED, ... on Kubeflow
        Pipelines (ML Metadata execution states); SUCCEEDED or FAILED under kfp.local.
    """
    import os

    from cifarflow import step_logging
    from cifarflow.components.record_status.executor import record_status

    step_logging.configure()
    result = record_status(
        status.state,
        status.pipeline_job_resource_name,
        status.pipeline_task_name,
        status.error_code,
        status.error_message,
    )
    os.makedirs(os.path.dirname(record.path), exist_ok=True)
    with open(record.path, "w") as out:
        out.write(result.markdown)
    return result.state

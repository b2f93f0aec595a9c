"""KFP v2 exit-handler component: records how the run ended, failed runs included."""

from kfp import dsl
from kfp.dsl import Markdown, Output, PipelineTaskFinalStatus

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def record_status_component(status: PipelineTaskFinalStatus, record: Output[Markdown]) -> str:
    """Writes the run's final state and, when it failed, which task failed and why.

    Runs after every other task, whatever their outcome (it is the pipeline's
    `dsl.ExitHandler`), so a failed run still leaves a readable record in the UI.

    Args:
        status: filled in by KFP with the state of the tasks under the exit handler.
        record: Markdown shown in the UI.

    Returns:
        The state: SUCCEEDED, FAILED, ...
    """
    import os

    lines = [f"# Run {status.pipeline_job_resource_name}", "", f"State: **{status.state}**"]
    if status.error_code or status.error_message:
        lines += ["", f"Error ({status.error_code}): {status.error_message}"]
    os.makedirs(os.path.dirname(record.path), exist_ok=True)
    with open(record.path, "w") as out:
        out.write("\n".join(lines) + "\n")
    print(f"pipeline: run ended {status.state}", flush=True)
    return str(status.state)

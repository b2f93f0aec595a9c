"""What the exit handler records: the run's final state, as the engine reports it.

The state names differ by engine. Kubeflow Pipelines fills
`PipelineTaskFinalStatus.state` with the ML Metadata execution state of the
exit handler's group (backend/src/v2/driver/resolve.go at 2.17.0:
`producer.GetExecution().GetLastKnownState().String()`): COMPLETE, FAILED,
CANCELED, CACHED, or RUNNING. RUNNING is what backends before 2.17.0 report
when a ParallelFor sits inside the ExitHandler, as here (kubeflow/pipelines
#13321, fixed by #13322 in 2.17.0). kfp.local reports SUCCEEDED or FAILED.

Error details: the 2.17.0 backend leaves the status's error empty (a TODO in
the same function), so on a cluster the record names the state only and
points to the failed task's log; kfp.local fills a generic "Task ... failed."
message, recorded as given.
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)

# State names, per engine, grouped by what they mean for the run.
_SUCCEEDED = {"COMPLETE", "CACHED", "SUCCEEDED"}
_FAILED = {"FAILED"}
_CANCELED = {"CANCELED", "CANCELLED"}
_STILL_RUNNING = {"RUNNING", "NEW"}


@dataclasses.dataclass(frozen=True)
class StatusRecord:
    """The exit handler's output.

    Attributes:
        outcome: succeeded, failed, canceled or unknown.
        state: the engine's own state name, unchanged.
        markdown: the record shown in the UI.
    """

    outcome: str
    state: str
    markdown: str


def outcome_of(state: str) -> str:
    """succeeded, failed, canceled or unknown, for any engine's state name."""
    name = (state or "").upper()
    if name in _SUCCEEDED:
        return "succeeded"
    if name in _FAILED:
        return "failed"
    if name in _CANCELED:
        return "canceled"
    return "unknown"


def record_status(
    state: str | None,
    run_name: str | None = None,
    task_name: str | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
) -> StatusRecord:
    """Describes how the run ended from the fields the engine filled.

    Args:
        state: `PipelineTaskFinalStatus.state`.
        run_name: `pipeline_job_resource_name` (the Argo workflow's name on KFP).
        task_name: `pipeline_task_name`, the exit handler's group.
        error_code: filled by kfp.local only (KFP 2.17 leaves it empty).
        error_message: likewise.
    """
    state = state or "UNKNOWN"
    outcome = outcome_of(state)
    lines = [
        f"# Run {run_name or '(unnamed)'}",
        "",
        f"Outcome: **{outcome}** (engine state `{state}`)",
    ]
    if task_name:
        lines.append(f"Steps group: `{task_name}`")
    if error_message or error_code:
        lines += ["", f"Reported error ({error_code}): {error_message}"]
    if outcome == "failed":
        lines += [
            "",
            "The failed step's own log, in the run graph, holds the cause (its last line).",
        ]
    if state.upper() in _STILL_RUNNING:
        lines += [
            "",
            "The steps were still marked running when the exit handler started: Kubeflow Pipelines "
            "backends before 2.17.0 report this for a ParallelFor inside an ExitHandler "
            "(kubeflow/pipelines#13321). Read the outcome from the run graph.",
        ]
    log.info("run ended %s (%s)", outcome, state)
    return StatusRecord(outcome=outcome, state=state, markdown="\n".join(lines) + "\n")

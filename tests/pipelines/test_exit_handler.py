"""The exit handler records what the engine gives it, and no more.

The component runs through kfp's own executor (what `kfp.dsl.executor_main`
does in the pod) on the status payloads each engine sends:

- Kubeflow Pipelines 2.17.0: backend/src/v2/driver/resolve.go builds
  `PipelineTaskFinalStatus{State: <ML Metadata execution state>.String(),
  PipelineTaskName, PipelineJobResourceName, Error: &status.Status{}}` and
  marshals it with protojson: camelCase keys, an empty `error`.
- kfp.local 2.17: snake_case keys, SUCCEEDED/FAILED, and on failure
  `error: {code: 1, message: "Task ... failed."}`.
"""

from __future__ import annotations

import json

import pytest
from kfp.dsl.executor import Executor

from cifarflow.components.record_status.component import record_status_component
from cifarflow.components.record_status.executor import outcome_of, record_status


def _run_exit_task(tmp_path, status: dict) -> tuple[str, str]:
    record = tmp_path / "record.md"
    output_file = tmp_path / "executor_output.json"
    executor_input = {
        "inputs": {"parameterValues": {"status": status}},
        "outputs": {
            "artifacts": {
                "record": {
                    "artifacts": [
                        {
                            "name": "record",
                            "type": {"schemaTitle": "system.Markdown"},
                            "uri": str(record),
                        }
                    ]
                }
            },
            "parameters": {"Output": {"outputFile": str(tmp_path / "Output")}},
            "outputFile": str(output_file),
        },
    }
    Executor(executor_input, record_status_component).execute()
    returned = json.loads(output_file.read_text())["parameterValues"]["Output"]
    return returned, record.read_text()


@pytest.mark.parametrize(
    "state, outcome", [("COMPLETE", "succeeded"), ("FAILED", "failed"), ("CANCELED", "canceled")]
)
def test_kfp_2_17_payload(tmp_path, state, outcome):
    returned, record = _run_exit_task(
        tmp_path,
        {
            "state": state,
            "pipelineTaskName": "exit-handler-1",
            "pipelineJobResourceName": "cifarflow-x7k2p",
            "error": {},
        },
    )
    assert returned == state
    assert f"Outcome: **{outcome}** (engine state `{state}`)" in record
    assert "cifarflow-x7k2p" in record and "exit-handler-1" in record
    assert "Reported error" not in record  # KFP 2.17 sends none, so none is shown
    assert ("failed step's own log" in record) == (state == "FAILED")


def test_a_pre_2_17_backend_reporting_running_is_explained(tmp_path):
    _, record = _run_exit_task(
        tmp_path, {"state": "RUNNING", "pipelineTaskName": "exit-handler-1", "error": {}}
    )
    assert "Outcome: **unknown**" in record and "kubeflow/pipelines#13321" in record


def test_kfp_local_payload(tmp_path):
    returned, record = _run_exit_task(
        tmp_path,
        {
            "state": "FAILED",
            "pipeline_job_resource_name": "local-pipeline-exit-handler-1",
            "pipeline_task_name": "exit-handler-1",
            "error": {"code": 1, "message": "Task exit-handler-1 failed."},
        },
    )
    assert returned == "FAILED"
    assert (
        "Outcome: **failed**" in record
        and "Reported error (1): Task exit-handler-1 failed." in record
    )


def test_state_names_of_both_engines():
    assert [
        outcome_of(s)
        for s in ("COMPLETE", "CACHED", "SUCCEEDED", "FAILED", "CANCELED", "RUNNING", "", "NEW")
    ] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "failed",
        "canceled",
        "unknown",
        "unknown",
        "unknown",
    ]
    assert record_status(None).state == "UNKNOWN"

"""The record of one pipeline run: `runs/<run-id>/run.json`.

Written by the local runner after a run (succeeded or failed) and read by
`cifarflow runs list|compare`; uploaded with the artifacts so runs stored in
a bucket are compared the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_RECORD = "run.json"


def task_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each task's output artifacts (uri, metadata) and parameters, from kfp's executor_output.json."""
    tasks: dict[str, dict[str, Any]] = {}
    for output_file in sorted(run_dir.glob("*/executor_output.json")):
        data = json.loads(output_file.read_text())
        artifacts = {
            name: {"uri": entry["artifacts"][0].get("uri", ""), "metadata": entry["artifacts"][0].get("metadata", {})}
            for name, entry in data.get("artifacts", {}).items()
            if entry.get("artifacts")
        }
        tasks[output_file.parent.name] = {
            "artifacts": artifacts,
            "parameters": data.get("parameterValues", {}),
        }
    return tasks


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / RUN_RECORD
    partial = path.with_name(f".{RUN_RECORD}.partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(partial, path)
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None

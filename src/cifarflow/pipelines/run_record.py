"""The record of one pipeline run: `runs/<run-id>/run.json`.

Written by the local runner after a run (succeeded or failed) and read by
`cifarflow runs list|compare`; uploaded with the artifacts so runs stored in
a bucket are compared the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cifarflow.atomic_files import write_json_atomic

RUN_RECORD = "run.json"
_CACHE_HIT = re.compile(r"Task '?([\w.-]+)'? cache hit \(key=([0-9a-f]+)\)")


def task_outputs(run_dir: Path, cache_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Each task's output artifacts (uri, metadata) and parameters.

    Tasks that ran write kfp's `executor_output.json` under the run folder
    (loop iterations one level down: `for-loop-2-iteration-0/train-component`).
    Tasks served from kfp.local's cache ran in an earlier run: their outputs
    are found through the cache entry named in the run log.
    """
    tasks: dict[str, dict[str, Any]] = {}
    for output_file in sorted(run_dir.rglob("executor_output.json")):
        data = json.loads(output_file.read_text())
        artifacts = {
            name: {
                "uri": entry["artifacts"][0].get("uri", ""),
                "metadata": entry["artifacts"][0].get("metadata", {}),
            }
            for name, entry in data.get("artifacts", {}).items()
            if entry.get("artifacts")
        }
        task = output_file.parent.relative_to(run_dir).as_posix()
        tasks[task] = {
            "artifacts": artifacts,
            "parameters": data.get("parameterValues", {}),
            "cached": False,
        }
    log = run_dir / "run.log"
    if cache_dir is not None and log.is_file():
        for task, key in _CACHE_HIT.findall(log.read_text()):
            entry = next(iter(sorted(cache_dir.glob(f"{key}*.json"))), None)
            if entry is not None:
                tasks[f"{task} (cached {key[:8]})"] = _from_cache_entry(
                    json.loads(entry.read_text())
                )
    return tasks


def _from_cache_entry(outputs: dict[str, Any]) -> dict[str, Any]:
    artifacts, parameters = {}, {}
    for name, value in outputs.items():
        if isinstance(value, dict) and value.get("__kfp_artifact__"):
            artifacts[name] = {"uri": value.get("uri", ""), "metadata": value.get("metadata", {})}
        else:
            parameters[name] = value
    return {"artifacts": artifacts, "parameters": parameters, "cached": True}


def artifact_path(run_dir: Path, task: str, uri: str) -> Path:
    """Where a recorded artifact is on this machine.

    kfp.local records absolute paths, which hold where the run happened (cached
    tasks point into earlier runs); a run downloaded from S3 has the same
    `<task>/<output>` layout under its own folder.
    """
    path = Path(uri)
    if path.is_absolute() and path.exists():
        return path
    return run_dir / task / path.name


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / RUN_RECORD
    write_json_atomic(path, record, default=str)
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None

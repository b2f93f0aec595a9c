"""What `cifarflow run` prints when a run ends: the leaderboard and where everything is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarflow.pipelines.run_record import artifact_path


def describe_run(run_dir: Path, record: dict[str, Any]) -> str:
    lines = ["", f"run {record['run_id']}: {record['status']} in {record['wall_seconds']:.0f} s"]
    tasks = record.get("tasks", {})
    for task, outputs in tasks.items():
        for name, artifact in outputs["artifacts"].items():
            if name == "leaderboard":
                path = artifact_path(run_dir, task, artifact["uri"])
                if path.is_file():
                    lines += ["", path.read_text().rstrip()]
    for task, outputs in tasks.items():
        if "publish" in task:
            for artifact in outputs["artifacts"].values():
                path = artifact_path(run_dir, task, artifact["uri"])
                if path.is_file():
                    lines += ["", path.read_text().strip()]
    lines += ["", "artifacts:"]
    for task, outputs in sorted(tasks.items()):
        for name, artifact in sorted(outputs["artifacts"].items()):
            path = artifact_path(run_dir, task, artifact["uri"])
            lines.append(f"  {task}/{name}: {path}")
    lines.append(f"  run record: {run_dir / 'run.json'}; full log: {run_dir / 'run.log'}")
    return "\n".join(lines)

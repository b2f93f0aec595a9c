"""Listing and comparing pipeline runs, local (`runs/`) or stored in S3.

A run is a folder with `run.json` (see `run_record`). Comparison puts the
runs' parameters and run-summary metrics side by side, in the terminal and
as an HTML page with every trial's validation-accuracy curve.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from html import escape
from pathlib import Path
from typing import Any

from cifarflow.errors import BadInputError
from cifarflow.pipelines import run_record
from cifarflow.s3 import S3Location, S3Settings, describe_s3_error, is_s3_uri

SUMMARY_TASK_PREFIX = "select"


@dataclasses.dataclass
class RunView:
    """What list/compare show of one run."""

    run_id: str
    status: str
    started: str
    wall_seconds: float
    parameters: dict[str, Any]
    summary: dict[str, float]
    histories: dict[str, list[dict[str, Any]]]  # trial task -> per-epoch rows


def summary_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The run-summary Metrics of the select step, if the run got that far."""
    for task, outputs in sorted(record.get("tasks", {}).items()):
        if task.startswith(SUMMARY_TASK_PREFIX):
            for name, artifact in outputs["artifacts"].items():
                if "summary" in name:
                    return {
                        k: v for k, v in artifact["metadata"].items() if isinstance(v, (int, float))
                    }
    return {}


def _histories(run_dir: Path, record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    histories = {}
    for task, outputs in sorted(record.get("tasks", {}).items()):
        for artifact in outputs["artifacts"].values():
            uri = artifact.get("uri", "")
            history = run_record.artifact_path(run_dir, task, uri) / "history.json" if uri else None
            if history is not None and history.is_file():
                histories[task] = json.loads(history.read_text())
    return histories


def load_run(run_dir: Path) -> RunView | None:
    record = run_record.read_record(run_dir)
    if record is None:
        return None
    return RunView(
        run_id=record["run_id"],
        status=record["status"],
        started=record.get("started", ""),
        wall_seconds=float(record.get("wall_seconds", 0.0)),
        parameters=record.get("parameters", {}),
        summary=summary_metrics(record),
        histories=_histories(run_dir, record),
    )


def list_runs(source: str | Path) -> list[RunView]:
    """Runs under a local folder or an `s3://bucket/prefix`, newest first."""
    root = Path(_localise(str(source)))
    if not root.is_dir():
        raise BadInputError(f"no runs folder at {source}")
    runs = [view for path in root.iterdir() if path.is_dir() and (view := load_run(path))]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def find_runs(source: str | Path, run_ids: list[str]) -> list[RunView]:
    runs = {r.run_id: r for r in list_runs(source)}
    missing = [rid for rid in run_ids if rid not in runs]
    if missing:
        raise BadInputError(f"no run {', '.join(missing)} in {source} (see 'cifarflow runs list')")
    return [runs[rid] for rid in run_ids]


def _localise(source: str) -> str:
    """For `s3://bucket/prefix/<pipeline>`, downloads run.json files and histories to a temp folder."""
    if not is_s3_uri(source):
        return source
    location = S3Location.parse(source)
    client = S3Settings.from_env().client()
    target = Path(tempfile.mkdtemp(prefix="cifarflow-runs-"))
    prefix = location.key.strip("/") + "/" if location.key.strip("/") else ""
    try:
        for obj in client.list_objects(location.bucket, prefix=prefix, recursive=True):
            name = obj.object_name[len(prefix) :]
            if name.endswith(("/run.json", "/history.json", "/executor_output.json")):
                client.fget_object(location.bucket, obj.object_name, str(target / name))
    except Exception as exc:
        raise describe_s3_error(exc, location) from None
    return str(target)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _rows(runs: list[RunView]) -> list[tuple[str, list[str]]]:
    """(label, one value per run): identity, then parameters, then summary metrics."""
    params = sorted({k for r in runs for k in r.parameters})
    metrics = sorted({k for r in runs for k in r.summary})
    rows = [
        ("run", [r.run_id for r in runs]),
        ("status", [r.status for r in runs]),
        ("wall seconds", [_fmt(r.wall_seconds) for r in runs]),
    ]
    rows += [(f"param {k}", [_fmt(r.parameters.get(k, "")) for r in runs]) for k in params]
    rows += [(f"metric {k}", [_fmt(r.summary.get(k, "")) for r in runs]) for k in metrics]
    return rows


def table(runs: list[RunView]) -> str:
    """A plain-text table, one run per column (parameters, then metrics)."""
    rows = _rows(runs)
    width = max(len(name) for name, _ in rows)
    columns = [max(len(values[i]) for _, values in rows) for i in range(len(runs))]
    return "\n".join(
        name.ljust(width) + "  " + "  ".join(v.ljust(columns[i]) for i, v in enumerate(values))
        for name, values in rows
    )


def compare_html(runs: list[RunView]) -> str:
    """A self-contained page: the side-by-side table and every trial's validation curve."""
    from cifarflow.components.eda.charts import curves_svg

    series: dict[str, list[tuple[float, float]]] = {
        f"{run.run_id} / {trial}": [
            (row.get("epoch", i + 1), row["val_accuracy"])
            for i, row in enumerate(history)
            if "val_accuracy" in row
        ]
        for run in runs
        for trial, history in run.histories.items()
    }
    body = "".join(
        "<tr><th>"
        + escape(name)
        + "</th>"
        + "".join(f"<td>{escape(v)}</td>" for v in values)
        + "</tr>"
        for name, values in _rows(runs)
    )
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>cifarflow run comparison</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px}}th,td{{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;font-variant-numeric:tabular-nums}}
th{{background:#f2f4f6}}svg{{max-width:100%;height:auto}}</style></head>
<body><h1>Run comparison</h1><table>{body}</table>
<h2>Validation accuracy per epoch</h2>{curves_svg(series, "val accuracy") if series else "<p>No training histories in these runs.</p>"}
</body></html>
"""

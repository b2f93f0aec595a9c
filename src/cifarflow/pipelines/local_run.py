"""Running the pipeline on this machine with kfp.local.

`run_locally` runs the compiled DAG with `kfp.local.SubprocessRunner`
(each task a subprocess in this Python environment), under
`runs/<run-id>/<task>/<output>` — the layout KFP uses under its pipeline
root on a cluster — then writes `run.json` and, when asked, uploads the run
to an S3 bucket in the same layout.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifarflow.errors import CifarflowError
from cifarflow.pipelines import run_record
from cifarflow.pipelines.console import capture_console

_RUN_DIR = re.compile(r"^-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d+$")


class PipelineFailedError(CifarflowError):
    """A task of the pipeline failed; its artifacts so far are kept."""

    exit_code = 6


@dataclasses.dataclass(frozen=True)
class LocalRunOptions:
    """Where and how a local run happens.

    Attributes:
        runs_dir: parent of the run folders.
        enable_caching: reuse the outputs of tasks whose inputs did not change
            (ingest, preprocess and eda have caching on; publish never).
        artifacts: `s3://bucket/prefix` to upload the run to, or None.
        verbose: show kfp's full task logs on the console, not only progress.
    """

    runs_dir: Path = Path("runs")
    enable_caching: bool = True
    artifacts: str | None = None
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class LocalRunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


def run_locally(
    pipeline_func: Callable[..., Any], arguments: dict[str, Any], options: LocalRunOptions
) -> LocalRunResult:
    """Runs `pipeline_func(**arguments)` with kfp.local and records the outcome.

    Raises:
        PipelineFailedError: a task failed (the run folder and run.json remain).
    """
    from kfp import local

    runs_dir = options.runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(runs_dir),
        raise_on_error=True,
        enable_caching=options.enable_caching,
        cache_root=str(runs_dir / ".cache"),
    )
    before = {p.name for p in runs_dir.iterdir()}
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    error: str | None = None
    log_fd, log_name = tempfile.mkstemp(prefix=".run-", suffix=".log", dir=runs_dir)
    os.close(log_fd)
    with capture_console(Path(log_name), verbose=options.verbose), warnings.catch_warnings():
        # Expected locally: resource/GPU settings are cluster-only, and tasks run
        # in this environment instead of the project image.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        original_print = builtins.print
        try:
            pipeline_func(**arguments)
        except RuntimeError as exc:  # kfp.local's way of saying a task failed
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else "a task failed"
        finally:
            # Not our steps' doing (they log, and run in subprocesses): kfp.local
            # indents each task's output by swapping builtins.print around it
            # (kfp 2.17.3, kfp/local/logging_utils.py `indented_print`), and two
            # ParallelFor tasks' swaps interleave and can leave it swapped.
            builtins.print = original_print
    wall = time.monotonic() - t0
    # kfp.local names the run folder <pipeline>-<timestamp>; other new folders
    # (a model store under runs/, say) are not runs.
    name = getattr(pipeline_func, "name", "cifarflow")
    new_dirs = sorted(
        p
        for p in runs_dir.iterdir()
        if p.is_dir() and p.name not in before and _RUN_DIR.match(p.name.removeprefix(name))
    )
    if not new_dirs:
        raise PipelineFailedError(
            f"the pipeline did not start: {error or 'no run folder was created'} (log: {log_name})"
        )
    run_dir = new_dirs[-1]
    shutil.move(log_name, run_dir / "run.log")
    tasks = run_record.task_outputs(run_dir, cache_dir=runs_dir / ".cache")
    record: dict[str, Any] = {
        "run_id": run_dir.name,
        "pipeline": getattr(pipeline_func, "name", "cifarflow"),
        "status": "FAILED" if error else "SUCCEEDED",
        "error": error,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "parameters": arguments,
        "tasks": tasks,
    }
    run_record.write_record(run_dir, record)
    if options.artifacts:
        from cifarflow.pipelines.artifact_upload import upload_run

        record["artifacts_uri"] = upload_run(run_dir, options.artifacts, record["pipeline"])
        run_record.write_record(run_dir, record)
    result = LocalRunResult(run_dir.name, run_dir, record)
    if error:
        cause = failure_cause(run_dir / "run.log")
        raise PipelineFailedError(
            f"{error}{f' Cause: {cause}' if cause else ''} (artifacts so far kept in {run_dir}; full log: {run_dir / 'run.log'})"
        )
    return result


_EXCEPTION_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def failure_cause(log: Path) -> str | None:
    """The exception a failed task raised, as `Type: message`, from the run log.

    cifarflow's own errors (a bad input, a corrupt file) say what to fix, so
    they win over anything else that looks like an exception in the log,
    such as a concurrent trial's output.
    """
    if not log.is_file():
        return None
    causes = [
        m
        for line in log.read_text(errors="replace").splitlines()
        if (m := _EXCEPTION_LINE.match(line))
    ]
    ours = [m for m in causes if m.group(1).startswith("cifarflow.")]
    if not (ours or causes):
        return None
    kind, message = (ours or causes)[-1].groups()
    return f"{kind.rsplit('.', 1)[-1]}: {message.strip()}"

"""One logging path for the pipeline steps: `<step>: <message>` lines on stderr.

Step modules log through `logging.getLogger(__name__)`, as `serving/` does. The
step's name is worked out from the logger's module path
(`cifarflow.components.ingest.executor` → `ingest`), so a message never
spells its own prefix and the lines read the same in a terminal, in a
kfp.local run log and in a Kubeflow pod log.

`configure()` is called once per process: by the `cifarflow` command (its
`--log-level`) and by each KFP component function, because the KFP executor
sets up no logging of its own and Python's default drops INFO.
"""

from __future__ import annotations

import logging
import sys

STEPS_LOGGER = "cifarflow.components"

# Packages whose progress line reads better under a shorter name.
_LABELS = {
    "check_store": "store",
    "expand_grid": "grid",
    "record_status": "pipeline",
    "select_best": "select",
}


def step_label(logger_name: str) -> str:
    """The `<step>` a logger's lines start with.

    Args:
        logger_name: a module's `__name__`.

    Returns:
        The step package under `cifarflow.components` (renamed where `_LABELS`
        says), or the last part of the name outside it.

    Example:
        >>> step_label("cifarflow.components.select_best.executor")
        'select'
        >>> step_label("cifarflow.components.ingest.download")
        'ingest'
    """
    parts = logger_name.split(".")
    if logger_name.startswith(STEPS_LOGGER + ".") and len(parts) > 2:
        return _LABELS.get(parts[2], parts[2])
    return parts[-1]


class StepFormatter(logging.Formatter):
    """Formats a record as `<step>: <message>`, warnings and errors marked as such."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"{step_label(record.name)}: {text}"


class StepHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time, so redirections and test capture see it."""

    def emit(self, record: logging.LogRecord) -> None:
        # Not setStream(): it flushes the previous stream, which may be closed by now.
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str | int = logging.INFO) -> None:
    """Sends the steps' log lines to stderr at `level`; calling it again only changes the level.

    Args:
        level: a `logging` level or its name (`DEBUG`, `INFO`, `WARNING`, ...).
    """
    logger = logging.getLogger(STEPS_LOGGER)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not any(isinstance(h, StepHandler) for h in logger.handlers):
        handler = StepHandler()
        handler.setFormatter(StepFormatter("%(message)s"))
        logger.addHandler(handler)
    # kfp.local puts its own handler on the root logger; one copy of each line is enough.
    logger.propagate = False

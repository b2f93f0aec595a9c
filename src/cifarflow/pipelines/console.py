"""Keeps a local pipeline run's console readable while logging everything.

kfp.local echoes each task's full executor input and output JSON. The run
log (`runs/<run-id>/run.log`) keeps all of it; the console shows task
starts and outcomes and the lines cifarflow's own steps print
(`ingest: ...`, `train: ...`), so progress reads like a short story.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP_PREFIXES = (
    "store",
    "ingest",
    "download",
    "preprocess",
    "eda",
    "grid",
    "train",
    "evaluate",
    "select",
    "publish",
    "pipeline",
)
_SHOW = re.compile(
    # our steps' progress: "train: <a sentence>" (kfp's own "publish: True" output lines have one word)
    r"^(?:(?:" + "|".join(_STEP_PREFIXES) + r")\b[^:]*:\s+\S+\s+\S|epoch\s)"
    r"|.* - (?:INFO|WARNING|ERROR) - (?:Running pipeline|Executing task|Task .* (?:finished|failed|cache hit)|Pipeline .* finished)"
)


class FilteredConsole(io.TextIOBase):
    """A stdout stand-in: every line to `log`, the interesting ones to `console`."""

    def __init__(self, console: TextIO, log: TextIO, show_all: bool = False) -> None:
        self._console = console
        self._log = log
        self._show_all = show_all
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            plain = _ANSI.sub("", line).strip()
            if self._show_all:
                self._console.write(line + "\n")
            elif plain and _SHOW.match(plain):
                self._console.write(plain + "\n")
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._console.flush()


class capture_console:
    """Context manager that routes stdout through `FilteredConsole` into `log_path`."""

    def __init__(self, log_path: Path, verbose: bool = False) -> None:
        self._log_path = log_path
        self._verbose = verbose

    def __enter__(self) -> capture_console:
        self._log = open(self._log_path, "a", encoding="utf-8")
        self._stdout = sys.stdout
        sys.stdout = FilteredConsole(self._stdout, self._log, show_all=self._verbose)
        # kfp.local logs cache hits outside its own logging context: catch them too.
        root = logging.getLogger()
        self._saved = (root.level, root.handlers[:])
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            logging.Formatter("%(asctime)s - %(levelname)s - %(message)s", "%H:%M:%S")
        )
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.setLevel(self._saved[0])
        root.handlers = self._saved[1]
        sys.stdout.flush()
        sys.stdout = self._stdout
        self._log.close()

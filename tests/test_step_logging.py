"""The pipeline steps report through `logging`: `<step>: ...` lines on stderr, at the chosen level."""

from __future__ import annotations

import logging
import subprocess

import pytest

from cifarflow import step_logging
from tests.support.processes import cifarflow_command


@pytest.mark.parametrize(
    ("logger", "label"),
    [
        ("cifarflow.components.ingest.executor", "ingest"),
        ("cifarflow.components.ingest.download", "ingest"),
        ("cifarflow.components.check_store.executor", "store"),
        ("cifarflow.components.expand_grid.executor", "grid"),
        ("cifarflow.components.select_best.executor", "select"),
        ("cifarflow.serving.sync", "sync"),
    ],
)
def test_each_line_starts_with_the_step_its_module_belongs_to(logger, label):
    assert step_logging.step_label(logger) == label


@pytest.fixture
def steps_logger():
    logger = logging.getLogger(step_logging.STEPS_LOGGER)
    saved = logger.level, logger.handlers[:], logger.propagate
    yield logger
    logger.level, logger.handlers[:], logger.propagate = saved


def test_warnings_say_so_and_configure_twice_keeps_one_handler(steps_logger, capsys):
    step_logging.configure("INFO")
    step_logging.configure("INFO")
    log = logging.getLogger("cifarflow.components.ingest.download")
    log.info("started")
    log.warning("connection dropped; retrying in %.1fs", 0.5)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "ingest: started",
        "ingest: warning: connection dropped; retrying in 0.5s",
    ]
    ours = [h for h in steps_logger.handlers if isinstance(h, step_logging.StepHandler)]
    assert len(ours) == 1


def test_the_cli_log_level_decides_what_a_step_reports(tmp_path):
    def ingest(level: str, out: str) -> subprocess.CompletedProcess[str]:
        command = [*cifarflow_command(), "--log-level", level, "ingest", "--source", "sample"]
        return subprocess.run(
            [*command, "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=120,
        )

    chatty, quiet = ingest("info", "a"), ingest("warning", "b")
    assert chatty.returncode == 0 and quiet.returncode == 0, chatty.stderr + quiet.stderr
    verified = [line for line in chatty.stderr.splitlines() if line.startswith("ingest: ")]
    assert verified and "verified (" in verified[-1], chatty.stderr
    assert chatty.stdout == "" and "ingest:" not in quiet.stderr, quiet.stderr

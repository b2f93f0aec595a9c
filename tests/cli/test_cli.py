"""The `cifarflow` entry point: help, verbs not built yet, one-line errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from cifarflow.cli.main import VERBS, main

DESIGN_VERBS = {
    "ingest", "preprocess", "eda", "train", "evaluate", "select", "publish",
    "run", "compile", "submit", "runs", "serve", "models", "predict",
}


def test_help_lists_every_verb_of_the_design():
    out = subprocess.run([sys.executable, "-m", "cifarflow.cli.main", "--help"], capture_output=True, text=True, check=True).stdout
    assert {verb for verb, _, _ in VERBS} == DESIGN_VERBS
    for verb in DESIGN_VERBS:
        assert f"    {verb}" in out


def test_every_verb_of_the_design_is_built():
    missing = [v for v, _, _ in VERBS if importlib.util.find_spec(f"cifarflow.cli.{v}") is None]
    assert missing == []


def test_a_verb_without_its_module_says_it_is_not_built(monkeypatch, capsys):
    from cifarflow.cli import main as cli_main

    monkeypatch.setattr(cli_main, "VERBS", (*VERBS, ("frobnicate", "a planned verb", 99)))
    assert cli_main.main(["frobnicate", "some", "args"]) == 64
    assert "'cifarflow frobnicate' is not built yet (issue #99)" in capsys.readouterr().err


def test_console_script_is_installed():
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "cifarflow"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("cifarflow ")


def test_unknown_verb_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "cifarflow.cli.main", "trian"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr

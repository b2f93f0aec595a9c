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


@pytest.mark.parametrize("verb", sorted(v for v, _, _ in VERBS if importlib.util.find_spec(f"cifarflow.cli.{v}") is None))
def test_verbs_not_built_yet_say_so_and_exit_non_zero(verb, capsys):
    assert main([verb]) == 64
    assert "is not built yet" in capsys.readouterr().err


def test_console_script_is_installed():
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "cifarflow"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("cifarflow ")


def test_unknown_verb_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "cifarflow.cli.main", "trian"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr

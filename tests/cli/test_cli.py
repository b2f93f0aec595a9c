"""The `cifarflow` entry point: help, every verb, one-line errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

from cifarflow.cli.main import VERBS, build_parser, main

DESIGN_VERBS = {
    "ingest",
    "preprocess",
    "eda",
    "train",
    "evaluate",
    "select",
    "publish",
    "run",
    "compile",
    "submit",
    "runs",
    "serve",
    "models",
    "predict",
}


def test_help_lists_every_verb_of_the_design():
    out = subprocess.run(
        [sys.executable, "-m", "cifarflow.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert {verb for verb, _ in VERBS} == DESIGN_VERBS
    for verb in DESIGN_VERBS:
        assert f"    {verb}" in out


def test_every_verb_of_the_design_is_built():
    missing = [v for v, _ in VERBS if importlib.util.find_spec(f"cifarflow.cli.{v}") is None]
    assert missing == []


def test_console_script_is_installed():
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "cifarflow"), "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("cifarflow ")


def test_unknown_verb_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "cifarflow.cli.main", "trian"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_reader_that_goes_away_is_not_an_internal_error(tmp_path):
    """`cifarflow ... | head`: the closed pipe ends the command quietly, with the shell's SIGPIPE status."""
    command = [
        sys.executable,
        "-m",
        "cifarflow.cli.main",
        "train",
        "--config",
        "reference",
        "--list-trials",
        "--out",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes: its first write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and stderr == "", stderr


def test_grids_are_named_by_their_shipped_name_or_a_path(tmp_path, capsys):
    assert main(["train", "--config", "quick", "--list-trials", "--out", str(tmp_path)]) == 0
    by_name = capsys.readouterr().out
    # The checkout-style path names the same shipped grid, from any working folder.
    assert (
        main(["train", "--config", "configs/quick.yaml", "--list-trials", "--out", str(tmp_path)])
        == 0
    )
    assert capsys.readouterr().out == by_name and by_name.count("\n") == 2


def test_help_shows_each_default_once_from_the_value_the_flag_really_has(capsys):
    try:
        main(["run", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert out.count("(default: quick)") == 1 and "(default quick)" not in out
    assert "(default: 0.05)" in out and "(default: 2)" in out  # --alpha, --trial-parallelism
    assert "(default: None)" not in out and "(default: False)" not in out


def test_the_servers_flags_default_to_their_configs_own_defaults():
    from cifarflow.cli.serve import gateway_config, model_server_config
    from cifarflow.serving.gateway.config import GatewayConfig
    from cifarflow.serving.model_server.config import ModelServerConfig

    parser = build_parser()
    model = model_server_config(
        parser.parse_args(["serve", "model", "--store", "/srv/models", "--model-name", "m"])
    )
    assert model == ModelServerConfig(store="/srv/models", model_name="m")
    gateway = gateway_config(parser.parse_args(["serve", "gateway", "--backend", "tf:8500"]))
    assert dataclasses.replace(gateway, token=None) == GatewayConfig(backend="tf:8500")

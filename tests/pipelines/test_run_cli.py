"""`cifarflow run` refuses bad input before kfp.local starts anything."""

from __future__ import annotations

from cifarflow.cli.main import main


def test_cli_run_rejects_an_invalid_grid_before_starting(tmp_path, capsys):
    grid = tmp_path / "bad.yaml"
    grid.write_text("name: bad\nbase: {architecture: resnet, depth: 9, learning_rate: -1}\n")
    assert main(["run", "--config", str(grid), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "depth must be 6n+2" in err[0]
        and "learning_rate must be in (0, 10]" in err[0]
    )
    assert not (tmp_path / "runs").exists()  # nothing started, nothing to clean up


def test_cli_run_unknown_grid(tmp_path, capsys):
    assert main(["run", "--config", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "unknown grid 'nope'" in capsys.readouterr().err


def test_cli_run_bad_fraction(tmp_path, capsys):
    assert main(["run", "--val-fraction", "1.5", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "--val-fraction must be between 0 and 1" in capsys.readouterr().err

"""Grid files: the shipped grids load, and every kind of mistake is one clear error."""

from __future__ import annotations

import json

import pytest

from cifarflow.components.train.config import TrialConfig
from cifarflow.configs import CONFIG_DIR
from cifarflow.errors import BadInputError
from cifarflow.grid import Grid, load_grid, parse_grid

CONFIGS = CONFIG_DIR  # the grids as installed, not the checkout's copy


@pytest.mark.parametrize("name", ["quick", "cpu", "gpu", "reference"])
def test_shipped_grids_load_and_travel_as_json(name):
    grid = load_grid(CONFIGS / f"{name}.yaml")
    assert grid.name == name
    dicts = grid.trial_dicts()
    assert len(dicts) == len(grid.trials) >= 1
    for trial in dicts:
        assert "name" not in trial  # a ParallelFor item with `name` breaks the KFP SDK
        # The round trip through JSON (KFP turns ints into floats) gives the same trial back.
        floated = {
            k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in json.loads(json.dumps(trial)).items()
        }
        assert TrialConfig.from_dict(floated) == TrialConfig.from_dict(trial)


def test_quick_grid_has_two_trials_and_reference_is_the_2023_grid():
    assert len(load_grid(CONFIGS / "quick.yaml").trials) >= 2
    reference = load_grid(CONFIGS / "reference.yaml")
    assert len(reference.trials) == 144
    assert {t.architecture for t in reference.trials} == {"densenet121", "resnet50", "xception"}
    assert {t.learning_rate for t in reference.trials} == {1e-4, 1e-3, 1e-2, 1e-1}
    assert {t.size_inner for t in reference.trials} == {10, 100, 1000}
    assert {t.dropout for t in reference.trials} == {0.0, 0.2, 0.5, 0.8}
    assert {t.input_size for t in reference.trials} == {75}


def test_grid_expands_trials_times_grid_in_a_stable_order():
    grid = parse_grid(
        {
            "base": {"depth": 8, "epochs": 2},
            "trials": [{}, {"fine_label_weight": 0.5}],
            "grid": {"learning_rate": [0.1, 0.01], "seed": [0, 1]},
        }
    )
    assert isinstance(grid, Grid) and len(grid.trials) == 8
    assert [(t.fine_label_weight, t.learning_rate, t.seed) for t in grid.trials[:4]] == [
        (0.0, 0.1, 0),
        (0.0, 0.1, 1),
        (0.0, 0.01, 0),
        (0.0, 0.01, 1),
    ]
    assert all(t.fine_label_weight == 0.5 for t in grid.trials[4:])
    assert grid.trial(3).seed == 1
    with pytest.raises(BadInputError, match="no trial 8"):
        grid.trial(8)


def test_unknown_keys_and_bad_values_are_reported_together():
    with pytest.raises(BadInputError) as info:
        parse_grid(
            {"base": {"learning_rat": 0.1, "dropout": 1.5, "optimizer": "rmsprop", "depth": 9}},
            source="g.yaml",
        )
    message = str(info.value)
    assert message.startswith("g.yaml: trial 0:")
    for fragment in (
        "unknown key(s) learning_rat",
        "dropout must be in [0, 1)",
        "optimizer must be one of",
        "depth must be 6n+2",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    ("base", "fragment"),
    [
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"flip": "yes"}, "flip must be true or false"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"learning_rate": 0}, "learning_rate must be in (0, 10]"),
        ({"weights": "imagenet"}, "weights applies to transfer architectures only"),
        ({"warmup_epochs": 30, "epochs": 10}, "warmup_epochs must be in [0, epochs]"),
        ({"mixed_precision": "maybe"}, "mixed_precision must be one of"),
    ],
)
def test_each_bad_value_names_the_key(base, fragment):
    with pytest.raises(BadInputError, match=None) as info:
        parse_grid({"base": base})
    assert fragment in str(info.value)


def test_kfp_floats_and_yaml_exponent_strings_are_accepted():
    trial = TrialConfig.from_dict({"depth": 20.0, "batch_size": 64.0, "learning_rate": "1e-3"})
    assert trial.depth == 20 and isinstance(trial.depth, int)
    assert trial.batch_size == 64 and trial.learning_rate == pytest.approx(1e-3)


def test_grid_file_level_errors(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base: [unclosed\n")
    with pytest.raises(BadInputError, match="not valid YAML"):
        load_grid(bad_yaml)
    with pytest.raises(BadInputError, match="unknown top-level key"):
        parse_grid({"bases": {}})
    with pytest.raises(BadInputError, match="selection_metric must be one of"):
        parse_grid({"selection_metric": "test_accuracy"})
    with pytest.raises(BadInputError, match="grid must map"):
        parse_grid({"grid": {"learning_rate": 0.1}})
    with pytest.raises(BadInputError, match="a grid must be a YAML mapping"):
        parse_grid(["not", "a", "mapping"])


def test_cli_reports_a_bad_grid_in_one_line(tmp_path, capsys):
    from cifarflow.cli.main import main

    grid = tmp_path / "g.yaml"
    grid.write_text("base:\n  epochz: 3\n")
    assert (
        main(
            ["train", "--data", str(tmp_path), "--config", str(grid), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) epochz" in err[0]


def test_cli_lists_trials(capsys):
    from cifarflow.cli.main import main

    assert (
        main(["train", "--config", str(CONFIGS / "quick.yaml"), "--list-trials", "--out", "unused"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[1].split(" ", 1)[1])["learning_rate"] == 0.1

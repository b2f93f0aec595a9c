"""The parts of a training run, each called on its own on the real sample (no full run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifarflow.components import candidate as contract
from cifarflow.components.train import checkpointing, executor
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.data import load_training_data
from cifarflow.components.train.durable_checkpoints import Disabled
from cifarflow.components.train.run import (
    AVERAGE,
    LIVE,
    TrainingRun,
    steps_per_epoch,
    update_best,
    whole_batches,
)
from tests.components.train_data import TINY_TRIAL

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def make_run(sample_data, tmp_path, jit_compile=False, **overrides) -> tuple[TrainingRun, list]:
    lines: list[str] = []
    config = TrialConfig.from_dict({**TINY_TRIAL, "fine_label_weight": 0.0, **overrides})
    data = load_training_data(sample_data)
    return TrainingRun(data, config, tmp_path, lines.append, Disabled(), jit_compile), lines


def test_whole_batches_keeps_one_batch_shape_and_varies_what_it_drops():
    rng = np.random.default_rng(0)
    first, second = whole_batches(1800, 64, rng), whole_batches(1800, 64, rng)
    assert len(first) == len(second) == 1792 and len(set(first)) == 1792
    assert not np.array_equal(first, second)
    assert whole_batches(1792, 64, rng) is None and whole_batches(10, 64, rng) is None
    assert steps_per_epoch(1800, 64, jit_compile=True) == 28
    assert steps_per_epoch(1800, 64, jit_compile=False) == 29
    # The GPU grid's batch divides both 45,000 and 40,000 training images.
    assert whole_batches(45_000, 500, rng) is None and whole_batches(40_000, 500, rng) is None


def test_update_best_picks_the_better_view_and_counts_epochs_without_gain():
    state = checkpointing.TrainingState()
    assert update_best(state, 1, {LIVE: 0.30, AVERAGE: 0.25}) == LIVE
    assert update_best(state, 2, {LIVE: 0.31, AVERAGE: 0.35}) == AVERAGE
    assert state.best_epoch == 2 and state.best_is_ema and state.best_val_accuracy == 0.35
    assert update_best(state, 3, {LIVE: 0.35, AVERAGE: 0.34}) is None
    assert state.epochs_without_gain == 1 and state.best_epoch == 2


def test_one_epoch_of_a_run_records_checkpoints_and_says_if_it_compiled(sample_data, tmp_path):
    run, lines = make_run(sample_data, tmp_path, epochs=3)
    assert "train step not compiled" in run.header("float32")
    row = run.train_epoch()
    assert row["epoch"] == 1 and 0.0 <= row["val_accuracy"] <= 1.0 and row["seconds"] > 0
    assert run.record(row) == LIVE
    assert run.state.compiling_seconds == [row["seconds"]] and run.state.steady_seconds == []
    assert run.after_epoch(row, LIVE) is None and lines[-1].startswith("epoch 1/3")
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["epochs_done"] == 1 and saved["best_epoch"] == 1
    assert (tmp_path / "checkpoint" / checkpointing.BEST_WEIGHTS).is_file()
    # The checkpoint's time is charged to the clock too.
    assert run.state.train_seconds > row["seconds"]


def test_a_spent_budget_and_a_plateau_stop_the_loop(sample_data, tmp_path):
    run, _ = make_run(sample_data, tmp_path, epochs=3, time_budget_minutes=1.0)
    run.state.train_seconds = 61.0
    assert "time budget of 1 min spent" in run.stop_reason()
    run, _ = make_run(sample_data, tmp_path / "b", epochs=3, early_stopping_patience=2)
    run.state.epochs_without_gain = 2
    assert "no val-accuracy gain for 2 epochs" in run.stop_reason()


def test_a_replan_shortens_the_schedule_and_marks_the_next_epoch_as_compiling(
    sample_data, tmp_path
):
    run, lines = make_run(sample_data, tmp_path, epochs=20, time_budget_minutes=1.0)
    state = run.state
    state.epochs_done, state.train_seconds = 3, 30.0
    state.compiling_seconds, state.steady_seconds = [12.0], [9.0, 9.0]
    run.compiles_next = False
    run.replan()
    # 30 s left, minus the 3 s a recompile costs beyond an epoch, at 9 s: 3 more.
    assert state.budget_planned and state.planned_epochs == 6
    assert run.schedule.total_steps == 6 * run.steps_per_epoch and run.compiles_next
    assert "time budget planned" in lines[-1]


def test_a_compiled_run_says_so_and_trains_whole_batches(sample_data, tmp_path):
    run, _ = make_run(sample_data, tmp_path, jit_compile=True, epochs=1)
    assert "train step compiled (XLA)" in run.header("float32")
    assert run.steps_per_epoch == 1800 // 64
    assert run.model.jit_compile is True


def test_component_outputs_come_from_the_summary(trained_model):
    result = executor.TrainResult.load(trained_model)
    config = TrialConfig.from_dict(result.trial)
    metadata = executor.model_metadata(config, result)
    assert metadata["params"] == result.params and metadata["jit_compile"] == result.jit_compile
    assert executor.summary_metrics(result)["val_accuracy"] == result.best_val_accuracy
    page = executor.curves_html(result.trial, (trained_model / contract.CURVES_FILE).read_bytes())
    assert "data:image/png;base64,iVBORw0KGgo" in page
    assert result.train_step.startswith("train step") and result.planned_epochs == 4


@pytest.mark.slow
def test_a_compiled_run_trains_whole_batches_end_to_end(sample_data, tmp_path):
    import keras

    from cifarflow.components.train.schedules import WarmupSchedule

    trial = TrialConfig.from_dict(
        {**TINY_TRIAL, "epochs": 2, "fine_label_weight": 0.0, "jit_compile": "on"}
    )
    lines: list[str] = []
    result = executor.train(sample_data, trial, tmp_path, log=lines.append, export_tflite=False)
    assert result.jit_compile and result.train_step == "train step compiled (XLA)"
    assert any("train step compiled (XLA)" in line for line in lines), lines
    # 1,800 images at batch 64: 28 whole batches per epoch, not 29.
    schedule = WarmupSchedule(0.05, total_steps=2 * 28, warmup_steps=28)
    history = json.loads((tmp_path / "history.json").read_text())
    for row in history:
        expected = float(keras.ops.convert_to_numpy(schedule(row["epoch"] * 28 - 1)))
        assert row["learning_rate"] == pytest.approx(expected, rel=1e-4)
    assert (tmp_path / "saved_model.pb").is_file()

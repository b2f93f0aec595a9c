"""Per-epoch checkpoints so a killed trial resumes where it stopped.

`<out>/checkpoint/` holds the last epoch's model weights, the optimizer's
variables (momentum, step counter, ...), the best weights so far and
`state.json` (epochs done, best epoch, history, seconds spent). Each file is
written under a temporary name and renamed, and `state.json` is renamed last,
so a kill at any moment leaves either the previous or the new checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
_LAST_WEIGHTS = "last.weights.h5"
_OPTIMIZER = "optimizer.npz"
BEST_WEIGHTS = "best.weights.h5"


@dataclasses.dataclass
class TrainingState:
    """Everything besides weights that the training loop needs to continue."""

    epochs_done: int = 0
    planned_epochs: int = 0
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    epochs_without_gain: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    trial: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The time budget's one-time plan is made; epoch times without and with a compile.
    budget_planned: bool = False
    steady_seconds: list[float] = dataclasses.field(default_factory=list)
    compiling_seconds: list[float] = dataclasses.field(default_factory=list)
    # The best weights are the weight average's (see ema.py), not the live ones.
    best_is_ema: bool = False


def _replace(partial: Path, final: Path) -> None:
    os.replace(partial, final)


def save_checkpoint(folder: Path, model: keras.Model, state: TrainingState, improved: bool) -> None:
    """Writes weights, optimizer variables and finally the state of one epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".partial.{_LAST_WEIGHTS}"
    model.save_weights(partial)
    _replace(partial, folder / _LAST_WEIGHTS)
    if improved:
        save_best_weights(folder, model)
    partial = folder / f".partial.{_OPTIMIZER}"
    with open(partial, "wb") as f:
        np.savez(f, *[np.asarray(v.numpy()) for v in model.optimizer.variables])
    _replace(partial, folder / _OPTIMIZER)
    partial = folder / f".partial.{STATE_FILE}"
    partial.write_text(json.dumps(dataclasses.asdict(state), indent=1))
    _replace(partial, folder / STATE_FILE)


def save_best_weights(folder: Path, model: keras.Model) -> None:
    """Writes the model's current weights as the best so far."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".partial.{BEST_WEIGHTS}"
    model.save_weights(partial)
    _replace(partial, folder / BEST_WEIGHTS)


def load_state(folder: Path) -> TrainingState | None:
    """The last complete checkpoint's state, or None when there is none."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return TrainingState(**json.loads(path.read_text()))


def restore_checkpoint(folder: Path, model: keras.Model) -> None:
    """Loads the last weights and optimizer variables into a compiled model."""
    optimizer = model.optimizer
    # Built first, so the weights file's optimizer entries have variables to land in.
    optimizer.build(model.trainable_variables)
    model.load_weights(folder / _LAST_WEIGHTS)
    with np.load(folder / _OPTIMIZER) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise ValueError(
            f"checkpoint has {len(values)} optimizer variables, the optimizer {len(optimizer.variables)}"
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)

"""Hyper-parameter grids: YAML files in `src/cifarflow/configs/`, validated once on load.

A grid file names a `base` trial (every hyper-parameter's value), an optional
list of `trials` (each overrides some of `base`) and an optional `grid` (each
key maps to a list of values; their cartesian product is crossed with the
trials). Example:

```yaml
name: quick
description: two tiny ResNets on the shipped sample
selection_metric: val_accuracy
base:
  architecture: resnet
  depth: 8
  epochs: 2
grid:
  learning_rate: [0.05, 0.1]
```

Anything unknown or out of range is reported in one `BadInputError` that lists
every problem. The grid is the pipeline's, not one step's: expand_grid turns it
into the ParallelFor items, the CLI checks it before a run starts, and train
reads one trial of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

import yaml

from cifarflow.components.candidate import SELECTION_METRICS
from cifarflow.components.train.config import TrialConfig
from cifarflow.errors import BadInputError


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid file.

    Attributes:
        name: short name (the file's stem unless set).
        description: one line for people.
        selection_metric: the validation metric select_best ranks trials by.
        trials: every trial, in a stable order (trial N of the CLI's `--trial N`).
    """

    name: str
    description: str
    selection_metric: str
    trials: tuple[TrialConfig, ...]

    def trial_dicts(self) -> list[dict[str, Any]]:
        """The trials as JSON-serialisable dicts, the items of the pipeline's ParallelFor."""
        return [t.to_dict() for t in self.trials]

    def trial(self, index: int) -> TrialConfig:
        if not 0 <= index < len(self.trials):
            raise BadInputError(
                f"grid {self.name!r} has {len(self.trials)} trial(s) (0..{len(self.trials) - 1}); no trial {index}"
            )
        return self.trials[index]


_GRID_KEYS = {"name", "description", "selection_metric", "base", "trials", "grid"}
MAX_TRIALS = 1000


def parse_grid(document: Any, source: str = "grid") -> Grid:
    """Validates a parsed YAML document into a Grid (see the module docstring)."""
    if not isinstance(document, dict):
        raise BadInputError(
            f"{source}: a grid must be a YAML mapping with keys {', '.join(sorted(_GRID_KEYS))}"
        )
    problems: list[str] = []
    unknown = sorted(set(document) - _GRID_KEYS)
    if unknown:
        problems.append(
            f"unknown top-level key(s) {', '.join(unknown)} (known: {', '.join(sorted(_GRID_KEYS))})"
        )
    base = document.get("base") or {}
    trials = document.get("trials") or [{}]
    grid = document.get("grid") or {}
    metric = document.get("selection_metric", "val_accuracy")
    if not isinstance(base, dict):
        problems.append("base must be a mapping of hyper-parameters")
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        problems.append("trials must be a list of mappings")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        problems.append("grid must map each hyper-parameter to a non-empty list of values")
    if metric not in SELECTION_METRICS:
        problems.append(
            f"selection_metric must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}"
        )
    if problems:
        raise BadInputError(f"{source}: " + "; ".join(problems))
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if len(trials) * len(combos) > MAX_TRIALS:
        raise BadInputError(f"{source}: {len(trials) * len(combos)} trials; at most {MAX_TRIALS}")
    built: list[TrialConfig] = []
    for override in trials:
        for combo in combos:
            where = f"{source}: trial {len(built)}"
            built.append(TrialConfig.from_dict({**base, **override, **combo}, where=where))
    return Grid(
        name=str(document.get("name") or Path(source).stem),
        description=str(document.get("description", "")),
        selection_metric=metric,
        trials=tuple(built),
    )


def load_grid(path: str | os.PathLike) -> Grid:
    """Reads and validates a grid YAML file.

    Raises:
        BadInputError: the file is missing, is not YAML, or any value is invalid
            (one message listing every problem of the first bad trial).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"grid file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path} is not valid YAML: {exc}") from None
    return parse_grid(document, source=str(path))

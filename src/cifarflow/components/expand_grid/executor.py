"""Expand a hyper-parameter grid into the trials the pipeline trains in parallel."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import yaml

from cifarflow.errors import BadInputError
from cifarflow.grid import Grid, load_grid, parse_grid

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExpandedGrid:
    name: str
    selection_metric: str
    trials: list[dict[str, Any]]  # one JSON-serialisable dict per trial


def expand_grid(grid: str) -> ExpandedGrid:
    """Resolves and validates a grid given by name, path or YAML text.

    Args:
        grid: a shipped grid's name (`quick`), a YAML file path, or the YAML
            document itself (how `cifarflow submit` sends a grid that is not shipped).

    Raises:
        BadInputError: unknown name, invalid YAML, or invalid values.
    """
    import cifarflow.configs as configs

    if "\n" in grid:  # a document, not a name
        try:
            document = yaml.safe_load(grid)
        except yaml.YAMLError as exc:
            raise BadInputError(f"the grid parameter is not valid YAML: {exc}") from None
        parsed: Grid = parse_grid(document, source="grid parameter")
    else:
        parsed = load_grid(configs.resolve(grid))
    trials = parsed.trial_dicts()
    log.info("%s: %d trial(s), selected by %s", parsed.name, len(trials), parsed.selection_metric)
    return ExpandedGrid(parsed.name, parsed.selection_metric, trials)

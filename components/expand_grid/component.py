"""KFP v2 component that turns the `grid` pipeline parameter into ParallelFor items."""

from typing import List, NamedTuple

from kfp import dsl

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def expand_grid_component(grid: str) -> NamedTuple("Grid", trials=List[dict], selection_metric=str, name=str):
    """Validates the grid and lists its trials.

    Args:
        grid: a shipped grid's name (quick, cpu, gpu, reference) or a YAML document.

    Returns:
        trials: one dict of hyper-parameters per trial.
        selection_metric: the validation metric that ranks the trials.
        name: the grid's name.

    Example:
        >>> grid_task = expand_grid_component(grid="quick")
        >>> with dsl.ParallelFor(grid_task.outputs["trials"]) as trial: ...
    """
    from collections import namedtuple

    from cifarflow.components.expand_grid.executor import expand_grid

    expanded = expand_grid(grid)
    return namedtuple("Grid", ["trials", "selection_metric", "name"])(
        expanded.trials, expanded.selection_metric, expanded.name
    )

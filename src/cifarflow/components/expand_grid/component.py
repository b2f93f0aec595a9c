"""KFP v2 component that turns the `grid` pipeline parameter into ParallelFor items."""

from kfp import dsl

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def expand_grid_component(grid: str) -> list[dict]:
    """Validates the grid and lists its trials.

    A single output on purpose: kfp.local (2.17) cannot loop over one output
    of a task that has several.

    Args:
        grid: a shipped grid's name (quick, cpu, gpu, reference) or a YAML document.

    Returns:
        One dict of hyper-parameters per trial.

    Example::

        grid_task = expand_grid_component(grid="quick")
        with dsl.ParallelFor(grid_task.output) as trial:
            ...
    """
    from cifarflow import step_logging
    from cifarflow.components.expand_grid.executor import expand_grid

    step_logging.configure()
    return expand_grid(grid).trials

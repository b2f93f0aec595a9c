"""The time budget: plan the epochs once from measured epochs, then only shorten.

Every change of plan changes the learning-rate schedule's length, which is a
constant of the compiled train step, so it costs a recompile; and a schedule
that grows and shrinks moves the learning rate back and forth. So:

- epochs that include a compile (the first of a process, the first after a
  re-plan) are not used to forecast ("steady" epochs are);
- after `MEASURED_EPOCHS` steady epochs the plan is made once: as many
  epochs as the remaining budget affords, never more than configured;
- after that the plan only shrinks, and only when the forecast overshoots
  the budget by more than `TOLERANCE` (a busy neighbour for one epoch does not
  move it: the forecast uses the median);
- and the loop stops at the budget whatever the forecast said.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

MEASURED_EPOCHS = 2
TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Plan:
    """A decision after one epoch.

    Attributes:
        planned_epochs: the epochs to run in all (never more than before).
        planned: whether the one-time plan has been made.
        changed: whether `planned_epochs` differs from before (a recompile).
        epoch_seconds: the forecast's seconds per epoch (0 before any steady epoch).
    """

    planned_epochs: int
    planned: bool
    changed: bool
    epoch_seconds: float


def plan_epochs(
    *,
    budget_seconds: float,
    spent_seconds: float,
    epochs_done: int,
    planned_epochs: int,
    steady_seconds: Sequence[float],
    planned: bool,
    compiling_seconds: Sequence[float] = (),
) -> Plan:
    """The plan after an epoch (a pure function of what was measured).

    Args:
        budget_seconds: the training loop's budget.
        spent_seconds: seconds spent so far (compiles, val and checkpoints included).
        epochs_done: epochs finished.
        planned_epochs: the current plan.
        steady_seconds: durations of the epochs that did not compile.
        planned: whether the one-time plan was made already.
        compiling_seconds: durations of the epochs that compiled; what they
            took beyond a steady epoch is charged for the recompile a change
            of plan causes, so a cut does not itself overshoot.
    """
    if len(steady_seconds) < MEASURED_EPOCHS:
        return Plan(planned_epochs, planned, False, 0.0)
    epoch_seconds = statistics.median(steady_seconds)
    forecast = spent_seconds + (planned_epochs - epochs_done) * epoch_seconds
    if planned and forecast <= budget_seconds * (1.0 + TOLERANCE):
        return Plan(planned_epochs, True, False, epoch_seconds)
    if not planned and forecast <= budget_seconds:
        return Plan(planned_epochs, True, False, epoch_seconds)
    recompile = 0.0
    if compiling_seconds:
        recompile = max(statistics.median(compiling_seconds) - epoch_seconds, 0.0)
    left = max(budget_seconds - spent_seconds - recompile, 0.0)
    new = max(epochs_done, min(planned_epochs, epochs_done + int(left // epoch_seconds)))
    return Plan(new, True, new != planned_epochs, epoch_seconds)


def budget_spent(budget_seconds: float, spent_seconds: float) -> bool:
    """Whether the loop must stop now (a budget of 0 is none)."""
    return budget_seconds > 0 and spent_seconds >= budget_seconds

"""The time budget plans once from steady epochs, then only shortens, and never thrashes."""

from __future__ import annotations

import numpy as np
import pytest

from cifarflow.components.train.budget import (
    MEASURED_EPOCHS,
    budget_spent,
    plan_epochs,
)


def simulate(
    epoch_seconds: list[float], budget: float, epochs: int, compile_seconds: float
) -> tuple[list[int], int, float]:
    """The training loop's use of the budget on given epoch times.

    A change of plan recompiles, so the next epoch costs `compile_seconds`
    more and does not count as steady, as in `TrainingRun`.

    Returns:
        (the plan after each epoch, the number of changes, the seconds spent).
    """
    planned, done, spent, made, compiles = epochs, 0, 0.0, False, True
    steady: list[float] = []
    compiling: list[float] = []
    plans: list[int] = []
    changes = 0
    for seconds in epoch_seconds:
        if done >= planned or budget_spent(budget, spent):
            break
        took = seconds + (compile_seconds if compiles else 0.0)
        spent += took
        done += 1
        (compiling if compiles else steady).append(took)
        plan = plan_epochs(
            budget_seconds=budget,
            spent_seconds=spent,
            epochs_done=done,
            planned_epochs=planned,
            steady_seconds=steady,
            planned=made,
            compiling_seconds=compiling,
        )
        made, compiles = plan.planned, plan.changed
        changes += plan.changed
        planned = plan.planned_epochs
        plans.append(planned)
    return plans, changes, spent


def test_nothing_is_planned_from_epochs_that_compiled():
    plan = plan_epochs(
        budget_seconds=100.0,
        spent_seconds=90.0,
        epochs_done=1,
        planned_epochs=40,
        steady_seconds=[],
        planned=False,
    )
    assert plan.planned_epochs == 40 and not plan.planned and not plan.changed


def test_the_plan_is_made_once_from_steady_epochs_and_never_past_the_configured_epochs():
    # 1 compiling + 2 steady epochs of 30 s: 210 s left affords 7 more.
    plan = plan_epochs(
        budget_seconds=300.0,
        spent_seconds=90.0,
        epochs_done=3,
        planned_epochs=20,
        steady_seconds=[30.0, 30.0],
        planned=False,
    )
    assert plan.planned and plan.changed and plan.planned_epochs == 10
    roomy = plan_epochs(
        budget_seconds=3000.0,
        spent_seconds=90.0,
        epochs_done=3,
        planned_epochs=20,
        steady_seconds=[30.0, 30.0],
        planned=False,
    )
    assert roomy.planned and not roomy.changed and roomy.planned_epochs == 20


def test_after_planning_a_small_overshoot_is_tolerated_and_a_faster_machine_never_lengthens():
    common = dict(budget_seconds=300.0, epochs_done=5, planned_epochs=10, planned=True)
    # 150 s spent + 5 × 31 s = 305 s: within 5 % of the budget, no recompile.
    assert not plan_epochs(spent_seconds=150.0, steady_seconds=[31.0] * 4, **common).changed
    # 5 × 40 s more would end at 350 s: shorten to what fits (3 more).
    slow = plan_epochs(spent_seconds=150.0, steady_seconds=[40.0] * 4, **common)
    assert slow.changed and slow.planned_epochs == 8
    fast = plan_epochs(spent_seconds=150.0, steady_seconds=[5.0] * 4, **common)
    assert not fast.changed and fast.planned_epochs == 10


@pytest.mark.parametrize("seed", range(20))
def test_on_noisy_machines_the_plan_never_grows_and_changes_rarely(seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 90.0)
    # A shared machine: epochs alternate between quiet and busy, plus noise.
    times = [base * (1.0 + 0.8 * (i % 2)) * rng.uniform(0.9, 1.1) for i in range(300)]
    budget = rng.uniform(10, 60) * base
    compile_seconds = rng.uniform(0.0, 5.0) * base
    plans, changes, spent = simulate(times, budget, epochs=64, compile_seconds=compile_seconds)
    after = plans[MEASURED_EPOCHS:]
    assert all(later <= earlier for earlier, later in zip(after, after[1:], strict=False))
    assert max(plans) <= 64
    assert changes <= 3
    # It ends at the budget at the latest (plus the epoch under way).
    assert spent <= budget + max(times) + compile_seconds


def test_the_reviews_gpu_case_no_longer_thrashes():
    # 60 s compile, 5 s epochs, a 19-minute budget (the review's replan_sim case:
    # 40 -> 17 -> 31 -> 19 -> 31 -> 21 epochs in 465 s).
    plans, changes, spent = simulate([5.0] * 400, 19 * 60.0, epochs=120, compile_seconds=60.0)
    assert changes == 0 and len(plans) == 120 and spent == pytest.approx(60 + 120 * 5)
    # The same at 10 s per epoch: one cut, to what fits, then no more.
    plans, changes, spent = simulate([10.0] * 400, 19 * 60.0, epochs=120, compile_seconds=60.0)
    assert changes == 1 and spent <= 19 * 60.0 and len(plans) >= 100

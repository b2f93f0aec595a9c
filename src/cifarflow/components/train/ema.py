"""An exponential moving average of the weights, kept by the optimizer inside the train step.

Keras optimizers keep it with `use_ema=True`: after every step each trainable
variable's average becomes `m · average + (1 − m) · weight` (the first step
copies the weight), inside the compiled step, so it costs no host round trip.
Two things are changed here:

- Keras overwrites the weights with the averages at the end of every
  `fit()`. The loop calls `fit()` once per epoch, so that would train from the
  average after each epoch; `keep_live_weights_after_fit` turns it off.
- `swapped_in` puts the averages into the model for a while (to score or save
  them) and puts the live weights back. BatchNorm statistics are the live
  ones: the average covers trainable variables only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


def keep_live_weights_after_fit(optimizer: keras.optimizers.Optimizer) -> None:
    """Stops `fit()` from replacing the weights with their averages when it returns."""

    def keep(var_list) -> None:
        del var_list  # the averages stay in the optimizer; see `swapped_in`

    optimizer.finalize_variable_values = keep


def averages(model: keras.Model) -> list[keras.Variable]:
    """The optimizer's averages, in the order of `model.trainable_variables`.

    Raises:
        ValueError: the model's optimizer keeps no average.
    """
    optimizer = model.optimizer
    if optimizer is None or not optimizer.use_ema:
        raise ValueError("the model's optimizer keeps no weight average (use_ema is off)")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    # Keras keeps them in a private list; their order is that of the variables.
    found = list(optimizer._model_variables_moving_average)
    if len(found) != len(model.trainable_variables):
        raise ValueError(
            f"{len(found)} averages for {len(model.trainable_variables)} trainable variables"
        )
    return found


@contextlib.contextmanager
def swapped_in(model: keras.Model) -> Iterator[None]:
    """Within the block the model's trainable weights are their averages."""
    variables = model.trainable_variables
    live = [keras.ops.copy(v.value) for v in variables]
    for variable, average in zip(variables, averages(model), strict=True):
        variable.assign(average.value)
    try:
        yield
    finally:
        for variable, value in zip(variables, live, strict=True):
            variable.assign(value)

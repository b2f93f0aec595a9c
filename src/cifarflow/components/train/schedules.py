"""Learning-rate schedules as Keras schedules (pure keras.ops, serialisable).

A schedule is a function of the optimizer's step counter, which is saved with
the optimizer, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cifarflow")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine or linear decay to 0, or constant.

    Args:
        peak: the highest learning rate.
        total_steps: steps of the whole run.
        warmup_steps: steps of the linear warm-up from `peak * start_fraction`.
        kind: "cosine", "onecycle" (linear decay) or "constant".
        start_fraction: where the warm-up starts, as a fraction of `peak`.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int,
        kind: str = "cosine",
        start_fraction: float = 0.1,
    ) -> None:
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(max(int(warmup_steps), 0), self.total_steps)
        self.kind = kind
        self.start_fraction = float(start_fraction)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak
        if self.kind == "constant" and self.warmup_steps == 0:
            return ops.cast(peak, "float32") + 0.0 * step
        warm = max(self.warmup_steps, 1)
        up = peak * (
            self.start_fraction + (1.0 - self.start_fraction) * ops.minimum(step / warm, 1.0)
        )
        if self.kind == "constant":
            return up
        decay_len = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_len, 0.0, 1.0)
        if self.kind == "cosine":
            down = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            down = peak * (1.0 - progress)
        return ops.where(step < self.warmup_steps, up, down)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "start_fraction": self.start_fraction,
        }

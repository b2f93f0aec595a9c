"""Probe: compile time and seconds per epoch of each trial of a grid, compiled and not.

    KERAS_BACKEND=jax python bench/gpu_probe.py                  # the gpu grid, a few minutes on a GPU
    python bench/gpu_probe.py --config cpu --steps 20 --rounds 3 # compiled vs not on this CPU
    python bench/gpu_probe.py --tiny                             # a seconds-long dry run (tests)

For each trial and each mode (compiled: XLA on TensorFlow, jax.jit on JAX;
eager: neither) it builds the model and its optimizer exactly as training
does (`run.compile_for_training`), then times:

- the first call: one epoch of 2 steps, i.e. the compile plus two steps;
- `--rounds` rounds of `--steps` steps, the modes taking turns, so a busy
  neighbour on a shared machine slows both alike (the median is kept);
- one val pass (the inference model with its flip TTA) after a warm-up pass.

It prints and writes (`--out`, JSON) seconds per step, a forecast of seconds
per epoch (`ceil(train_images / batch)` steps plus the val pass) and, for
the compiled mode, the epochs that fit the trial's time budget:
`floor((budget − compile − margin) / epoch)`. Set the grid's `epochs` from
that. The pixels are random (speed does not depend on them), so the probe
needs no dataset and runs where only JAX and Keras are installed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARGIN_SECONDS = 60.0  # the final val pass, the float32 copy and model.keras after the loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="gpu", help="a shipped grid name or a YAML file")
    parser.add_argument("--trials", default="", help="comma-separated trial indices (default all)")
    parser.add_argument("--modes", default="compiled,eager", help="compiled, eager or both")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per mode")
    parser.add_argument("--train-images", type=int, default=45_000)
    parser.add_argument("--val-images", type=int, default=5_000)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a float32 ResNet-8 at batch 16, 2 steps, 64 val images: checks the probe, not the GPU",
    )
    parser.add_argument("--out", default="", help="also write the results here (JSON)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO))
    import keras

    import cifarflow.configs as configs
    from cifarflow.components.train import device
    from cifarflow.components.train.config import TrialConfig
    from cifarflow.grid import load_grid

    grid = load_grid(configs.resolve(args.config))
    indices = [int(i) for i in args.trials.split(",")] if args.trials else range(len(grid.trials))
    trials = [grid.trial(i) for i in indices]
    if args.tiny:
        trials = [
            TrialConfig.from_dict(
                {**t.to_dict(), "depth": 8, "width": 1, "batch_size": 16, "mixed_precision": "off"}
            )
            for t in trials[:1]
        ]
        args.steps, args.rounds, args.val_images = 2, 1, 64
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"compiled", "eager"}
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}")

    records = []
    for index, trial in zip(indices, trials, strict=False):
        policy = device.dtype_policy(trial.mixed_precision)
        keras.mixed_precision.set_global_policy(policy)
        probes = {mode: _Probe(trial, mode == "compiled", args) for mode in modes}
        for probe in probes.values():
            probe.first_call()
        for _ in range(args.rounds):
            for probe in probes.values():  # modes take turns: load hits both alike
                probe.timed_round()
        for probe in probes.values():
            record = probe.record(index, policy)
            records.append(record)
            print(json.dumps(record), flush=True)
        keras.mixed_precision.set_global_policy("float32")

    from bench.machine import machine_info

    result = {
        "probe": "gpu_probe",
        "config": grid.name,
        "tiny": args.tiny,
        "backend": device.backend(),
        "device": device.describe_device(),
        "machine": machine_info(),
        "records": records,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


class _Probe:
    """One trial's model in one mode, with random data of the right shapes."""

    def __init__(self, trial, jit_compile: bool, args: argparse.Namespace) -> None:
        import numpy as np

        from cifarflow.components.train.models import build_model
        from cifarflow.components.train.run import compile_for_training
        from cifarflow.components.train.schedules import WarmupSchedule

        self.trial, self.jit_compile, self.args = trial, jit_compile, args
        self.built = build_model(trial)
        steps = math.ceil(args.train_images / trial.batch_size)
        schedule = WarmupSchedule(trial.learning_rate, trial.epochs * steps, steps)
        compile_for_training(self.built, trial, schedule, jit_compile)
        rng = np.random.default_rng(0)
        batch = trial.batch_size
        self.images = rng.integers(0, 256, (args.steps * batch, 32, 32, 3), dtype=np.uint8)
        coarse = np.eye(20, dtype=np.float32)[rng.integers(0, 20, len(self.images))]
        self.targets = coarse
        if self.built.has_fine_head:
            fine = np.eye(100, dtype=np.float32)[rng.integers(0, 100, len(self.images))]
            self.targets = {"logits": coarse, "fine_logits": fine}
        self.val = rng.integers(0, 256, (args.val_images, 32, 32, 3), dtype=np.uint8)
        self.compile_seconds = 0.0
        self.step_seconds: list[float] = []
        self.val_seconds = 0.0

    def _fit(self, count: int) -> float:
        targets = (
            {k: v[:count] for k, v in self.targets.items()}
            if isinstance(self.targets, dict)
            else self.targets[:count]
        )
        started = time.monotonic()
        self.built.training.fit(
            self.images[:count], targets, batch_size=self.trial.batch_size, epochs=1, verbose=0
        )
        return time.monotonic() - started

    def first_call(self) -> None:
        self.compile_seconds = self._fit(2 * self.trial.batch_size)
        self.built.inference.predict(self.val[:500], batch_size=500, verbose=0)

    def timed_round(self) -> None:
        seconds = self._fit(len(self.images))
        self.step_seconds.append(seconds / self.args.steps)
        started = time.monotonic()
        self.built.inference.predict(self.val, batch_size=500, verbose=0)
        self.val_seconds = time.monotonic() - started

    def record(self, index: int, policy: str) -> dict:
        step = statistics.median(self.step_seconds)
        steps = self.args.train_images // self.trial.batch_size
        if not self.jit_compile:
            steps = math.ceil(self.args.train_images / self.trial.batch_size)
        epoch = step * steps + self.val_seconds
        budget = self.trial.time_budget_minutes * 60.0
        fits = None
        if self.jit_compile and budget > 0:
            fits = int(max(budget - self.compile_seconds - MARGIN_SECONDS, 0.0) // epoch)
        return {
            "trial": index,
            "depth": self.trial.depth,
            "width": self.trial.width,
            "batch_size": self.trial.batch_size,
            "params": int(self.built.training.count_params()),
            "dtype_policy": policy,
            "mode": "compiled" if self.jit_compile else "eager",
            "keras_jit_compile": bool(self.built.training.jit_compile),
            "first_call_seconds": round(self.compile_seconds, 2),
            "step_seconds": round(step, 5),
            "step_seconds_rounds": [round(s, 5) for s in self.step_seconds],
            "val_seconds": round(self.val_seconds, 2),
            "epoch_seconds": round(epoch, 2),
            "epochs_in_budget": fits,
            "configured_epochs": self.trial.epochs,
        }


if __name__ == "__main__":
    raise SystemExit(main())

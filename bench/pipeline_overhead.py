"""Benchmark: what running as a kfp.local pipeline costs over calling the steps directly.

Side by side in one run, on the quick grid and the shipped sample:

* `cifarflow run --config quick --no-cache` in a fresh process (every task a
  kfp.local subprocess that imports its libraries, artifacts passed as files),
  with its default of two trials at a time, and again one trial at a time;
* the same step functions called one after another in one process
  (ingest, preprocess, eda, expand_grid, train + evaluate per trial,
  select_best, publish), each timed on its own.

Overhead = (pipeline wall time - sum of the direct step times) / pipeline
wall time. Target: under 25 % on the quick config.

Where the overhead goes: each task is a fresh Python process that imports
kfp's executor (~0.5 s), and train and evaluate each import TensorFlow
again (~3 s each), costs the one-process run pays once. Two trials at a time
hide most of it: one trial's start-up overlaps the other's training.

Usage: python bench/pipeline_overhead.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pipeline_overhead.json"

DIRECT = r"""
import json, sys, time
from pathlib import Path
root = Path(sys.argv[1])
times = {}
def timed(name, fn, *args, **kwargs):
    t0 = time.perf_counter(); out = fn(*args, **kwargs); times[name] = time.perf_counter() - t0; return out
from cifarflow.components.ingest.executor import ingest
from cifarflow.components.preprocess.executor import preprocess
from cifarflow.components.eda.executor import eda
from cifarflow.components.expand_grid.executor import expand_grid
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.executor import train
from cifarflow.components.evaluate.executor import evaluate
from cifarflow.components.select_best.executor import SelectConfig, select_best
from cifarflow.components.publish.executor import publish
timed("ingest", ingest, "sample", root / "raw")
timed("preprocess", preprocess, root / "raw", root / "splits")
timed("eda", eda, root / "splits", root / "eda")
grid = timed("expand_grid", expand_grid, "quick")
candidates = []
for i, trial in enumerate(grid.trials):
    timed(f"train_{i}", train, root / "splits", TrialConfig.from_dict(trial), root / f"model_{i}")
    timed(f"evaluate_{i}", evaluate, root / f"model_{i}", root / "splits", root / f"candidate_{i}")
    candidates.append(root / f"candidate_{i}")
store = str(root / "store")
result = timed("select_best", select_best, candidates, root / "select", SelectConfig(store=store))
timed("publish", publish, result.model_dir, store, "cifarflow", approved=result.publish)
print("STEP_TIMES", json.dumps(times))
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipeline = {}
        for parallelism in (2, 1):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cifarflow.cli.main",
                    "run",
                    "--config",
                    "quick",
                    "--no-cache",
                    "--trial-parallelism",
                    str(parallelism),
                    "--runs-dir",
                    str(tmp / f"runs-{parallelism}"),
                    "--store",
                    str(tmp / f"store-{parallelism}"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=tmp,
            )
            pipeline[parallelism] = time.perf_counter() - t0
        pipeline_s = pipeline[2]
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", DIRECT, str(tmp / "direct")],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        direct_process_s = time.perf_counter() - t0
    steps = json.loads(done.stdout.rsplit("STEP_TIMES", 1)[1])
    direct_s = sum(steps.values())
    overhead = (pipeline_s - direct_s) / pipeline_s
    serial_overhead = (pipeline[1] - direct_s) / pipeline[1]
    result = {
        "benchmark": "pipeline overhead: cifarflow run (kfp.local) vs the step functions in one process, quick grid, shipped sample",
        "machine": machine_info(),
        "pipeline_wall_s": round(pipeline_s, 1),
        "pipeline_trial_parallelism": 2,
        "pipeline_one_trial_at_a_time_wall_s": round(pipeline[1], 1),
        "one_trial_at_a_time_overhead_fraction": round(serial_overhead, 3),
        "direct_steps_sum_s": round(direct_s, 1),
        "direct_process_wall_s": round(direct_process_s, 1),
        "direct_step_s": {k: round(v, 2) for k, v in steps.items()},
        "overhead_fraction": round(overhead, 3),
        "target_overhead_fraction": 0.25,
        "meets_target": overhead < 0.25,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"cifarflow run (kfp.local):        {pipeline_s:7.1f} s  (2 trials at a time, the default)"
    )
    print(
        f"  one trial at a time:            {pipeline[1]:7.1f} s  (overhead {serial_overhead:.1%})"
    )
    print(
        f"step functions, one process:      {direct_s:7.1f} s  (process wall {direct_process_s:.1f} s)"
    )
    print(
        f"overhead: {overhead:.1%} of the pipeline run (target < 25%) -> {'met' if result['meets_target'] else 'NOT met'}"
    )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

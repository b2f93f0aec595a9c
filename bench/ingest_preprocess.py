"""Benchmark: ingest + preprocess of the full CIFAR-100 archive from a local file.

Each measured job runs in a fresh process (so peak memory is its own), three
times; the best wall time is reported. Side by side, in the same run, the
floor: merely un-gzipping the archive and unpickling both official files.
Target on a 2-core machine: ingest + preprocess under 6 s and under 1 GB peak.

Usage: python bench/ingest_preprocess.py [--archive PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-100-python.tar.gz"
RESULTS = REPO / "bench" / "results" / "ingest_preprocess.json"

FLOOR = """
import pickle, sys, tarfile
with tarfile.open(sys.argv[1], "r|gz") as tar:
    for m in tar:
        if m.name.endswith(("/train", "/test")):
            pickle.load(tar.extractfile(m), encoding="latin1")
"""

PIPELINE = """
import sys
from cifarflow.components.ingest.executor import ingest
from cifarflow.components.preprocess.executor import preprocess
ingest(sys.argv[1], sys.argv[2] + "/raw")
preprocess(sys.argv[2] + "/raw", sys.argv[2] + "/splits")
"""


_REPORT_PEAK = """
import resource
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(code: str, *args: str) -> tuple[float, float]:
    """Runs `code` in a new Python process; returns (wall seconds, its own peak RSS in MiB)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code + _REPORT_PEAK, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    peak_kib = int(done.stdout.rsplit("PEAK_KIB", 1)[1])
    return wall, peak_kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.archive.is_file():
        print(f"bench: error: archive not found: {args.archive}", file=sys.stderr)
        return 2
    floor_runs, pipeline_runs = [], []
    for _ in range(args.repeats):
        floor_runs.append(measure(FLOOR, str(args.archive)))
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            pipeline_runs.append(measure(PIPELINE, str(args.archive), out))
    floor_s = min(w for w, _ in floor_runs)
    pipeline_s = min(w for w, _ in pipeline_runs)
    pipeline_peak = max(m for _, m in pipeline_runs)
    result = {
        "benchmark": "ingest + preprocess, full CIFAR-100 archive from a local file",
        "machine": machine_info(),
        "repeats": args.repeats,
        "floor_gunzip_unpickle_s": round(floor_s, 3),
        "floor_peak_rss_mib": round(max(m for _, m in floor_runs), 1),
        "ingest_preprocess_s": round(pipeline_s, 3),
        "ingest_preprocess_peak_rss_mib": round(pipeline_peak, 1),
        "ratio_to_floor": round(pipeline_s / floor_s, 2),
        "targets": {"seconds": 6.0, "peak_rss_mib": 1024},
        "meets_targets": pipeline_s < 6.0 and pipeline_peak < 1024,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"floor (gunzip + unpickle):   {floor_s:6.2f} s")
    print(
        f"ingest + preprocess:         {pipeline_s:6.2f} s  peak {pipeline_peak:.0f} MiB  ({result['ratio_to_floor']}x floor)"
    )
    print(
        f"targets: < 6 s, < 1024 MiB -> {'met' if result['meets_targets'] else 'NOT met'}; written to {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

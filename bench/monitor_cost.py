"""Benchmark: what the gateway's monitors cost a classification, monitors on vs off, side by side.

    .venv/bin/python bench/monitor_cost.py [--model DIR] [--rounds 6] [--seconds 3]

One model server and two gateways in front of it, the same code and flags
but `--monitors on` (with `--monitor-store`, so every answer is judged
against a real reference and every image goes into the drift windows) and
`--monitors off`. One client at a time (closed loop) sends a real CIFAR-100
test image as a 64x64 JPEG, by REST (raw body) and by gRPC Classify. The
four paths run in short alternating rounds, so a change in the machine's
load hits both gateways alike; the figure is the median over rounds of
(p50 on - p50 off). Then one client alternates single requests between the
two gateways (`--pairs` each): the finer measure, since the machine's state
drifts between rounds by more than the effect. That is repeated on
`--restarts` freshly started gateway pairs, since two processes of the same
code can differ by a few hundredths of a millisecond; the figure is the mean.
Target: at most 0.2 ms. `--soak-seconds` then loads both gateways at once
(REST, 4 clients each) and samples their RSS: memory should stay flat with
the monitors as without.

Also measured in this process, with CPU time (not wall time, which other
work on the machine inflates): the monitors' own work per image, i.e. what
the gateway does more with them on (the 32-pixel thumbnail in the upload
check, the features, the window update, the OOD verdict).

Without --model, the tiny test model (tests/serving/model_factory.py) with a
reference built from the shipped sample is served: the numbers then measure
the gateway, not the network. Writes bench/results/monitor_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import load_average, machine_info  # noqa: E402
from bench.serving_latency import (  # noqa: E402
    closed_loop,
    cpu_seconds,
    free_port,
    gateway_args,
    gateway_grpc_call,
    gateway_rest_call,
    measured,
    memory_soak,
    model_server_args,
    sample_image,
    start,
    stop_processes,
)

RESULTS = REPO / "bench" / "results" / "monitor_cost.json"
TINY_WITH_REFERENCE = (
    "import sys\nsys.path.insert(0, sys.argv[2])\nfrom pathlib import Path\n"
    "from tests.serving.model_factory import export_test_model\n"
    "from tests.serving.monitoring_support import model_with_reference\n"
    "model_with_reference(export_test_model(Path(sys.argv[1]) / 'raw'), Path(sys.argv[1]) / 'model')\n"
)


def cpu_us(fn, repeat: int) -> float:
    """CPU microseconds per call of `fn` (this thread's process time)."""
    fn()
    started = time.process_time()
    for _ in range(repeat):
        fn()
    return round(1e6 * (time.process_time() - started) / repeat, 1)


def judge_cpu_us(loop, monitor, probabilities, logits, repeat: int) -> float:
    """CPU microseconds per `judge` call, awaited inside one coroutine as the gateway does."""

    async def judge_many() -> float:
        started = time.process_time()
        for _ in range(repeat):
            await monitor.judge(1, probabilities, logits)
        return time.process_time() - started

    return round(1e6 * loop.run_until_complete(judge_many()) / repeat, 1)


def in_process_costs(image: bytes, reference_dir: Path, repeat: int) -> dict[str, float]:
    """CPU time of each monitor step for one image, and of the upload check without them."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from cifarflow.serving.gateway.images import ImageLimits, prepare_image
    from cifarflow.serving.gateway.monitoring.config import MonitorConfig
    from cifarflow.serving.gateway.monitoring.features import (
        MODEL_INPUT_SIDE,
        image_features,
        images_features,
    )
    from cifarflow.serving.gateway.monitoring.monitor import FLUSH_IMAGES, GatewayMonitor

    limits = ImageLimits()
    thumbnail = prepare_image(image, limits, MODEL_INPUT_SIDE).thumbnail
    assert thumbnail is not None
    pixels = np.asarray(thumbnail.convert("RGB"))
    monitor = GatewayMonitor(
        MonitorConfig(store=str(reference_dir)), "cifarflow", CollectorRegistry()
    )
    batch = np.stack([pixels] * FLUSH_IMAGES)
    logits = np.random.default_rng(0).normal(size=(1, 20)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(monitor.judge(1, probabilities, logits))  # reads the reference once
    costs = {
        "upload_check_without_monitors": cpu_us(lambda: prepare_image(image, limits), repeat),
        "upload_check_with_thumbnail": cpu_us(
            lambda: prepare_image(image, limits, MODEL_INPUT_SIDE), repeat
        ),
        "image_features_one_at_a_time": cpu_us(lambda: image_features(pixels), repeat),
        "image_features_per_image_in_a_batch": round(
            cpu_us(lambda: images_features(batch), max(1, repeat // FLUSH_IMAGES)) / FLUSH_IMAGES,
            1,
        ),
        # Queued; every FLUSH_IMAGES-th call measures the queue and updates
        # the gauges: the mean over calls.
        "observe_images": cpu_us(lambda: monitor.observe_images([thumbnail]), repeat),
        "judge_answer": judge_cpu_us(loop, monitor, probabilities, logits, repeat),
        "update_gauges_once": cpu_us(lambda: monitor.update_gauges(), max(1, repeat // 10)),
    }
    loop.close()
    costs["monitors_per_image_total"] = round(
        costs["upload_check_with_thumbnail"]
        - costs["upload_check_without_monitors"]
        + costs["observe_images"]
        + costs["judge_answer"],
        1,
    )
    return costs


def interleaved(make_on, make_off, pids: dict[str, int], pairs: int) -> dict[str, object]:
    """One client alternating single requests to the two gateways, `pairs` of each.

    Back to back, so whatever the machine does meanwhile hits both alike: the
    median of the paired differences resolves a tenth of a millisecond where
    rounds of seconds (above) drift by more than that between rounds.
    """
    call_on, call_off = make_on(), make_off()
    for _ in range(200):  # warm-up: connections, the reference read, first-call costs
        call_on()
        call_off()
    before = {m: cpu_seconds(pid) for m, pid in pids.items()}
    on, off = [], []
    for index in range(pairs):
        order = (
            ((call_on, on), (call_off, off)) if index % 2 == 0 else ((call_off, off), (call_on, on))
        )
        for call, latencies in order:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
    cpu = {m: 1000 * (cpu_seconds(pid) - before[m]) / pairs for m, pid in pids.items()}
    return {
        "pairs": pairs,
        "p50_ms_on": round(1000 * statistics.median(on), 3),
        "p50_ms_off": round(1000 * statistics.median(off), 3),
        "added_p50_ms": round(1000 * (statistics.median(on) - statistics.median(off)), 3),
        "median_paired_difference_ms": round(
            1000 * statistics.median(a - b for a, b in zip(on, off, strict=True)), 3
        ),
        "gateway_cpu_ms_per_request": {m: round(v, 3) for m, v in cpu.items()},
        "added_gateway_cpu_ms_per_request": round(cpu["on"] - cpu["off"], 3),
    }


def start_gateway_pair(model_port: int, store: Path, image: bytes, order: int):
    """A gateway with monitors and one without in front of the model server; `order` odd: off first.

    Returns:
        (processes, call makers by path name, pid by "on"/"off").
    """
    processes, paths, pids = [], {}, {}
    for monitors in ("on", "off") if order % 2 == 0 else ("off", "on"):
        http_port, grpc_port = free_port(), free_port()
        extra = ["--monitors", monitors, "--monitor-store", str(store)]
        processes.append(
            start(gateway_args(model_port, http_port, grpc_port, *extra), "gateway: HTTP")
        )
        pids[monitors] = processes[-1].pid
        paths[f"rest-monitors-{monitors}"] = gateway_rest_call(
            f"http://127.0.0.1:{http_port}/v1/classify", image
        )
        paths[f"grpc-monitors-{monitors}"] = gateway_grpc_call(f"127.0.0.1:{grpc_port}", image)
    return processes, paths, pids


def added_cpu(rows: list[dict], protocol: str) -> float | None:
    """Median over rounds of the gateway's CPU ms per request, monitors on minus off."""
    per_round: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["path"].startswith(f"{protocol}-") and row.get("completed"):
            monitors = row["path"].rpartition("-")[2]
            per_round.setdefault(row["round"], {})[monitors] = row["cpu_ms_per_request"]["gateway"]
    added = [r["on"] - r["off"] for r in per_round.values() if {"on", "off"} <= r.keys()]
    return round(statistics.median(added), 3) if added else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a SavedModel folder with reference.json")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured seconds per path and round"
    )
    parser.add_argument("--repeat", type=int, default=2000, help="calls per in-process measurement")
    parser.add_argument(
        "--pairs", type=int, default=3000, help="requests to each gateway in the interleaved run"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=3,
        help="fresh gateway pairs the interleaved run is repeated on (the figure is their mean)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=0.0,
        help="then both gateways under REST load at once, their RSS sampled (0 skips it)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-monitor-cost-"))
    model = args.model
    if model is None:
        subprocess.run(
            [sys.executable, "-c", TINY_WITH_REFERENCE, str(workdir), str(REPO)],
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        model = workdir / "model"
    from cifarflow.serving.protos import use_protos_only

    use_protos_only()
    from cifarflow.serving.store import publish_model

    store = workdir / "store"
    publish_model(model, store, "cifarflow", {})
    image = sample_image()
    results: dict[str, object] = {
        "machine": machine_info(),
        "model": str(
            args.model or "tests/serving/model_factory.py (tiny linear model) + sample reference"
        ),
        "image": f"CIFAR-100 test image as {len(image)}-byte 64x64 JPEG, one client",
        "rounds": args.rounds,
        "seconds_per_path_and_round": args.seconds,
        "load_average_before": load_average(),
        "in_process_cpu_us": in_process_costs(image, store, args.repeat),
    }
    print(json.dumps(results["in_process_cpu_us"]), flush=True)
    processes: list[subprocess.Popen] = []
    rows: list[dict[str, object]] = []
    try:
        model_port = free_port()
        processes.append(start(model_server_args(store, model_port), "model server:"))
        gateways, paths, pids = start_gateway_pair(model_port, store, image, 0)
        processes.extend(gateways)
        for round_ in range(args.rounds):
            names = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in names:
                gateway = {"gateway": pids[name.rpartition("-")[2]]}
                call = paths[name]
                figures = measured(lambda call=call: closed_loop(call, 1, args.seconds), gateway)
                row = {"round": round_, "path": name, **figures}
                print(json.dumps(row), flush=True)
                rows.append(row)
        # One pair of processes can be a little faster or slower than another
        # of the same code (where their memory lands): the pairs run again on
        # freshly started gateways, and the figure is the mean over them.
        runs: dict[str, list[dict[str, object]]] = {"rest": [], "grpc": []}
        for restart in range(args.restarts):
            if restart:
                fresh, paths_now, pids_now = start_gateway_pair(model_port, store, image, restart)
            else:
                fresh, paths_now, pids_now = [], paths, pids
            try:
                for protocol in runs:
                    figures = interleaved(
                        paths_now[f"{protocol}-monitors-on"],
                        paths_now[f"{protocol}-monitors-off"],
                        pids_now,
                        args.pairs,
                    )
                    runs[protocol].append(figures)
                    print(json.dumps({"interleaved": protocol, "restart": restart, **figures}))
            finally:
                stop_processes(fresh)
        results["interleaved"] = {
            protocol: {
                "restarts": figures,
                "added_p50_ms_mean": round(statistics.mean(f["added_p50_ms"] for f in figures), 3),
                "median_paired_difference_ms_mean": round(
                    statistics.mean(f["median_paired_difference_ms"] for f in figures), 3
                ),
                "added_gateway_cpu_ms_per_request_mean": round(
                    statistics.mean(f["added_gateway_cpu_ms_per_request"] for f in figures), 3
                ),
            }
            for protocol, figures in runs.items()
        }
        for protocol, figures in results["interleaved"].items():
            brief = {k: v for k, v in figures.items() if k != "restarts"}
            print(json.dumps({"interleaved": protocol, **brief}), flush=True)
        if args.soak_seconds > 0:
            targets = {m: (paths[f"rest-monitors-{m}"], pids[m]) for m in ("on", "off")}
            results["soak"] = memory_soak(targets, 4, args.soak_seconds)
            for monitors, figures in results["soak"].items():
                brief = {k: v for k, v in figures.items() if k != "rss_mb_samples"}
                print(json.dumps({"soak": f"monitors-{monitors}", **brief}), flush=True)
    finally:
        stop_processes(processes)
    results["load_average_after"] = load_average()
    results["scenarios"] = rows
    summary = {}
    for protocol in ("rest", "grpc"):
        on = {r["round"]: r.get("p50_ms") for r in rows if r["path"] == f"{protocol}-monitors-on"}
        off = {r["round"]: r.get("p50_ms") for r in rows if r["path"] == f"{protocol}-monitors-off"}
        added = [on[k] - off[k] for k in on if on[k] is not None and off.get(k) is not None]
        summary[protocol] = {
            "p50_ms_on_median": statistics.median(v for v in on.values() if v is not None),
            "p50_ms_off_median": statistics.median(v for v in off.values() if v is not None),
            "added_p50_ms_per_round": [round(a, 3) for a in added],
            "added_p50_ms_median": round(statistics.median(added), 3) if added else None,
            "added_gateway_cpu_ms_per_request_median": added_cpu(rows, protocol),
        }
        print(
            f"{protocol}: p50 on {summary[protocol]['p50_ms_on_median']:.3f} ms, off "
            f"{summary[protocol]['p50_ms_off_median']:.3f} ms, added (median of rounds) "
            f"{summary[protocol]['added_p50_ms_median']} ms; ratio on/off "
            f"{summary[protocol]['p50_ms_on_median'] / summary[protocol]['p50_ms_off_median']:.3f}; "
            f"gateway CPU added {summary[protocol]['added_gateway_cpu_ms_per_request_median']} ms"
        )
    results["summary"] = summary
    results["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

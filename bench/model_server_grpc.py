"""Benchmark: the model server's gRPC in this tree against a baseline commit's, side by side.

Two `cifarflow serve model` processes on the same store (batching on, the
defaults): this tree's and the one of `--baseline REF`, checked out into a
temporary git worktree (e.g. the commit before the model server moved to
grpc.aio). TensorFlow Serving's Predict (stock stub, one CIFAR image as JPEG)
goes straight to each, from 1 and 32 closed-loop client threads in this
process. Rounds alternate which server goes first, so a change in the
machine's load falls on both. Per server and client count: p50 (median of
the rounds' p50s), throughput (mean of the rounds) and the server process's
CPU ms per completed request (psutil, warm-up included); the per-round
values are kept to show the noise.

Usage:
    python bench/model_server_grpc.py --baseline REF [--rounds 4] [--seconds 5]

Without --model, the tiny test model of tests/serving/model_factory.py
serves: the numbers then measure the server's own overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import load_average, machine_info  # noqa: E402
from bench.records import append_records  # noqa: E402
from bench.serving_latency import (  # noqa: E402
    MODEL_DESCRIPTIONS,
    check_out_baseline,
    closed_loop,
    direct_call,
    free_port,
    model_server_args,
    published_store,
    remove_baseline,
    sample_image,
    start,
    stop_processes,
)

RESULTS = REPO / "bench" / "results" / "model_server_grpc.json"
CLIENTS = (1, 32)
SERVERS = ("baseline", "this")


def server_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def one_run(make_call, process: psutil.Process, clients: int, seconds: float) -> dict:
    """A closed loop against one server, with that server's CPU ms per completed request."""
    before = server_cpu_s(process)
    row = closed_loop(make_call, clients, seconds)
    row["server_cpu_ms_per_request"] = round(
        1000 * (server_cpu_s(process) - before) / max(1, row["completed"]), 3
    )
    return row


def summarise(rounds: list[dict]) -> dict:
    """Per server and client count: medians/means over the rounds, and this/baseline ratios."""
    summary: dict = {}
    for clients in CLIENTS:
        for server in SERVERS:
            rows = [
                r
                for r in rounds
                if r["server"] == server and r["clients"] == clients and "p50_ms" in r
            ]
            completed = sum(r["completed"] for r in rows)
            summary[f"{server}_{clients}"] = {
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 3),
                "p50_ms_rounds": [r["p50_ms"] for r in rows],
                "throughput_rps": round(statistics.mean(r["throughput_rps"] for r in rows), 1),
                "throughput_rps_rounds": [r["throughput_rps"] for r in rows],
                "server_cpu_ms_per_request": round(
                    sum(r["server_cpu_ms_per_request"] * r["completed"] for r in rows)
                    / max(1, completed),
                    3,
                ),
                "server_cpu_ms_rounds": [r["server_cpu_ms_per_request"] for r in rows],
                "errors": sum(
                    r["errors"] for r in rounds if r["server"] == server and r["clients"] == clients
                ),
            }
        this, base = summary[f"this_{clients}"], summary[f"baseline_{clients}"]
        summary[f"ratios_{clients}"] = {
            key: round(this[key] / base[key], 3) if base[key] else None
            for key in ("p50_ms", "throughput_rps", "server_cpu_ms_per_request")
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, metavar="REF", help="the commit to compare")
    parser.add_argument("--model", type=Path, help="an exported SavedModel folder to serve")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="recorded with the results")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-model-server-grpc-"))
    store = published_store(workdir, args.model, "tiny")
    image = sample_image()
    source = workdir / "baseline"
    commit = check_out_baseline(args.baseline, source)
    processes: list[subprocess.Popen] = []
    record: dict = {
        "benchmark": "model_server_grpc",
        "machine": machine_info(),
        "baseline": {"ref": args.baseline, "commit": commit},
        "model": str(args.model or MODEL_DESCRIPTIONS["tiny"]),
        "image": f"CIFAR-100 test image as {len(image)}-byte 64x64 JPEG, one per request",
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "note": args.note,
        "load_average_before": load_average(),
    }
    rounds: list[dict] = []
    try:
        targets = {}
        for server, tree in (("baseline", source), ("this", None)):
            port = free_port()
            processes.append(
                start(model_server_args(store, port, "--batching"), "model server:", source=tree)
            )
            targets[server] = (
                direct_call(f"127.0.0.1:{port}", image),
                psutil.Process(processes[-1].pid),
            )
        for index in range(args.rounds):
            order = SERVERS if index % 2 == 0 else SERVERS[::-1]
            for clients in CLIENTS:
                for server in order:
                    make_call, process = targets[server]
                    row = {
                        "round": index,
                        "server": server,
                        "clients": clients,
                        **one_run(make_call, process, clients, args.seconds),
                    }
                    print(json.dumps(row), flush=True)
                    rounds.append(row)
    finally:
        stop_processes(processes)
        remove_baseline(source)
    record["load_average_after"] = load_average()
    record["runs"] = rounds
    record["summary"] = summarise(rounds)
    append_records(args.out, [record], indent=2)
    for clients in CLIENTS:
        s = record["summary"]
        base, this, ratio = s[f"baseline_{clients}"], s[f"this_{clients}"], s[f"ratios_{clients}"]
        print(
            f"{clients:>2} clients: p50 {base['p50_ms']} -> {this['p50_ms']} ms "
            f"(x{ratio['p50_ms']}), throughput {base['throughput_rps']} -> "
            f"{this['throughput_rps']} req/s (x{ratio['throughput_rps']}), server CPU "
            f"{base['server_cpu_ms_per_request']} -> {this['server_cpu_ms_per_request']} "
            f"ms/request (x{ratio['server_cpu_ms_per_request']})"
        )
    print(
        f"load average before/after: {record['load_average_before']} / "
        f"{record['load_average_after']}; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

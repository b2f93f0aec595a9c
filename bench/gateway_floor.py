"""Benchmark: what one request costs each layer under the gateway on this machine, at 1 client.

The 1-client target of serving_latency.py (the gateway adds at most 1.0 ms
at p50) is a budget for the gateway's own work on a request's path. This
measures, side by side in one run, the floors that budget stands on:

- `grpc_echo_sync`, `grpc_echo_aio`: a unary gRPC call whose handler does
  nothing, client and server in this process: grpcio's own cost of one round
  trip (the gateway makes one to the model server for every request, and a
  gRPC client one to the gateway). CPU is the whole process's: both ends.
- `uvicorn_bare`: GET to bare uvicorn (httptools, uvloop, the gateway's
  settings) serving a two-line ASGI app: the HTTP server's own cost. CPU is
  the server thread's.
- `gateway_healthz`: GET /healthz through a real `cifarflow serve gateway`:
  server, framework and middleware, no work. CPU is the gateway process's.
- `gateway_classify`: POST /v1/classify (one JPEG) through the gateway.
- `gateway_classify_monitors_off`: the same through a second gateway
  started with `--monitors off` (no OOD score, no drift windows).
- `direct`: the same image straight to the model server's Predict.

Derived: the classify handler's own CPU (`gateway_classify - gateway_healthz`),
the monitors' (`gateway_classify - gateway_classify_monitors_off`), the
framework's (`gateway_healthz - uvicorn_bare`), and the added p50
(`gateway_classify - direct`). Each scenario runs once per round, rounds in
a row; the medians over the rounds are reported, the rounds kept.

With `--baseline REF` the gateway of commit REF (checked out into a
temporary git worktree) serves beside this tree's, in front of the same
model server, and its /healthz and /v1/classify are measured in the same
rounds (`baseline_healthz`, `baseline_classify`): where a CPU gap between
two gateway stacks lies, in the HTTP layers or in the classify path.

Usage:
    python bench/gateway_floor.py [--rounds 3] [--seconds 3] [--baseline REF]

The tiny test model serves (tests/serving/model_factory.py), so the model's
compute is not in the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import load_average, machine_info  # noqa: E402
from bench.records import append_records  # noqa: E402
from bench.serving_latency import (  # noqa: E402
    MODEL_DESCRIPTIONS,
    check_out_baseline,
    cpu_seconds,
    direct_call,
    free_port,
    gateway_args,
    gateway_rest_call,
    model_server_args,
    published_store,
    remove_baseline,
    sample_image,
    start,
    stop_processes,
)

RESULTS = REPO / "bench" / "results" / "gateway_floor.json"
SCENARIOS = (
    "grpc_echo_sync",
    "grpc_echo_aio",
    "uvicorn_bare",
    "gateway_healthz",
    "gateway_classify",
    "gateway_classify_monitors_off",
    "direct",
)
BASELINE_SCENARIOS = ("baseline_healthz", "baseline_classify")
ECHO_METHOD = "/bench.Echo/Echo"


def timed_loop(call: Callable[[], object], cpu: Callable[[], float], seconds: float) -> dict:
    """Calls `call` one at a time for `seconds` (after 0.5 s of warm-up): p50 and CPU per call."""
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        call()
    latencies = []
    cpu_before, end = cpu(), time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        call()
        latencies.append(time.perf_counter() - started)
    return _row(latencies, cpu() - cpu_before)


def _row(latencies: list[float], cpu_s: float) -> dict:
    return {
        "requests": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "cpu_ms_per_request": round(1000 * cpu_s / max(1, len(latencies)), 3),
    }


def grpc_echo_sync(payload: bytes, seconds: float) -> dict:
    import grpc

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, _: request)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(ECHO_METHOD)
            return timed_loop(lambda: echo(payload, timeout=10), cpu_seconds, seconds)
    finally:
        server.stop(0).wait()


def grpc_echo_aio(payload: bytes, seconds: float) -> dict:
    import grpc

    async def echo(request: bytes, _context) -> bytes:
        return request

    async def run() -> dict:
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(ECHO_METHOD)
                warm_until = time.perf_counter() + 0.5
                while time.perf_counter() < warm_until:
                    await call(payload, timeout=10)
                latencies = []
                cpu_before, end = cpu_seconds(), time.perf_counter() + seconds
                while (started := time.perf_counter()) < end:
                    await call(payload, timeout=10)
                    latencies.append(time.perf_counter() - started)
                return _row(latencies, cpu_seconds() - cpu_before)
        finally:
            await server.stop(0)

    import uvloop

    return uvloop.run(run())


def uvicorn_bare(seconds: float) -> dict:
    from cifarflow.serving.asgi import HttpConfig, uvicorn_config
    from cifarflow.serving.ports import bind

    async def app(scope, receive, send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    import uvicorn
    import uvloop

    listening = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, HttpConfig("127.0.0.1", 0)))
    thread = threading.Thread(
        target=lambda: uvloop.run(server.serve(sockets=[listening])), daemon=True
    )
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        get = gateway_rest_call(f"http://127.0.0.1:{listening.getsockname()[1]}/", None)()
        return timed_loop(get, thread_cpu(thread), seconds)
    finally:
        server.should_exit = True
        thread.join(10)
        listening.close()


def thread_cpu(thread: threading.Thread) -> Callable[[], float]:
    """The CPU seconds `thread` (of this process) has used so far, as a function."""
    path = Path(f"/proc/self/task/{thread.native_id}/stat")

    def seconds() -> float:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return seconds


def summarise(rounds: list[dict[str, dict]]) -> dict:
    """Per scenario the medians over the rounds; then the derived costs (see the module docstring)."""
    measured = [name for name in (*SCENARIOS, *BASELINE_SCENARIOS) if name in rounds[0]]
    summary: dict = {
        name: {
            key: round(statistics.median(r[name][key] for r in rounds), 3)
            for key in ("p50_ms", "cpu_ms_per_request")
        }
        for name in measured
    }

    def cpu(name: str) -> float:
        return summary[name]["cpu_ms_per_request"]

    summary["derived"] = {
        "classify_handler_cpu_ms": round(cpu("gateway_classify") - cpu("gateway_healthz"), 3),
        "monitors_cpu_ms": round(cpu("gateway_classify") - cpu("gateway_classify_monitors_off"), 3),
        "framework_cpu_ms": round(cpu("gateway_healthz") - cpu("uvicorn_bare"), 3),
        "added_p50_ms": round(
            summary["gateway_classify"]["p50_ms"] - summary["direct"]["p50_ms"], 3
        ),
    }
    if "baseline_classify" in summary:
        summary["derived"].update(
            {
                "baseline_classify_handler_cpu_ms": round(
                    cpu("baseline_classify") - cpu("baseline_healthz"), 3
                ),
                "baseline_added_p50_ms": round(
                    summary["baseline_classify"]["p50_ms"] - summary["direct"]["p50_ms"], 3
                ),
            }
        )
    return summary


def markdown(record: dict) -> str:
    machine = record["machine"]
    summary = record["summary"]
    lines = [
        "# Gateway floor: one request's cost per layer, 1 client",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['date']} (commit {machine['git_commit']}). {record['rounds']} rounds of "
        f"{record['seconds_per_scenario']} s per scenario; medians. Load average before/after: "
        f"{' '.join(record['load_average_before'])} / {' '.join(record['load_average_after'])}.",
        "",
        "| scenario | p50 (ms) | CPU ms per request | whose CPU |",
        "|---|---:|---:|---|",
    ]
    whose = {
        "grpc_echo_sync": "this process: client and server",
        "grpc_echo_aio": "this process: client and server",
        "uvicorn_bare": "the server thread",
        "gateway_healthz": "the gateway process",
        "gateway_classify": "the gateway process",
        "gateway_classify_monitors_off": "the second gateway's process",
        "direct": "the model server process",
        "baseline_healthz": "the baseline gateway process",
        "baseline_classify": "the baseline gateway process",
    }
    for name in (*SCENARIOS, *BASELINE_SCENARIOS):
        if name not in summary:
            continue
        row = summary[name]
        lines.append(f"| {name} | {row['p50_ms']} | {row['cpu_ms_per_request']} | {whose[name]} |")
    derived = summary["derived"]
    lines += [
        "",
        f"Classify handler's own CPU: {derived['classify_handler_cpu_ms']} ms, of which the "
        f"monitors {derived['monitors_cpu_ms']} ms; framework and "
        f"middleware over bare uvicorn: {derived['framework_cpu_ms']} ms; gateway's added p50: "
        f"{derived['added_p50_ms']} ms (target <= 1.0 ms).",
        "",
    ]
    if "baseline_classify_handler_cpu_ms" in derived:
        lines[-1:] = [
            f"Baseline gateway (commit {record['baseline']['commit']}): classify handler's own "
            f"CPU {derived['baseline_classify_handler_cpu_ms']} ms, added p50 "
            f"{derived['baseline_added_p50_ms']} ms.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the gateway of this commit (a temporary git worktree) side by side",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds above 0")

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-floor-"))
    store = published_store(workdir, None, "tiny")
    image = sample_image()
    record: dict = {
        "benchmark": "gateway_floor",
        "machine": machine_info(),
        "model": MODEL_DESCRIPTIONS["tiny"],
        "image": f"CIFAR-100 test image as {len(image)}-byte 64x64 JPEG",
        "rounds": args.rounds,
        "seconds_per_scenario": args.seconds,
        "baseline": None,
        "load_average_before": load_average(),
    }
    processes: list = []
    baseline_tree = workdir / "baseline"
    rounds: list[dict[str, dict]] = []

    def serve_gateway(*flags: str, source: Path | None = None) -> tuple[int, int]:
        """A gateway in front of the model server: its HTTP port and pid."""
        port = free_port()
        processes.append(
            start(
                gateway_args(model_port, port, free_port(), *flags), "gateway: HTTP", source=source
            )
        )
        return port, processes[-1].pid

    try:
        model_port = free_port()
        processes.append(start(model_server_args(store, model_port, "--batching"), "model server:"))
        model_server = processes[-1].pid
        gateway = serve_gateway()
        unmonitored = serve_gateway("--monitors", "off")
        # (name, gateway, path, image): GET without an image, measured in this order every round.
        http_scenarios = [
            ("gateway_healthz", gateway, "/healthz", None),
            ("gateway_classify", gateway, "/v1/classify", image),
            ("gateway_classify_monitors_off", unmonitored, "/v1/classify", image),
        ]
        if args.baseline:
            commit = check_out_baseline(args.baseline, baseline_tree)
            record["baseline"] = {"ref": args.baseline, "commit": commit}
            baseline = serve_gateway(source=baseline_tree)
            http_scenarios += [
                ("baseline_healthz", baseline, "/healthz", None),
                ("baseline_classify", baseline, "/v1/classify", image),
            ]
        direct = direct_call(f"127.0.0.1:{model_port}", image)()
        for index in range(args.rounds):
            row = {
                "grpc_echo_sync": grpc_echo_sync(image, args.seconds),
                "grpc_echo_aio": grpc_echo_aio(image, args.seconds),
                "uvicorn_bare": uvicorn_bare(args.seconds),
            }
            for name, (port, pid), path, body in http_scenarios:
                call = gateway_rest_call(f"http://127.0.0.1:{port}{path}", body)()
                row[name] = timed_loop(call, lambda pid=pid: cpu_seconds(pid), args.seconds)
            row["direct"] = timed_loop(direct, lambda: cpu_seconds(model_server), args.seconds)
            print(json.dumps({"round": index + 1, **row}), flush=True)
            rounds.append(row)
    finally:
        stop_processes(processes)
        if args.baseline:
            remove_baseline(baseline_tree)
    record["load_average_after"] = load_average()
    record["rounds_measured"] = rounds
    record["summary"] = summarise(rounds)
    append_records(args.out, [record])
    text = markdown(record)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

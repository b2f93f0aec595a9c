"""Benchmark: the highest request rate the gateway holds, at 1 and 2 workers, and a soak at half of it.

Open loop (a fixed arrival rate, the way independent users arrive, not a
closed loop that slows down with the server): request i is due at
`start + i / rate`; one thread with a selector sends it on a free keep-alive
connection (up to 64), and its latency counts from when it was due, so time
spent waiting for a free connection is latency too (no coordinated omission).
Every request is POST /v1/classify with a raw image/jpeg body: real CIFAR-100
test images from the shipped sample, re-encoded as 64x64 JPEG, in turn.

1. For `cifarflow serve gateway --workers 1`, then `--workers 2`: step the
   rate up (x1.5, short probes) until a probe fails, bisect between the last
   pass and the first failure, then hold the best rate for 60 s; if the hold
   fails, try 10 % lower (at most 3 holds). A step passes with zero errors
   and p99 < 100 ms. The whole search is bounded (`--search-budget`).
2. Soak: 10 minutes at half the 1-worker rate against the 1-worker gateway,
   its RSS and open file descriptors sampled with psutil every 5 s; flat when
   the largest value of the last third is within 5 % (fds: or 2) of the
   largest of the first third.

The model server (`cifarflow serve model`, server-side batching on) and the
gateway run as their own processes on 127.0.0.1; the load generator is this
process. All three share this machine's cores, so the rates are the whole
stack's on this machine, load generator included. Results, the machine and
the load average before/after: bench/results/load.{json,md}.

3. With `--baseline REF`: the gateway of commit REF (checked out into a
   temporary git worktree, run from its src/) runs beside this tree's,
   against the same model server, and the two searches take turns step by
   step (which goes first alternates), so a change in the shared machine's
   load hits both alike; one after the other, it decided the comparison.
   The baseline stops before the soak.

Usage:
    python bench/load.py [--model DIR | --model-kind resnet20|tiny] [--baseline REF]
    python bench/load.py --quick          # seconds per step: a smoke run
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import load_average, machine_info  # noqa: E402
from bench.serving_latency import (  # noqa: E402
    MODEL_DESCRIPTIONS,
    check_out_baseline,
    free_port,
    gateway_args,
    model_server_args,
    published_store,
    remove_baseline,
    start,
)

RESULTS_JSON = REPO / "bench" / "results" / "load.json"
P99_LIMIT_MS = 100.0
FLAT_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long each phase runs; `--quick` shrinks every number."""

    start_rate: float = 40.0
    step_factor: float = 1.5
    probe_s: float = 10.0
    hold_s: float = 60.0
    holds: int = 3
    bisect_until: float = 1.1  # stop bisecting when first failure / last pass is below this
    search_budget_s: float = 300.0  # per worker count
    pause_s: float = 2.0
    warmup_s: float = 3.0
    soak_s: float = 600.0
    sample_every_s: float = 5.0
    connections: int = 64
    max_rate: float = 5000.0


QUICK = Plan(
    start_rate=20.0,
    step_factor=3.0,
    probe_s=0.4,
    hold_s=0.8,
    holds=1,
    bisect_until=10.0,
    search_budget_s=1.0,
    pause_s=0.1,
    warmup_s=0.3,
    soak_s=1.5,
    sample_every_s=0.25,
    connections=16,
)


def cifar_jpegs(count: int = 256) -> list[bytes]:
    """The sample's first `count` test images as 64x64 JPEG (quality 90), a small upload each."""
    from tests.serving.images import cifar_test_images, encode

    pixels, _ = cifar_test_images()
    return [encode(p, "JPEG", size=64, quality=90) for p in pixels[:count]]


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class _Connection:
    """One keep-alive connection and the request on it (none while it is idle)."""

    __slots__ = ("sock", "buffer", "due_at", "sent_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.due_at, self.sent_at = sock, b"", None, 0.0


def _parse_answer(buffer: bytes) -> tuple[int, bool, str] | None:
    """(status, close, worker) once `buffer` holds a whole HTTP/1.1 answer with Content-Length, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if len(buffer) < end + 4 + int(headers.get(b"content-length", b"0")):
        return None
    status = int(lines[0].split(b" ", 2)[1])
    return (
        status,
        headers.get(b"connection", b"").lower() == b"close",
        headers.get(b"x-gateway-worker", b"").decode(),
    )


def open_loop(
    url: str,
    images: list[bytes],
    rate: float,
    seconds: float,
    connections: int = 64,
    timeout_s: float = 10.0,
    preopen: int = 32,
) -> dict[str, object]:
    """Sends `rate * seconds` requests due at a fixed rate; latencies count from when each was due.

    One thread and a selector drive up to `connections` keep-alive
    connections (`preopen` opened first, more as needed), so the generator
    costs little of the CPU it shares with the servers and keeps the arrival
    times exact. A request waits for a free connection when all are busy; that wait is
    latency too. Returns counts (sent, ok, errors by kind: `http_<status>`,
    `disconnected`, `timeout`, the exception's name, or `unfinished` for
    requests still unanswered `timeout_s` after the last was due), p50/p99/max
    latency in ms, the p99 send lag (due to sent: no free connection, or
    the generator itself ran late), and answers per gateway worker pid
    (`X-Gateway-Worker`).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: image/jpeg\r\nContent-Length: "
    wire = [head.encode() + str(len(body)).encode() + b"\r\n\r\n" + body for body in images]
    total = max(1, int(round(rate * seconds)))
    selector = selectors.DefaultSelector()
    # Idle connections are reused oldest first, so the load rotates over all of them, as over
    # many clients' connections (each stays with the gateway worker that accepted it).
    idle: collections.deque[_Connection] = collections.deque()
    busy: set[_Connection] = set()
    waiting: collections.deque[tuple[int, float]] = collections.deque()
    latencies: list[float] = []
    waits: list[float] = []
    errors: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    due_index = finished = 0

    def close(connection: _Connection) -> None:
        selector.unregister(connection.sock)
        connection.sock.close()
        busy.discard(connection)
        if connection in idle:
            idle.remove(connection)

    def fail(connection: _Connection, kind: str) -> None:
        nonlocal finished
        errors[kind] += 1
        finished += 1
        close(connection)

    def connect() -> _Connection:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        selector.register(sock, selectors.EVENT_READ, connection)
        return connection

    for _ in range(min(connections, preopen)):
        try:
            idle.append(connect())
        except OSError:
            break  # the requests will find out, and count it
    began = time.monotonic() + 0.05
    give_up_at = began + seconds + timeout_s
    while finished < total:
        now = time.monotonic()
        if now > give_up_at:
            break
        while due_index < total and began + due_index / rate <= now:
            waiting.append((due_index, began + due_index / rate))
            due_index += 1
        while waiting and (idle or len(busy) < connections):
            index, due_at = waiting.popleft()
            connection = idle.popleft() if idle else None
            try:
                if connection is None:
                    connection = connect()
                connection.due_at, connection.sent_at, connection.buffer = (
                    due_at,
                    time.monotonic(),
                    b"",
                )
                busy.add(connection)
                connection.sock.sendall(wire[index % len(wire)])
            except OSError as exc:
                if connection is None:  # could not connect
                    errors[type(exc).__name__] += 1
                    finished += 1
                else:
                    fail(connection, type(exc).__name__)
        next_due = began + due_index / rate if due_index < total else now + 0.05
        for key, _ in selector.select(max(0.0, min(next_due - time.monotonic(), 0.05))):
            connection = key.data
            try:
                chunk = connection.sock.recv(65536)
            except OSError as exc:
                if connection in busy:
                    fail(connection, type(exc).__name__)
                else:
                    close(connection)
                continue
            if (
                connection not in busy
            ):  # the server closed an idle connection: not a request's failure
                close(connection)
                continue
            if not chunk:
                fail(connection, "disconnected")
                continue
            connection.buffer += chunk
            answer = _parse_answer(connection.buffer)
            if answer is None:
                continue
            status, must_close, worker = answer
            done_at = time.monotonic()
            finished += 1
            waits.append(connection.sent_at - connection.due_at)
            if status == 200:
                latencies.append(done_at - connection.due_at)
                workers[worker or "-"] += 1
            else:
                errors[f"http_{status}"] += 1
            busy.discard(connection)
            connection.due_at = None
            if must_close:
                close(connection)
            else:
                idle.append(connection)
        now = time.monotonic()
        for connection in [c for c in busy if now - c.sent_at > timeout_s]:
            fail(connection, "timeout")
    elapsed = time.monotonic() - began
    for connection in [*busy, *idle]:
        close(connection)
    selector.close()
    if total - finished:
        errors["unfinished"] += total - finished
    values, wait_values = sorted(latencies), sorted(waits)
    result: dict[str, object] = {
        "rate_rps": round(rate, 1),
        "seconds": seconds,
        "sent": total,
        "ok": len(values),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "answered_rps": round(len(values) / elapsed, 1),
        "p50_ms": round(1000 * _percentile(values, 0.5), 2) if values else None,
        "p99_ms": round(1000 * _percentile(values, 0.99), 2) if values else None,
        "max_ms": round(1000 * values[-1], 2) if values else None,
        "send_lag_p99_ms": round(1000 * _percentile(wait_values, 0.99), 2) if wait_values else None,
        "answers_by_worker": dict(workers),
    }
    result["passed"] = bool(result["errors"] == 0 and values and result["p99_ms"] < P99_LIMIT_MS)
    return result


class CpuMeter:
    """Cores used by each named process between `start()` and `read()`.

    A server's children (gateway workers) count as the server; this
    process's children are the servers, so `own` names the one read alone.
    """

    def __init__(self, pids: dict[str, int], own: str = "load_generator") -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.own = own
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _cpu(self, name: str) -> float:
        process = self.processes[name]
        total = 0.0
        for p in [process] if name == self.own else [process, *process.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except Exception:
                pass
        return total

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: self._cpu(name) for name in self.processes}

    def read(self) -> dict[str, float]:
        seconds = max(1e-6, time.monotonic() - self._t0)
        return {
            name: round((self._cpu(name) - self._start[name]) / seconds, 2)
            for name in self.processes
        }


Step = tuple[float, float, str]  # (rate, seconds, phase) of one probe or hold


def search_steps(plan: Plan, start_rate: float) -> Generator[Step, dict, float | None]:
    """The rate search, one step at a time: yields each step, is sent its result.

    Step up (x `plan.step_factor`) until a probe fails, halve while even the
    first fails, bisect until first failure / last pass is below
    `plan.bisect_until`, then hold the best rate (10 % lower after each
    failed hold, at most `plan.holds`). `plan.search_budget_s` bounds the
    seconds of this search's own steps, so searches that take turns
    (run_searches) each get the whole budget. Returns the lowest rate that
    failed (None if none did): the search's upper bound.
    """
    spent = 0.0

    def step(rate: float, seconds: float, phase: str) -> Generator[Step, dict, bool]:
        nonlocal spent
        result = yield rate, seconds, phase
        spent += seconds + plan.pause_s
        return bool(result["passed"])

    passed_at, failed_at = 0.0, None
    rate = start_rate
    while failed_at is None and rate <= plan.max_rate and spent <= plan.search_budget_s:
        if (yield from step(rate, plan.probe_s, "step-up")):
            passed_at, rate = rate, rate * plan.step_factor
        else:
            failed_at = rate
    while (
        passed_at == 0.0
        and failed_at is not None
        and failed_at > 2.0
        and spent <= plan.search_budget_s
    ):
        rate = failed_at / 2  # even the first probe failed: halve until one passes
        if (yield from step(rate, plan.probe_s, "step-down")):
            passed_at = rate
        else:
            failed_at = rate
    while (
        failed_at is not None
        and passed_at > 0
        and failed_at / passed_at > plan.bisect_until
        and spent <= plan.search_budget_s
    ):
        rate = (passed_at + failed_at) / 2
        if (yield from step(rate, plan.probe_s, "bisect")):
            passed_at = rate
        else:
            failed_at = rate
    rate = passed_at
    for _ in range(plan.holds if passed_at > 0 else 0):
        if (yield from step(rate, plan.hold_s, "hold")):
            break
        rate *= 0.9
    return failed_at


@dataclasses.dataclass
class Target:
    """A gateway under search: its label in the results and its /v1/classify URL."""

    label: str
    url: str
    meter: CpuMeter | None = None


def run_searches(
    targets: list[Target],
    plan: Plan,
    start_rate: float,
    probe: Callable[[Target, float, float, str], dict[str, object]],
) -> list[dict[str, object]]:
    """One search per target, taking turns step by step; returns each one's summary.

    Searching two gateways one after the other lets a change in the shared
    machine's load between them decide the comparison. Taking turns, each
    step of one is beside a step of the other, and which goes first
    alternates every turn. `probe(target, rate, seconds, phase)` runs a
    step and returns its result (with "passed").
    """
    searches = [search_steps(plan, start_rate) for _ in targets]
    steps: list[list[dict[str, object]]] = [[] for _ in targets]
    began = time.monotonic()
    spent = [0.0] * len(targets)
    due: dict[int, Step] = {i: next(search) for i, search in enumerate(searches)}
    lowest_failed: dict[int, float | None] = {}
    turn = 0
    while due:
        order = sorted(due) if turn % 2 == 0 else sorted(due, reverse=True)
        for i in order:
            rate, seconds, phase = due[i]
            t0 = time.monotonic()
            result = probe(targets[i], rate, seconds, phase)
            spent[i] += time.monotonic() - t0
            steps[i].append(result)
            try:
                due[i] = searches[i].send(result)
            except StopIteration as finished:
                lowest_failed[i] = finished.value
                del due[i]
        turn += 1
    summaries = []
    for i, target in enumerate(targets):
        held = next((st for st in steps[i] if st["phase"] == "hold" and st["passed"]), None)
        failed = lowest_failed[i]
        summaries.append(
            {
                "workers": target.label,
                "max_rate_rps": held["rate_rps"] if held else None,
                "held_s": plan.hold_s if held else 0,
                "p50_ms": held["p50_ms"] if held else None,
                "p99_ms": held["p99_ms"] if held else None,
                "answered_rps": held["answered_rps"] if held else None,
                "cores_used": held["cores_used"] if held else None,
                "answers_by_worker": held["answers_by_worker"] if held else None,
                "lowest_failed_probe_rps": round(failed, 1) if failed else None,
                "search_s": round(spent[i], 1),
                "searched_alongside": [t.label for t in targets if t is not target],
                "wall_s": round(time.monotonic() - began, 1),
                "steps": steps[i],
            }
        )
    return summaries


def open_loop_probe(images: list[bytes], plan: Plan) -> Callable[..., dict[str, object]]:
    """run_searches' `probe` for real gateways: an open-loop step, its CPU and the load average."""

    def probe(target: Target, rate: float, seconds: float, phase: str) -> dict[str, object]:
        assert target.meter is not None
        target.meter.start()
        result = open_loop(target.url, images, rate, seconds, plan.connections)
        result.update(
            phase=phase,
            cores_used=target.meter.read(),
            load_average_1m=round(os.getloadavg()[0], 2),
        )
        print(
            json.dumps(
                {
                    "workers": target.label,
                    **{k: v for k, v in result.items() if k != "answers_by_worker"},
                }
            ),
            flush=True,
        )
        time.sleep(plan.pause_s)
        return result

    return probe


def _flat(first: list[float], last: list[float], slack: float = 0.0) -> tuple[float, bool]:
    ratio = max(last) / max(first) if max(first) else float("inf")
    return round(ratio, 4), max(last) <= max(first) * (1 + FLAT_TOLERANCE) + slack


def soak(
    url: str, images: list[bytes], rate: float, plan: Plan, gateway_pid: int, meter: CpuMeter
) -> dict[str, object]:
    """`plan.soak_s` at `rate`, sampling the gateway's RSS (MB) and open fds (workers included).

    The gateway holds one fd per client connection, and the load generator
    opens more connections whenever all are busy (a latency blip), keeping
    them to the end: fds are judged net of the clients' connections, so a
    leak shows and the generator's pool does not. Both counts are recorded.
    """
    from urllib.parse import urlsplit

    import psutil

    gateway = psutil.Process(gateway_pid)
    http_port = urlsplit(url).port
    samples: list[tuple[float, float, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while True:
            processes = [gateway, *gateway.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in processes) / 2**20
            fds = sum(p.num_fds() for p in processes)
            clients = sum(
                1
                for p in processes
                for c in p.net_connections("tcp")
                if c.laddr and c.laddr.port == http_port and c.raddr
            )
            samples.append((round(time.monotonic() - t0, 2), round(rss, 2), fds, clients))
            if done.wait(plan.sample_every_s):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    meter.start()
    sampler.start()
    result = open_loop(url, images, rate, plan.soak_s, plan.connections)
    done.set()
    sampler.join()
    third = max(1, len(samples) // 3)
    rss = [s[1] for s in samples]
    fds = [float(s[2]) for s in samples]
    own_fds = [float(s[2] - s[3]) for s in samples]
    rss_ratio, rss_flat = _flat(rss[:third], rss[-third:])
    fd_ratio, _ = _flat(fds[:third], fds[-third:], slack=2)
    own_fd_ratio, fd_flat = _flat(own_fds[:third], own_fds[-third:], slack=2)
    return {
        **result,
        "cores_used": meter.read(),
        "rss_mb_first_third_max": max(rss[:third]),
        "rss_mb_last_third_max": max(rss[-third:]),
        "rss_ratio": rss_ratio,
        "fds_first_third_max": int(max(fds[:third])),
        "fds_last_third_max": int(max(fds[-third:])),
        "fd_ratio": fd_ratio,
        "fds_net_of_clients_first_third_max": int(max(own_fds[:third])),
        "fds_net_of_clients_last_third_max": int(max(own_fds[-third:])),
        "fd_net_ratio": own_fd_ratio,
        "flat": rss_flat and fd_flat,
        "samples": [
            {"t_s": t, "rss_mb": r, "fds": f, "client_connections": c} for t, r, f, c in samples
        ],
    }


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported SavedModel folder to serve")
    parser.add_argument(
        "--model-kind",
        choices=("resnet20", "tiny"),
        help="without --model: an untrained ResNet-20 through the trainer's real export (the default), "
        "or the tiny test model (the default with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: about a second per step (not a measurement)",
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="gateway worker counts to search"
    )
    parser.add_argument("--soak-seconds", type=float, help="soak length (default 600; --quick: 2)")
    parser.add_argument(
        "--search-budget", type=float, help="seconds of search per worker count (default 300)"
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        metavar="RPS",
        help="no search: only the soak, at this rate, on 1 worker (results: bench/results/load_soak.*)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (default bench/results/load.json; --quick: a temp file)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also search the gateway of this commit (a temporary git worktree), side by side",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.soak_seconds is not None:
        plan = dataclasses.replace(plan, soak_s=args.soak_seconds)
    if args.search_budget is not None:
        plan = dataclasses.replace(plan, search_budget_s=args.search_budget)
    if args.soak_rate:
        args.workers = [1]
    default_out = RESULTS_JSON.with_name("load_soak.json") if args.soak_rate else RESULTS_JSON
    out = args.out or (
        Path(tempfile.gettempdir()) / "cifarflow-load-quick.json" if args.quick else default_out
    )

    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    model = args.model
    kind = args.model_kind or ("tiny" if args.quick else "resnet20")
    store = published_store(workdir, model, kind)
    images = cifar_jpegs()
    results: dict[str, object] = {
        "machine": machine_info(),
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "model": str(args.model or MODEL_DESCRIPTIONS[kind]),
        "images": f"{len(images)} CIFAR-100 test images (shipped sample) as 64x64 JPEG, "
        f"{min(map(len, images))}-{max(map(len, images))} bytes, POST /v1/classify as image/jpeg",
        "criteria": {"p99_ms_below": P99_LIMIT_MS, "errors": 0, "flat_within": FLAT_TOLERANCE},
        "load_average_before": load_average(),
        "searches": [],
    }
    model_port = free_port()
    model_args = model_server_args(store, model_port)
    baseline_tree = workdir / "baseline"
    compared: list[tuple[str, Path | None]] = [("", None)]  # (label suffix, source tree)
    if args.baseline and not args.soak_rate:
        commit = check_out_baseline(args.baseline, baseline_tree)
        results["baseline"] = {"ref": args.baseline, "commit": commit}
        compared.append((f" (baseline {commit})", baseline_tree))
    stopped: list[subprocess.Popen] = []

    def start_gateway(workers: int, source: Path | None) -> tuple[subprocess.Popen, str]:
        http_port = free_port()
        command = gateway_args(model_port, http_port, -1, "--workers", str(workers))
        process = start(command, "gateway: HTTP", source=source)
        stopped.append(process)
        return process, f"http://127.0.0.1:{http_port}/v1/classify"

    try:
        model_server = start(model_args, "model server:")
        stopped.append(model_server)
        probe = open_loop_probe(images, plan)
        start_rate = plan.start_rate
        for workers in args.workers:
            with ThreadPoolExecutor(len(compared)) as pool:
                starting = [pool.submit(start_gateway, workers, source) for _, source in compared]
                gateways = [future.result() for future in starting]
            targets = []
            for (suffix, _), (gateway, url) in zip(compared, gateways, strict=True):
                open_loop(url, images, 20.0, plan.warmup_s, plan.connections)  # connections, caches
                pids = {"gateway": gateway.pid, "model_server": model_server.pid}
                targets.append(
                    Target(
                        f"{workers}{suffix}", url, CpuMeter({**pids, "load_generator": os.getpid()})
                    )
                )
            gateway, url = gateways[0]
            meter = targets[0].meter
            assert meter is not None
            if args.soak_rate:
                results["soak"] = {
                    "workers": 1,
                    "rate_basis": f"given with --soak-rate ({args.soak_rate:g} req/s)",
                    **soak(url, images, args.soak_rate, plan, gateway.pid, meter),
                }
                print(
                    json.dumps({k: v for k, v in results["soak"].items() if k != "samples"}),
                    flush=True,
                )
                continue
            found = run_searches(targets, plan, start_rate, probe)
            results["searches"].extend(found)
            for other, _ in gateways[1:]:  # the soak is this tree's gateway's alone
                other.send_signal(signal.SIGTERM)
            if workers == 1:
                # Half the held rate; when no rate was held (a busy machine), half the best passing probe.
                basis, basis_name = found[0]["max_rate_rps"], "held"
                if not basis:
                    passing = [s["rate_rps"] for s in found[0]["steps"] if s["passed"]]
                    basis, basis_name = (
                        (max(passing), "best passing probe")
                        if passing
                        else (plan.start_rate, "start rate")
                    )
                soak_rate = basis / 2
                print(f"soak: {plan.soak_s:g} s at {soak_rate:g} req/s", flush=True)
                results["soak"] = {
                    "workers": 1,
                    "rate_basis": f"half the 1-worker {basis_name} rate ({basis} req/s)",
                    **soak(url, images, soak_rate, plan, gateway.pid, meter),
                }
                print(
                    json.dumps({k: v for k, v in results["soak"].items() if k != "samples"}),
                    flush=True,
                )
                # The next worker count starts its search near where this one ended.
                start_rate = max(plan.start_rate, basis * 0.75)
            gateway.send_signal(signal.SIGTERM)  # drains while the next one starts
    finally:
        for process in stopped:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in stopped:
            _stop(process)
        if len(compared) > 1:
            remove_baseline(baseline_tree)
    results["load_average_after"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    print(md.read_text())
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    plan = results["plan"]
    lines = [
        "# Gateway load and soak"
        + (" (quick smoke run: not a measurement)" if results["quick"] else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['date']} "
        f"(commit {m['git_commit']}). Model: {results['model']}. {results['images']}. Model server (batching on), "
        "gateway (access log off: --log-level WARNING) and this open-loop load generator share the machine's cores, "
        f"on 127.0.0.1. Load average before/after: {' '.join(results['load_average_before'])} / "
        f"{' '.join(results['load_average_after'])} (other engineers' jobs share this machine).",
    ]
    if results["searches"]:
        lines += _search_lines(results, plan)
    soak = results.get("soak")
    if soak:
        lines += [
            "",
            f"Soak: {soak['seconds']:g} s at {soak['rate_rps']} req/s ({soak['rate_basis']}), 1 worker: "
            f"{soak['ok']} answered, {soak['errors']} errors, p50 {soak['p50_ms']} ms, p99 {soak['p99_ms']} ms. "
            f"Gateway RSS max {soak['rss_mb_first_third_max']} MB in the first third, {soak['rss_mb_last_third_max']} MB "
            f"in the last (ratio {soak['rss_ratio']}); open fds max {soak['fds_first_third_max']} / "
            f"{soak['fds_last_third_max']} (ratio {soak['fd_ratio']})"
            + (
                f", net of the load generator's connections {soak['fds_net_of_clients_first_third_max']} / "
                f"{soak['fds_net_of_clients_last_third_max']} (ratio {soak['fd_net_ratio']}, the one judged)"
                if "fd_net_ratio" in soak
                else " (judged raw)"
            )
            + f"; sampled every {plan['sample_every_s']:g} s: "
            + ("flat." if soak["flat"] else "NOT flat."),
        ]
    else:
        lines += ["", "Soak: not run (1 worker was not measured)."]
    return "\n".join(lines) + "\n"


def _search_lines(results: dict, plan: dict) -> list[str]:
    lines = [
        "",
        f"Highest rate held for {plan['hold_s']:g} s with p99 < {results['criteria']['p99_ms_below']:g} ms and no "
        f"errors (latency from each request's due time; {plan['connections']} keep-alive connections):",
        "",
        "| gateway workers | max rate (req/s) | p50 (ms) | p99 (ms) | lowest failed probe (req/s) | cores used: gateway / model server / load gen | search (s) |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in results["searches"]:
        cores = s["cores_used"] or {}
        lines.append(
            f"| {s['workers']} | {s['max_rate_rps'] or 'none held'} | {s['p50_ms'] or '-'} | {s['p99_ms'] or '-'} | "
            f"{s['lowest_failed_probe_rps'] or '-'} | {cores.get('gateway', '-')} / {cores.get('model_server', '-')} / "
            f"{cores.get('load_generator', '-')} | {s['search_s']} |"
        )
    if any(s.get("searched_alongside") for s in results["searches"]):
        lines.append(
            "\nGateways searched side by side took turns step by step, with which went first "
            "alternating, so changes in the machine's load fell on both."
        )
    for s in results["searches"]:
        split = s.get("answers_by_worker") or {}
        if len(split) > 1:
            lines.append(
                f"\nAt {s['workers']} workers the held rate's answers came from the workers "
                f"{', '.join(f'{pid}: {n}' for pid, n in sorted(split.items()))} (pid: answers)."
            )
    lines += [
        "",
        "Every step (probes are short; only a hold counts):",
        "",
        "| workers | phase | rate | s | ok | errors | p50 | p99 | send lag p99 | load 1m |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s in results["searches"]:
        for st in s["steps"]:
            errors = ", ".join(f"{k} {v}" for k, v in st["errors_by_kind"].items()) or "0"
            lines.append(
                f"| {s['workers']} | {st['phase']} | {st['rate_rps']} | {st['seconds']:g} | {st['ok']} | {errors} | "
                f"{st['p50_ms']} | {st['p99_ms']} | {st['send_lag_p99_ms']} | {st['load_average_1m']} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())

"""Slow clients against a real `cifarflow serve gateway` process: do they cost it anything?

Opens N connections that each send a request line and then one byte of a
never-ending header every INTERVAL seconds (slowloris), for up to DURATION
seconds, and records what the gateway pays while they are open (threads,
resident memory), how long the server keeps each one, and whether an honest
request is still answered meanwhile. The gateway is started with
`--header-timeout` (and `--idle-timeout`); the backend need not exist
(`/healthz` does not use it).

    python bench/slow_clients.py [--connections 3000] [--interval 4] [--duration 40]
        [--header-timeout 10] [--out bench/results/slow_clients.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclasses.dataclass
class SlowClientRun:
    connections: int
    opened: int
    interval_s: float
    duration_s: float
    dropped: int  # closed by the server before the run ended
    dropped_after_s_max: float | None
    dropped_after_s_median: float | None
    threads_before: int
    threads_peak: int
    rss_mb_before: float
    rss_mb_peak: float
    honest_request_ms_max: float
    honest_request_errors: int


def drip(
    port: int,
    pid: int,
    connections: int,
    interval_s: float,
    duration_s: float,
    host: str = "127.0.0.1",
) -> SlowClientRun:
    """Runs the slow clients against `host:port` (the gateway is process `pid`) and measures."""
    server = psutil.Process(pid)
    threads_before, rss_before = server.num_threads(), server.memory_info().rss
    threads_peak, rss_peak = threads_before, rss_before
    selector = selectors.DefaultSelector()
    opened_at: dict[socket.socket, float] = {}
    dropped_after: list[float] = []
    for _ in range(connections):
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            break
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        opened_at[sock] = time.monotonic()
    opened = len(opened_at)
    honest_ms, honest_errors = 0.0, 0
    started = time.monotonic()
    next_drip = started
    while opened_at and time.monotonic() - started < duration_s:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server closed it
                dropped_after.append(time.monotonic() - opened_at.pop(sock))
                selector.unregister(sock)
                sock.close()
        if time.monotonic() >= next_drip:
            next_drip += interval_s
            for sock in list(opened_at):
                try:
                    sock.send(b"a")
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        dropped_after.append(time.monotonic() - opened_at.pop(sock))
                        selector.unregister(sock)
                        sock.close()
            threads_peak = max(threads_peak, server.num_threads())
            rss_peak = max(rss_peak, server.memory_info().rss)
            asked = time.perf_counter()
            try:
                ok = requests.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            honest_ms = max(honest_ms, (time.perf_counter() - asked) * 1000)
            honest_errors += not ok
    for sock in opened_at:
        selector.unregister(sock)
        sock.close()
    dropped_after.sort()
    return SlowClientRun(
        connections,
        opened,
        interval_s,
        duration_s,
        len(dropped_after),
        round(dropped_after[-1], 2) if dropped_after else None,
        round(dropped_after[len(dropped_after) // 2], 2) if dropped_after else None,
        threads_before,
        threads_peak,
        round(rss_before / 2**20, 1),
        round(rss_peak / 2**20, 1),
        round(honest_ms, 1),
        honest_errors,
    )


def main(argv: list[str] | None = None) -> int:
    from bench.machine import machine_info
    from tests.support.processes import GatewayProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/slow_clients.json")
    args = parser.parse_args(argv)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        backend = f"127.0.0.1:{free.getsockname()[1]}"  # nothing listens: /healthz needs no backend
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(
            backend,
            Path(tmp) / "gateway.log",
            "--header-timeout",
            str(args.header_timeout),
            grpc_port=-1,
        )
        try:
            run = drip(
                int(gateway.url.rsplit(":", 1)[1]),
                gateway.process.pid,
                args.connections,
                args.interval,
                args.duration,
            )
        finally:
            gateway.stop()
    result = {
        "machine": {**machine_info(), "note": "2 cores shared with three other sessions"},
        "header_timeout_s": args.header_timeout,
        **dataclasses.asdict(run),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Slow clients cost the gateway no thread and are dropped on time (a bounded slowloris run)."""

from __future__ import annotations

import socket
import time

import pytest

from bench.slow_clients import drip
from tests.serving.conftest import free_port
from tests.support.processes import GatewayProcess

HEADER_TIMEOUT_S = 1.5
IDLE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    process = GatewayProcess(
        f"127.0.0.1:{free_port()}",  # no backend: /healthz does not need one
        tmp_path_factory.mktemp("slow") / "gateway.log",
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--idle-timeout",
        str(IDLE_TIMEOUT_S),
        grpc_port=-1,
    )
    yield process
    process.stop()


def test_headers_dripped_a_byte_at_a_time_are_dropped_and_hold_no_thread(gateway):
    run = drip(gateway.port, gateway.process.pid, connections=300, interval_s=0.5, duration_s=8)
    assert run.opened == 300
    assert run.dropped == run.opened, run  # every one closed by the server
    assert run.dropped_after_s_max < HEADER_TIMEOUT_S + 1.5, run
    assert run.threads_peak - run.threads_before < 10, run  # not one thread per connection
    assert run.honest_request_errors == 0, run  # honest clients are served meanwhile


def test_a_silent_connection_and_an_idle_keep_alive_one_are_closed(gateway):
    def closed_after(sock: socket.socket) -> float:
        started = time.monotonic()
        sock.settimeout(10)
        while sock.recv(65536):
            pass
        return time.monotonic() - started

    with socket.create_connection(("127.0.0.1", gateway.port)) as silent:
        assert closed_after(silent) < HEADER_TIMEOUT_S + 1.0
    with socket.create_connection(("127.0.0.1", gateway.port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_after(idle) < max(HEADER_TIMEOUT_S, IDLE_TIMEOUT_S) + 1.0

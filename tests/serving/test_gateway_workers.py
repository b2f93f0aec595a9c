"""`cifarflow serve gateway --workers N`: several real gateway processes behind one port pair."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from concurrent import futures

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_service_pb2_grpc

from cifarflow.serving.asgi import HttpConfig, uvicorn_config
from cifarflow.serving.gateway.multiworker import GatewaySupervisor
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.ports import bind
from tests.serving.conftest import free_port, model_server_for
from tests.serving.failing_app import FailingApp
from tests.serving.images import encode
from tests.serving.test_cli import frozen_counts, start


@pytest.fixture(scope="module")
def model_server(exported_model, tmp_path_factory):
    with model_server_for(
        exported_model, tmp_path_factory.mktemp("workers-store"), "cifarflow"
    ) as server:
        yield server


def start_workers(
    backend_port: int, workers: int = 2, log_level: str = "WARNING", seen: list[str] | None = None
):
    """(process, HTTP port, gRPC port) of a supervised gateway; `seen` gets its start-up lines."""
    http_port, grpc_port = free_port(), free_port()
    process = start(
        [
            "serve",
            "--log-level",
            log_level,
            "gateway",
            "--backend",
            f"127.0.0.1:{backend_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--workers",
            str(workers),
        ],
        f"{workers} workers (pids",
        seen=seen,
    )
    return process, http_port, grpc_port


def worker_pids(process) -> set[int]:
    """The worker processes (uvicorn spawns them; multiprocessing's resource tracker is no worker)."""
    pids = set()
    for child in psutil.Process(process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def classify(port: int, image: bytes) -> tuple[int, str]:
    """One request on a new connection (each connection is accepted by one worker): (status, worker pid)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/v1/classify", body=image, headers={"Content-Type": "image/jpeg"}
        )
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Gateway-Worker", "")
    finally:
        connection.close()


def workers_answering(
    port: int, image: bytes, want: set[str], attempts: int = 200, answers: list | None = None
) -> set[str]:
    seen: set[str] = set()
    for _ in range(attempts):
        status, pid = classify(port, image)
        assert status == 200
        seen.add(pid)
        if answers is not None:
            answers.append(pid)
        if want <= seen:
            break
    return seen


def classified_ok(metrics_text: str) -> float:
    """requests_total{protocol=http, endpoint=/v1/classify, code=200} in a /metrics answer."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "cifarflow_gateway_requests_total"
        and sample.labels == {"protocol": "http", "endpoint": "/v1/classify", "code": "200"}
    )


@pytest.fixture(scope="module")
def workers_started(model_server):
    """(process, HTTP port, gRPC port, the lines printed while starting) of 2 workers."""
    lines: list[str] = []
    process, port, grpc_port = start_workers(model_server.grpc_port, log_level="INFO", seen=lines)
    yield process, port, grpc_port, lines
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def two_workers(workers_started):
    return workers_started[:3]


def test_every_worker_freezes_its_start_up_objects(workers_started):
    *_, lines = workers_started
    counts = frozen_counts(lines)
    assert len(counts) == 2 and min(counts) > 10_000, "".join(lines)


def test_two_workers_share_the_ports_and_both_serve(two_workers, cifar):
    process, port, grpc_port = two_workers
    pids = worker_pids(process)
    assert len(pids) == 2
    image = encode(cifar[0][0], "JPEG", size=64)
    answers: list[str] = []
    assert workers_answering(port, image, {str(p) for p in pids}, answers=answers) == {
        str(p) for p in pids
    }
    # /metrics answers from whichever worker took the connection, and says so, with every
    # worker's counts summed (Prometheus multiprocess mode), not only its own.
    for _ in range(4):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert classified_ok(response.read().decode()) == len(answers)
        assert int(response.getheader("X-Gateway-Worker")) in pids
        connection.close()
    # The gateway's gRPC service on the shared gRPC port.
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(image=image, top_k=3), timeout=10
        )
    assert len(reply.predictions) == 3


def test_a_killed_worker_is_replaced(two_workers, cifar):
    process, port, _ = two_workers
    image = encode(cifar[0][1], "JPEG", size=64)
    before = worker_pids(process)
    victim = min(before)
    psutil.Process(victim).kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The other worker keeps answering on the shared socket meanwhile.
        assert classify(port, image)[0] == 200
        now = worker_pids(process)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    now = worker_pids(process)
    assert victim not in now and len(now) == 2
    replacement = (now - before).pop()
    # A fresh interpreter takes a few seconds to import and start serving.
    assert str(replacement) in workers_answering(port, image, {str(replacement)}, attempts=2000)


class SlowBackend(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Forwards Predict to the real model server after a pause: requests still in flight when SIGTERM comes."""

    def __init__(self, target: str, pause_s: float) -> None:
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
        self.pause_s = pause_s
        self.arrived = threading.Semaphore(0)

    def Predict(self, request, context):
        for _ in request.inputs[
            "image_bytes"
        ].string_val:  # the gateway may send several requests' images in one call
            self.arrived.release()
        time.sleep(self.pause_s)
        return self.stub.Predict(request, timeout=10)


def test_sigterm_drains_every_worker(model_server, cifar):
    backend = SlowBackend(f"127.0.0.1:{model_server.grpc_port}", pause_s=1.5)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(backend, server)
    backend_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    process = None
    try:
        process, port, _ = start_workers(backend_port)
        pids = worker_pids(process)
        image = encode(cifar[0][2], "JPEG", size=64)
        with futures.ThreadPoolExecutor(max_workers=6) as pool:
            answers = [pool.submit(classify, port, image) for _ in range(6)]
            for _ in range(6):  # all six in flight in the workers
                assert backend.arrived.acquire(timeout=30), [
                    a.result() for a in answers if a.done()
                ]
            process.send_signal(signal.SIGTERM)
            results = [answer.result(timeout=30) for answer in answers]
        assert all(status == 200 for status, _ in results), results
        assert {int(pid) for _, pid in results} <= pids
        assert process.wait(30) == 0
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in pids
        )
        with pytest.raises(ConnectionRefusedError):
            classify(port, image)
    finally:
        if (
            process is not None and process.poll() is None
        ):  # a failed assertion must not leave the gateway running
            process.kill()
            process.wait()
        server.stop(0)


def test_workers_that_cannot_start_fail_the_start_in_one_message(tmp_path):
    handlers = {sig: signal.getsignal(sig) for sig in signal.valid_signals()}
    sock = bind("127.0.0.1", 0)
    try:
        config = uvicorn_config(FailingApp(), HttpConfig(), workers=2, lifespan="on")
        supervisor = GatewaySupervisor(config, [sock], str(tmp_path))
        started = []
        supervisor.on_started = started.append
        supervisor.run()
    finally:
        sock.close()
        for sig, handler in handlers.items():  # uvicorn's supervisor took the signals
            if handler is not None:
                try:
                    signal.signal(sig, handler)
                except (OSError, ValueError):
                    pass
    assert supervisor.failure == "gateway worker 1 of 2 did not start: exited with code 3"
    assert not started
    assert not any(process.process.is_alive() for process in supervisor.processes)


def test_a_port_in_use_is_one_line_and_a_non_zero_exit(model_server, tmp_path):
    import socket
    import subprocess

    from tests.serving.test_cli import CLI

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [
                *CLI,
                "serve",
                "gateway",
                "--backend",
                f"127.0.0.1:{model_server.grpc_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(taken.getsockname()[1]),
                "--workers",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "gateway workers cannot bind" in result.stderr, (
        result.stderr
    )

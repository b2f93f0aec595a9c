"""The serving verbs as a user runs them: `serve model`, `serve gateway`, `predict` in real processes."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from cifarflow.serving.store import publish_model
from tests.serving.conftest import free_port, model_server_for
from tests.serving.images import encode

CLI = [sys.executable, "-m", "cifarflow.cli.main"]


def start(
    args: list[str],
    ready_text: str,
    env: dict | None = None,
    timeout: float = 90,
    seen: list[str] | None = None,
) -> subprocess.Popen:
    """Starts a CLI process and waits for the line saying it is serving.

    `seen`, when given, receives every line the process printed up to that one.
    """
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    # A reader thread, because select() on a buffered pipe misses lines already buffered.
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    seen = [] if seen is None else seen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if ready_text in line:
            return process
    process.kill()
    raise AssertionError(f"{args[:2]} did not start: {''.join(seen)[-2000:]}")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(30)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def model_server(exported_model, tmp_path_factory):
    with model_server_for(
        exported_model, tmp_path_factory.mktemp("cli-store"), "cifarflow"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def gateway_started(model_server):
    """(process, HTTP port, gRPC port, the lines it printed while starting)."""
    http_port, grpc_port = free_port(), free_port()
    lines: list[str] = []
    process = start(
        [
            "serve",
            "gateway",
            "--backend",
            f"127.0.0.1:{model_server.grpc_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        "gateway: HTTP",
        seen=lines,
    )
    yield process, http_port, grpc_port, lines
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def gateway_process(gateway_started):
    """(process, HTTP port, gRPC port) of a `cifarflow serve gateway` process."""
    return gateway_started[:3]


@pytest.fixture
def images(tmp_path, cifar):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(encode(cifar[0][i], "JPEG", 96))
    (folder / "notes.txt").write_text("not an image, skipped by suffix")
    return folder


def test_gateway_process_is_light_and_serves(gateway_process, cifar):
    process, http_port, _ = gateway_process
    response = requests.post(
        f"http://127.0.0.1:{http_port}/v1/classify",
        files={"file": ("x.png", encode(cifar[0][0], "PNG"))},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    # TF Serving's messages without TensorFlow itself: a gateway is tens of MB, not 600+.
    assert rss_mb(process.pid) < 250


def frozen_counts(lines: list[str]) -> list[int]:
    """The object counts in the gateway's "left out of full garbage collections" lines."""
    found = (re.search(r"gateway: (\d+) objects made at start left out", line) for line in lines)
    return [int(match.group(1)) for match in found if match]


def test_gateway_process_freezes_its_start_up_objects(gateway_started):
    # FastAPI, pydantic, grpc and the protos are tens of thousands of objects that full
    # collections would otherwise walk under load (gc_freeze.py); one line says how many.
    *_, lines = gateway_started
    counts = frozen_counts(lines)
    assert len(counts) == 1 and counts[0] > 10_000, "".join(lines)


def test_predict_through_gateway_and_straight_to_the_model_server(
    gateway_process, model_server, images
):
    _, _, grpc_port = gateway_process
    via_gateway = subprocess.run(
        [*CLI, "predict", str(images), "--server", f"127.0.0.1:{grpc_port}", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert via_gateway.returncode == 0, via_gateway.stderr
    lines = via_gateway.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "RANK", "CLASS", "PROBABILITY"]
    assert sum(1 for line in lines if "img" in line) == 3 and len(lines) == 1 + 3 * 3 + 1
    assert lines[-1] == "model: cifarflow v1"
    direct = subprocess.run(
        [
            *CLI,
            "predict",
            *sorted(str(p) for p in images.glob("*.jpg")),
            "--server",
            f"127.0.0.1:{model_server.grpc_port}",
            "--tf-serving",
            "--top-k",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert direct.returncode == 0, direct.stderr
    by_gateway = [line.split()[-1] for line in lines[1:-1]]
    assert [
        f"{p[1]:.4f}" for r in json.loads(direct.stdout) for p in r["predictions"]
    ] == by_gateway


def test_predict_fetches_urls(gateway_process, cifar):
    from tests.serving.gateway_support import ImageSite

    _, _, grpc_port = gateway_process
    site = ImageSite()
    site.routes["/a.png"] = (200, {"Content-Type": "image/png"}, encode(cifar[0][5], "PNG", 64))
    try:
        done = subprocess.run(
            [
                *CLI,
                "predict",
                site.url("/a.png"),
                site.url("/gone.png"),
                "--server",
                f"127.0.0.1:{grpc_port}",
                "--top-k",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        site.close()
    assert done.returncode == 2  # one URL answered 404
    assert site.url("/a.png") in done.stdout and "error: HTTP 404" in done.stdout


def test_predict_errors_are_one_clear_line(gateway_process, model_server, images, tmp_path):
    _, _, grpc_port = gateway_process

    def run(*args):
        return subprocess.run([*CLI, "predict", *args], capture_output=True, text=True, timeout=60)

    unreachable = run(str(images), "--server", f"127.0.0.1:{free_port()}", "--timeout", "3")
    assert unreachable.returncode == 5 and "cannot reach" in unreachable.stderr
    missing_model = run(
        str(images),
        "--server",
        f"127.0.0.1:{model_server.grpc_port}",
        "--tf-serving",
        "--model-name",
        "nope",
    )
    assert missing_model.returncode == 5 and "model 'nope' not found" in missing_model.stderr
    assert run(str(tmp_path / "nope.jpg"), "--server", f"127.0.0.1:{grpc_port}").returncode == 2
    (images / "broken.png").write_bytes(b"\x89PNG broken")
    partial = run(str(images), "--server", f"127.0.0.1:{grpc_port}")
    assert (
        partial.returncode == 2
        and "error: not an image" in partial.stdout
        and "img2.jpg" in partial.stdout
    )


def test_gateway_stops_cleanly_on_sigterm(model_server):
    process = start(
        [
            "serve",
            "gateway",
            "--backend",
            f"127.0.0.1:{model_server.grpc_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--grpc-port",
            "0",
        ],
        "gateway: HTTP",
    )
    assert stop(process) == 0


def test_serve_model_process_with_stock_status_call(exported_model, tmp_path):
    store = tmp_path / "store"
    publish_model(exported_model, store, "cifar", {})
    grpc_port, rest_port = free_port(), free_port()
    process = start(
        [
            "serve",
            "model",
            "--store",
            str(store),
            "--model-name",
            "cifar",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--rest-port",
            str(rest_port),
        ],
        "model server:",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "cifar"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=10
            )
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]
        assert (
            requests.get(f"http://127.0.0.1:{rest_port}/v1/models/cifar", timeout=5).status_code
            == 200
        )
    finally:
        assert stop(process) == 0


def test_serve_model_on_a_port_in_use_is_one_line_and_exit_code_5(exported_model, tmp_path):
    store = tmp_path / "store"
    publish_model(exported_model, store, "cifar", {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (["--grpc-port", str(port)], ["--grpc-port", "0", "--rest-port", str(port)]):
            done = subprocess.run(
                [*CLI, "serve", "model", "--store", str(store), "--model-name", "cifar"]
                + ["--host", "127.0.0.1", "--poll-interval", "60", *flags],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 5, done.stderr[-2000:]
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith("cifarflow serve: error: cannot bind"), last
            assert f"127.0.0.1:{port}" in last and "internal error" not in done.stderr


def test_serve_gateway_on_a_port_in_use_is_one_line_and_exit_code_5():
    # The one-process gateway (the default) says what the model server and the workers say.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, protocol in (
            (["--port", str(port), "--grpc-port", "0"], "HTTP"),
            (["--port", "0", "--grpc-port", str(port)], "gRPC"),
        ):
            done = subprocess.run(
                [*CLI, "serve", "gateway", "--backend", "127.0.0.1:1", "--host", "127.0.0.1"]
                + flags,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 5, done.stderr[-2000:]
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith(f"cifarflow serve: error: cannot bind {protocol} to"), last
            assert f"127.0.0.1:{port}" in last and "internal error" not in done.stderr

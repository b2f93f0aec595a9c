"""URL fetches hold no thread: many slow URLs at once, through the real gateway, queue nothing.

The fetcher used to run on threads: gRPC's through the event loop's default
executor (min(32, cores + 4) threads: 6 on 2 cores), REST's through
Starlette's threadpool (40). Here more slow fetches than either pool has
threads are all at the image server at the same time, and a plain
/v1/classify answers meanwhile.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import requests

from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.server import Gateway
from tests.serving.conftest import model_server_for
from tests.serving.images import encode

REST_FETCHES = 24
GRPC_FETCHES = 24  # 48 in all: more than the 40 threads of the larger pool
HOLD_S = 1.0


class SlowImageSite:
    """127.0.0.1 HTTP server whose /slow.png answers after `hold_s`, or once `release` is set."""

    def __init__(self, png: bytes) -> None:
        self.png = png
        self.hold_s: float | None = None  # None: until released
        self.release = threading.Event()
        self.in_flight = self.peak = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with site._lock:
                    site.in_flight += 1
                    site.peak = max(site.peak, site.in_flight)
                try:
                    if site.hold_s is None:
                        site.release.wait(30)
                    else:
                        time.sleep(site.hold_s)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(site.png)))
                    self.end_headers()
                    self.wfile.write(site.png)
                finally:
                    with site._lock:
                        site.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # every fetch connects at once

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/slow.png"

    def reset(self, hold_s: float | None) -> None:
        self.hold_s, self.peak = hold_s, 0
        self.release.clear()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory, cifar):
    site = SlowImageSite(encode(cifar[0][0], "PNG"))
    with model_server_for(exported_model, tmp_path_factory.mktemp("fetch-store"), "cifar") as ms:
        gateway = Gateway(
            GatewayConfig(
                backend=f"127.0.0.1:{ms.grpc_port}",
                host="127.0.0.1",
                port=0,
                grpc_port=0,
                model_name="cifar",
                allowed_url_hosts=("127.0.0.1",),
                allow_private_urls=True,
                url_timeout_s=30.0,
            )
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
        try:
            yield site, gateway, classifier_pb2_grpc.ClassifierStub(channel)
        finally:
            channel.close()
            gateway.stop(1)
            site.close()


def _fetch_all(site: SlowImageSite, gateway: Gateway, stub, rest: int, grpc_calls: int):
    """Starts `rest` POST /predict and `grpc_calls` Classify(url) at once; a function waiting for all."""
    base = f"http://127.0.0.1:{gateway.port}"
    pool = ThreadPoolExecutor(max(rest, 1))
    posts = [
        pool.submit(requests.post, f"{base}/predict", json={"url": site.url}, timeout=30)
        for _ in range(rest)
    ]
    calls = [
        stub.Classify.future(classifier_pb2.ClassifyRequest(url=site.url, top_k=3), timeout=30)
        for _ in range(grpc_calls)
    ]

    def results() -> tuple[list[requests.Response], list[classifier_pb2.ClassifyResponse]]:
        try:
            return [p.result(40) for p in posts], [c.result() for c in calls]
        finally:
            pool.shutdown()

    return results


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.timeout(120)
def test_more_slow_fetches_than_any_thread_pool_are_all_in_flight_and_classify_still_answers(
    stack, cifar
):
    site, gateway, stub = stack
    site.reset(hold_s=None)
    results = _fetch_all(site, gateway, stub, REST_FETCHES, GRPC_FETCHES)
    everyone = REST_FETCHES + GRPC_FETCHES
    try:
        # A pool of N threads would let at most N fetches reach the server at once.
        assert _wait_until(lambda: site.in_flight == everyone, 20), (
            f"only {site.in_flight} of {everyone} fetches reached the image server at once"
        )
        # With every fetch still held, the gateway answers at once.
        started = time.monotonic()
        answer = requests.post(
            f"http://127.0.0.1:{gateway.port}/v1/classify",
            files={"file": ("image", encode(cifar[0][1], "PNG"))},
            timeout=10,
        )
        seconds = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["predictions"], answer.text
        assert site.in_flight == everyone, "a held fetch finished before the release"
    finally:
        site.release.set()
    posts, calls = results()
    assert [p.status_code for p in posts] == [200] * REST_FETCHES
    assert all(len(p.json()) == 20 for p in posts)
    assert all(len(c.predictions) == 3 for c in calls)
    assert seconds < 5, f"/v1/classify took {seconds:.1f}s beside {everyone} held fetches"


@pytest.mark.timeout(120)
def test_twenty_fetches_held_a_second_each_take_about_a_second_together(stack):
    """The gRPC path went through the 6-thread default executor: 20 such fetches took ceil(20/6) s."""
    site, gateway, stub = stack
    site.reset(hold_s=HOLD_S)
    started = time.monotonic()
    posts, calls = _fetch_all(site, gateway, stub, 0, 20)()
    seconds = time.monotonic() - started
    assert not posts and all(len(c.predictions) == 3 for c in calls)
    assert site.peak == 20
    assert seconds < HOLD_S + 1.5, f"20 fetches held {HOLD_S:g}s each took {seconds:.2f}s"

"""The gateway's backend client: concurrent requests share model-server calls, each keeps its own answer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cifarflow.serving.errors import DeadlineExceeded, InvalidInput
from cifarflow.serving.gateway.backend import Backend
from tests.serving.conftest import model_server_for
from tests.serving.images import encode


@pytest.fixture(scope="module")
def model_server(exported_model, tmp_path_factory):
    with model_server_for(
        exported_model, tmp_path_factory.mktemp("sharing-store"), "cifar"
    ) as server:
        yield server


class HeldFirstCall:
    """Wraps the Predict stub: records images per call; the first blocking call waits for `release`."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.images_per_call: list[int] = []
        self.reported: list[
            int
        ] = []  # what the backend's on_call hook (the batch_images metric) was told
        self.release = threading.Event()
        self.first_started = threading.Event()

    def __call__(self, request, **kwargs):
        self.images_per_call.append(len(request.inputs["image_bytes"].string_val))
        if not self.first_started.is_set():
            self.first_started.set()
            assert self.release.wait(10)
        return self.stub(request, **kwargs)

    def future(self, request, **kwargs):
        self.images_per_call.append(len(request.inputs["image_bytes"].string_val))
        return self.stub.future(request, **kwargs)


def backend_with_held_first_call(model_server) -> tuple[Backend, HeldFirstCall]:
    reported: list[int] = []
    backend = Backend(
        f"127.0.0.1:{model_server.grpc_port}",
        "cifar",
        timeout_s=10,
        max_in_flight=1,
        on_call=reported.append,
    )
    held = HeldFirstCall(backend._predict)
    held.reported = reported
    backend._predict = held
    return backend, held


def run_concurrently(
    backend: Backend, held: HeldFirstCall, requests: list[tuple[list[bytes], float | None]]
) -> list:
    """Request 0 goes out alone and is held; the others queue behind it, then the hold is released."""
    results: list = [None] * len(requests)

    def call(i: int) -> None:
        images, remaining = requests[i]
        try:
            results[i] = backend.classify(images, f"req-{i}", remaining)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    assert held.first_started.wait(10)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(backend._queued) < len(requests) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    held.release.set()
    for t in threads:
        t.join(20)
    return results


def test_queued_requests_share_one_call_and_get_their_own_rows(model_server, cifar):
    images = [encode(cifar[0][i], "PNG") for i in range(8)]
    plain = Backend(f"127.0.0.1:{model_server.grpc_port}", "cifar", timeout_s=10)
    try:
        alone = [plain.classify([image]).probabilities[0] for image in images]
    finally:
        plain.close()
    backend, held = backend_with_held_first_call(model_server)
    try:
        results = run_concurrently(
            backend, held, [([image], None) for image in images[:6]] + [(images[6:], None)]
        )
    finally:
        backend.close()
    assert held.images_per_call == [
        1,
        7,
    ]  # the held call, then everything that queued behind it in one
    assert held.reported == held.images_per_call
    for i in range(6):
        assert results[i].probabilities.shape == (1, 20)
        np.testing.assert_allclose(results[i].probabilities[0], alone[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[6].probabilities, np.stack(alone[6:]), rtol=1e-5, atol=1e-6)
    assert {r.model for r in results} == {"cifar"}


def test_one_bad_image_fails_only_its_own_request(model_server, cifar):
    good = [encode(cifar[0][i], "PNG") for i in range(4)]
    backend, held = backend_with_held_first_call(model_server)
    try:
        results = run_concurrently(
            backend,
            held,
            [
                ([good[0]], None),
                ([good[1]], None),
                ([b"not an image"], None),
                ([good[2]], None),
                ([good[3]], None),
            ],
        )
    finally:
        backend.close()
    assert isinstance(results[2], InvalidInput)
    assert all(results[i].probabilities.shape == (1, 20) for i in (0, 1, 3, 4))
    assert held.images_per_call[:2] == [1, 4] and held.images_per_call[2:] == [
        1,
        1,
        1,
        1,
    ]  # shared call failed: one by one
    assert held.reported == held.images_per_call


def test_a_queued_request_keeps_its_own_deadline(model_server, cifar):
    image = encode(cifar[0][0], "PNG")
    backend, held = backend_with_held_first_call(model_server)
    timer = threading.Timer(
        1.0, held.release.set
    )  # hold the first call well past the short deadline
    try:
        results: dict = {}
        first = threading.Thread(
            target=lambda: results.update(first=backend.classify([image], "", None))
        )
        first.start()
        assert held.first_started.wait(10)
        timer.start()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            backend.classify([image], "short", caller_remaining=0.1)
        assert time.monotonic() - started < 0.8
        patient = backend.classify([image], "patient", caller_remaining=10)
        first.join(10)
        settle = (
            time.monotonic() + 2
        )  # the call's completion callback frees the slot just after answering
        while backend._in_flight and time.monotonic() < settle:
            time.sleep(0.01)
    finally:
        timer.cancel()
        backend.close()
    assert patient.probabilities.shape == (1, 20) and results["first"].probabilities.shape == (
        1,
        20,
    )
    assert not backend._queued and backend._in_flight == 0


def test_sharing_off_makes_one_call_per_request(model_server, cifar):
    backend = Backend(f"127.0.0.1:{model_server.grpc_port}", "cifar", timeout_s=10, max_in_flight=0)
    try:
        result = backend.classify([encode(cifar[0][0], "PNG")])
    finally:
        backend.close()
    assert result.probabilities.shape == (1, 20)

"""The gateway's backend client: concurrent requests share model-server calls, each keeps its own answer.

The client is asynchronous (grpc.aio): each test runs its requests as tasks on one event loop,
as the gateway's REST and gRPC handlers do.
"""

from __future__ import annotations

import asyncio
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
    """Wraps the Predict stub: records images per call; the first call waits for `release`."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.images_per_call: list[int] = []
        # What the backend's on_call hook (the batch_images metric) was told.
        self.reported: list[int] = []
        self.release = asyncio.Event()
        self.first_started = asyncio.Event()

    async def __call__(self, request, **kwargs):
        self.images_per_call.append(len(request.inputs["image_bytes"].string_val))
        if not self.first_started.is_set():
            self.first_started.set()
            await asyncio.wait_for(self.release.wait(), 10)
        return await self.stub(request, **kwargs)


def backend_with_held_first_call(model_server) -> tuple[Backend, HeldFirstCall]:
    """Call on the event loop that will run the requests (the channel belongs to it)."""
    reported: list[int] = []
    backend = Backend(
        f"127.0.0.1:{model_server.grpc_port}",
        "cifar",
        timeout_s=10,
        max_in_flight=1,
        on_call=reported.append,
    )
    backend._open()
    held = HeldFirstCall(backend._predict)
    held.reported = reported
    backend._predict = held
    return backend, held


async def run_concurrently(
    backend: Backend, held: HeldFirstCall, requests: list[tuple[list[bytes], float | None]]
) -> list:
    """Request 0 goes out alone and is held; the others queue behind it, then the hold is released."""

    async def call(i: int):
        images, remaining = requests[i]
        try:
            return await backend.classify(images, f"req-{i}", remaining)
        except Exception as exc:
            return exc

    first = asyncio.create_task(call(0))
    await asyncio.wait_for(held.first_started.wait(), 10)
    others = [asyncio.create_task(call(i)) for i in range(1, len(requests))]
    deadline = time.monotonic() + 10
    while len(backend._queued) < len(requests) - 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    held.release.set()
    return list(await asyncio.wait_for(asyncio.gather(first, *others), 20))


def test_queued_requests_share_one_call_and_get_their_own_rows(model_server, cifar):
    images = [encode(cifar[0][i], "PNG") for i in range(8)]

    async def scenario():
        plain = Backend(f"127.0.0.1:{model_server.grpc_port}", "cifar", timeout_s=10)
        try:
            alone = [(await plain.classify([image])).probabilities[0] for image in images]
        finally:
            await plain.close()
        backend, held = backend_with_held_first_call(model_server)
        try:
            results = await run_concurrently(
                backend, held, [([image], None) for image in images[:6]] + [(images[6:], None)]
            )
        finally:
            await backend.close()
        return alone, held, results

    alone, held, results = asyncio.run(scenario())
    # The held call, then everything that queued behind it in one.
    assert held.images_per_call == [1, 7]
    assert held.reported == held.images_per_call
    for i in range(6):
        assert results[i].probabilities.shape == (1, 20)
        np.testing.assert_allclose(results[i].probabilities[0], alone[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[6].probabilities, np.stack(alone[6:]), rtol=1e-5, atol=1e-6)
    assert {r.model for r in results} == {"cifar"}


def test_one_bad_image_fails_only_its_own_request(model_server, cifar):
    good = [encode(cifar[0][i], "PNG") for i in range(4)]

    async def scenario():
        backend, held = backend_with_held_first_call(model_server)
        try:
            requests = [([good[0]], None), ([good[1]], None), ([b"not an image"], None)]
            requests += [([good[2]], None), ([good[3]], None)]
            return held, await run_concurrently(backend, held, requests)
        finally:
            await backend.close()

    held, results = asyncio.run(scenario())
    assert isinstance(results[2], InvalidInput)
    assert all(results[i].probabilities.shape == (1, 20) for i in (0, 1, 3, 4))
    # The shared call failed: one by one.
    assert held.images_per_call[:2] == [1, 4] and held.images_per_call[2:] == [1, 1, 1, 1]
    assert held.reported == held.images_per_call


def test_a_queued_request_keeps_its_own_deadline(model_server, cifar):
    image = encode(cifar[0][0], "PNG")

    async def scenario():
        backend, held = backend_with_held_first_call(model_server)
        try:
            first = asyncio.create_task(backend.classify([image], "", None))
            await asyncio.wait_for(held.first_started.wait(), 10)
            # Hold the first call well past the short deadline.
            asyncio.get_running_loop().call_later(1.0, held.release.set)
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await backend.classify([image], "short", caller_remaining=0.1)
            assert time.monotonic() - started < 0.8
            patient = await backend.classify([image], "patient", caller_remaining=10)
            first_result = await asyncio.wait_for(first, 10)
            settle = time.monotonic() + 2  # the shared call frees the slot just after answering
            while backend._in_flight and time.monotonic() < settle:
                await asyncio.sleep(0.01)
            return backend, patient, first_result
        finally:
            await backend.close()

    backend, patient, first_result = asyncio.run(scenario())
    assert patient.probabilities.shape == (1, 20) and first_result.probabilities.shape == (1, 20)
    assert not backend._queued and backend._in_flight == 0


def test_sharing_off_makes_one_call_per_request(model_server, cifar):
    async def scenario():
        backend = Backend(
            f"127.0.0.1:{model_server.grpc_port}", "cifar", timeout_s=10, max_in_flight=0
        )
        try:
            return await backend.classify([encode(cifar[0][0], "PNG")])
        finally:
            await backend.close()

    assert asyncio.run(scenario()).probabilities.shape == (1, 20)


def test_requests_that_find_a_slot_free_go_together_at_the_end_of_the_loop_pass(
    model_server, cifar
):
    # A second slot is free while the first call is out: the requests the loop runs in one
    # pass share the next call instead of the first taking it alone (docs/serving.md).
    images = [encode(cifar[0][i], "PNG") for i in range(6)]

    async def scenario():
        backend, held = backend_with_held_first_call(model_server)
        backend.max_in_flight = 2
        try:
            first = asyncio.create_task(backend.classify([images[0]], "req-0"))
            await asyncio.wait_for(held.first_started.wait(), 10)
            together = [
                asyncio.create_task(backend.classify([image], f"req-{i}"))
                for i, image in enumerate(images[1:], start=1)
            ]
            answered = await asyncio.wait_for(asyncio.gather(*together), 20)
            calls_while_held = list(held.images_per_call)
            held.release.set()
            await asyncio.wait_for(first, 20)
        finally:
            await backend.close()
        return calls_while_held, answered

    calls_while_held, answered = asyncio.run(scenario())
    assert calls_while_held == [1, 5]
    assert [r.probabilities.shape for r in answered] == [(1, 20)] * 5

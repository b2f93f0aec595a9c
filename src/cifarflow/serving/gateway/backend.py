"""The gateway's gRPC client to the model server (or TensorFlow Serving).

Every call carries a deadline (the gateway's backend timeout, or less when
the caller's own deadline is nearer) and the request id as metadata. gRPC
failures become ServingErrors: a down backend or a model that is not
loaded is `Unavailable` (REST: 503 + Retry-After), a slow one
`DeadlineExceeded`, an image the model could not decode `InvalidInput`.

Concurrent requests share backend calls: while `max_in_flight` calls are
out, new requests wait and then go together in the next one (at most
`max_images` images), the way the model server batches its own callers. A
Python gRPC call costs the gateway and the model server about as much CPU
as a small model run, so under load one call per request was what kept the
gateway well below direct throughput. An idle gateway (no call out) sends
a request at once. With a call out, a request that finds a slot free still
waits for the end of the event loop's current pass, so the requests the
loop parsed together go together: taking the slot at once sent half of all
calls with one image under load (docs/serving.md). Every request keeps its
own deadline; when a shared call fails because of one image, its requests
are re-sent one by one so only that one fails.

It is asynchronous (grpc.aio), on the event loop that serves the gateway's
REST and gRPC: a request waiting for the backend holds no thread. The
channel is opened on first use, on that loop.

How calls spread over several model servers is the target's business
(target.py): `dns:///` and `ipv4:` targets get round robin per call, plain
HOST:PORT one connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cifarflow.serving.errors import (
    DeadlineExceeded,
    Internal,
    InvalidInput,
    NotFound,
    ServingError,
    Unavailable,
    Unimplemented,
    from_grpc_error,
)
from cifarflow.serving.gateway.target import channel_options
from cifarflow.serving.tensors import DT_STRING, fill_tensor_proto, from_tensor_proto

_AVAILABLE = 30
# The SavedModel signature that answers with a saliency map (components/train/export.py).
EXPLAIN_SIGNATURE = "explain"


@dataclasses.dataclass(frozen=True)
class BackendResult:
    model: str
    version: int
    probabilities: np.ndarray  # float32 [n, classes]
    logits: np.ndarray | None = None  # float32 [n, classes], when asked for (the OOD score)


@dataclasses.dataclass(frozen=True)
class BackendExplanation:
    model: str
    version: int
    probabilities: np.ndarray  # float32 [classes]
    class_id: int  # the class explained (the most probable)
    saliency: np.ndarray  # float32 [32, 32] in [0, 1]


class _Waiting:
    """One request queued for a shared backend call."""

    __slots__ = ("images", "request_id", "deadline", "alone", "future")

    def __init__(
        self, images: list[bytes], request_id: str, deadline: float, future: asyncio.Future
    ) -> None:
        self.images = images
        self.request_id = request_id
        self.deadline = deadline
        self.alone = False  # re-sent on its own after a shared call failed
        self.future = future


class Backend:
    """Calls `serving_default` with encoded images; checks model status for /readyz.

    Every method is a coroutine for the one event loop the gateway serves on.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout_s: float,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_in_flight: int = 2,
        max_images: int = 32,
        on_call: Callable[[int], None] | None = None,
        want_logits: bool = False,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Reconnect quickly after a backend restart, so 503s stop soon.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 1),
            *channel_options(target),
        ]
        self.channel: grpc.aio.Channel | None = None
        # The channel's stubs, made on first use (grpc.aio's are not typed).
        self._predict: Any = None
        self._status: Any = None
        self.want_logits = want_logits  # the monitors' energy score needs them
        self.max_in_flight = max_in_flight  # 0: every request makes its own call
        self.max_images = max_images
        self._on_call = on_call or (lambda images: None)  # told the size of every call sent
        self._queued: collections.deque[_Waiting] = collections.deque()
        self._in_flight = 0
        self._flush_scheduled = False  # a _flush is due at the end of this loop pass
        self._calls: set[asyncio.Task] = set()  # shared calls under way (kept from the GC)

    def _open(self) -> None:
        """The channel, opened on the running loop (an aio channel belongs to one loop)."""
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict
            self._status = model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus

    def _deadline(self, caller_remaining: float | None) -> float:
        return (
            self.timeout_s
            if caller_remaining is None
            else max(0.001, min(self.timeout_s, caller_remaining))
        )

    async def classify(
        self, images: list[bytes], request_id: str = "", caller_remaining: float | None = None
    ) -> BackendResult:
        """Probabilities for `images`, from a call of their own or one shared with concurrent requests."""
        self._open()
        timeout = self._deadline(caller_remaining)
        alone = self.max_in_flight <= 0 or len(images) >= self.max_images
        if alone:
            return await self._call(images, request_id, timeout)
        if self._in_flight == 0 and not self._queued:
            self._in_flight += 1
            try:
                return await self._call(images, request_id, timeout)
            finally:
                self._send_queued()
        loop = asyncio.get_running_loop()
        waiting = _Waiting(images, request_id, time.monotonic() + timeout, loop.create_future())
        self._queued.append(waiting)
        if self._in_flight < self.max_in_flight and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            # shield: a caller that gives up must not cancel the shared call's future.
            return await asyncio.wait_for(asyncio.shield(waiting.future), timeout)
        except TimeoutError:
            try:
                self._queued.remove(waiting)
            except ValueError:  # already on its way: the shared call goes on for the others
                # Its outcome is nobody's now: retrieve it so asyncio does not report it.
                waiting.future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise DeadlineExceeded(
                f"model backend {self.target} did not answer in time: deadline exceeded"
            ) from None

    def _request(self, images: list[bytes]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = "serving_default"
        array = np.empty(len(images), dtype=object)
        array[:] = images
        fill_tensor_proto(request.inputs["image_bytes"], array, DT_STRING)
        request.output_filter.append("probabilities")
        if self.want_logits:
            request.output_filter.append("logits")
        return request

    def _error(self, exc: grpc.RpcError) -> ServingError:
        error = from_grpc_error(exc, f"model backend {self.target}")
        if isinstance(error, NotFound):  # the server is up but has no such model loaded
            return Unavailable(
                f"model {self.model_name!r} is not available on {self.target}: {error.message}"
            )
        return error

    def _result(self, response) -> BackendResult:
        probabilities = from_tensor_proto(response.outputs["probabilities"], "probabilities")
        logits = (
            from_tensor_proto(response.outputs["logits"], "logits")
            if "logits" in response.outputs
            else None
        )
        return BackendResult(
            response.model_spec.name, int(response.model_spec.version.value), probabilities, logits
        )

    async def _call(self, images: list[bytes], request_id: str, timeout: float) -> BackendResult:
        self._on_call(len(images))
        try:
            response = await self._predict(
                self._request(images),
                timeout=timeout,
                metadata=(("x-request-id", request_id),) if request_id else None,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return self._result(response)

    async def explain(
        self, image: bytes, request_id: str = "", caller_remaining: float | None = None
    ) -> BackendExplanation:
        """The `explain` signature on one image, in a call of its own.

        Not shared with other requests: explanations are rare and cost a
        backward pass, and the model server batches them per signature anyway.

        Raises:
            Unimplemented: the served version has no `explain` signature.
        """
        self._open()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = EXPLAIN_SIGNATURE
        array = np.empty(1, dtype=object)
        array[0] = image
        fill_tensor_proto(request.inputs["image_bytes"], array, DT_STRING)
        request.output_filter.extend(["probabilities", "class_ids", "saliency"])
        try:
            response = await self._predict(
                request,
                timeout=self._deadline(caller_remaining),
                metadata=(("x-request-id", request_id),) if request_id else None,
            )
        except grpc.RpcError as exc:
            # TF Serving: FAILED_PRECONDITION 'Serving signature key "explain" not found.'
            # (servables/tensorflow/predict_util.cc); the model server answers the same.
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "signature" in str(
                exc.details()
            ):
                raise Unimplemented(
                    f"the served version of model {self.model_name!r} has no {EXPLAIN_SIGNATURE!r} "
                    "signature (it was exported before explanations); classify still works, and "
                    "a version exported by this cifarflow explains"
                ) from None
            raise self._error(exc) from None
        outputs = {
            name: from_tensor_proto(response.outputs[name], name)
            for name in ("probabilities", "class_ids", "saliency")
        }
        return BackendExplanation(
            response.model_spec.name,
            int(response.model_spec.version.value),
            outputs["probabilities"][0],
            int(outputs["class_ids"][0]),
            outputs["saliency"][0],
        )

    def _flush(self) -> None:
        """The end of a loop pass: what queued during it goes out on the free slots."""
        self._flush_scheduled = False
        while self._in_flight < self.max_in_flight and self._start_shared_call():
            self._in_flight += 1

    def _send_queued(self) -> None:
        """A call finished: send what queued meanwhile as one call, or free the slot."""
        if not self._start_shared_call():
            self._in_flight -= 1

    def _start_shared_call(self) -> bool:
        """Starts a call for the head of the queue (as many as fit); False when nothing queued."""
        group: list[_Waiting] = []
        images = 0
        while self._queued:
            head = self._queued[0]
            if group and (
                head.alone or group[0].alone or images + len(head.images) > self.max_images
            ):
                break
            group.append(self._queued.popleft())
            images += len(head.images)
        if not group:
            return False
        task = asyncio.get_running_loop().create_task(self._shared_call(group, images))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return True

    async def _shared_call(self, group: list[_Waiting], images: int) -> None:
        remaining = max(w.deadline for w in group) - time.monotonic()
        ids = ",".join(w.request_id for w in group if w.request_id)
        self._on_call(images)
        try:
            try:
                response = await self._predict(
                    self._request([image for w in group for image in w.images]),
                    timeout=max(0.001, remaining),
                    metadata=(("x-request-id", ids[:1024]),) if ids else None,
                )
            except grpc.RpcError as exc:
                error = self._error(exc)
                if isinstance(error, InvalidInput) and len(group) > 1:
                    for waiting in group:  # one bad image: each request again on its own
                        waiting.alone = True
                    self._queued.extendleft(reversed(group))
                else:
                    self._finish(group, error)
                return
            result = self._result(response)
            start = 0
            for waiting in group:
                end = start + len(waiting.images)
                if not waiting.future.done():
                    waiting.future.set_result(
                        BackendResult(
                            result.model,
                            result.version,
                            result.probabilities[start:end],
                            None if result.logits is None else result.logits[start:end],
                        )
                    )
                start = end
        except Exception as exc:  # never leave a request waiting (a closed channel, a bug)
            self._finish(group, Internal(f"{type(exc).__name__}: {exc}"))
        finally:
            self._send_queued()

    @staticmethod
    def _finish(group: list[_Waiting], error: ServingError) -> None:
        for waiting in group:
            if not waiting.future.done():
                waiting.future.set_exception(error)

    async def status(self, timeout_s: float = 1.0) -> tuple[bool, str, int | None]:
        """(ready, reason, serving version) from GetModelStatus."""
        self._open()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            response = await self._status(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}", None
        available = [s.version for s in response.model_version_status if s.state == _AVAILABLE]
        if not available:
            return False, f"no version of {self.model_name} is AVAILABLE", None
        return True, "ok", max(available)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

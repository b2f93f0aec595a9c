"""The gateway's gRPC client to the model server (or TensorFlow Serving).

Every call carries a deadline (the gateway's backend timeout, or less when
the caller's own deadline is nearer) and the request id as metadata. gRPC
failures become ServingErrors: a down backend or a model that is not
loaded is `Unavailable` (REST: 503 + Retry-After), a slow one
`DeadlineExceeded`, an image the model could not decode `InvalidInput`.
"""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from cifarflow.serving.errors import NotFound, Unavailable, from_grpc_error
from cifarflow.serving.tensors import DT_STRING, from_tensor_proto, to_tensor_proto

_AVAILABLE = 30


@dataclasses.dataclass(frozen=True)
class BackendResult:
    model: str
    version: int
    probabilities: np.ndarray  # float32 [n, classes]


class Backend:
    """Calls `serving_default` with encoded images; checks model status for /readyz."""

    def __init__(self, target: str, model_name: str, timeout_s: float, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                # Reconnect quickly after a backend restart, so 503s stop soon.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.enable_retries", 1),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict
        self._status = model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus

    def _deadline(self, caller_remaining: float | None) -> float:
        return self.timeout_s if caller_remaining is None else max(0.001, min(self.timeout_s, caller_remaining))

    def classify(self, images: list[bytes], request_id: str = "", caller_remaining: float | None = None) -> BackendResult:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = "serving_default"
        array = np.empty(len(images), dtype=object)
        array[:] = images
        request.inputs["image_bytes"].CopyFrom(to_tensor_proto(array, DT_STRING))
        request.output_filter.append("probabilities")
        try:
            response = self._predict(request, timeout=self._deadline(caller_remaining),
                                     metadata=(("x-request-id", request_id),) if request_id else None)
        except grpc.RpcError as exc:
            error = from_grpc_error(exc, f"model backend {self.target}")
            if isinstance(error, NotFound):  # the server is up but has no such model loaded
                raise Unavailable(f"model {self.model_name!r} is not available on {self.target}: {error.message}") from None
            raise error from None
        probabilities = from_tensor_proto(response.outputs["probabilities"], "probabilities")
        return BackendResult(response.model_spec.name, int(response.model_spec.version.value), probabilities)

    def status(self, timeout_s: float = 1.0) -> tuple[bool, str, int | None]:
        """(ready, reason, serving version) from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            response = self._status(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}", None
        available = [s.version for s in response.model_version_status if s.state == _AVAILABLE]
        if not available:
            return False, f"no version of {self.model_name} is AVAILABLE", None
        return True, "ok", max(available)

    def close(self) -> None:
        self.channel.close()

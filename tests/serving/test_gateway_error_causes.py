"""REST and gRPC count a failure under the same cause, the one its error carries.

The gateway's metrics used to work out a REST failure's cause again from the
HTTP status, so a backend's FAILED_PRECONDITION (HTTP 400) was counted as
`invalid_input` over REST and as `failed_precondition` over gRPC. Here a real
gRPC backend refuses every call with a chosen status, and one request through
each of the gateway's protocols must land under one cause.
"""

from __future__ import annotations

import re
from concurrent import futures

import grpc
import pytest
import requests
from tensorflow_serving.apis import prediction_service_pb2_grpc

from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.server import Gateway
from tests.serving.images import cifar_test_images, encode


class RefusingBackend(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A model server that answers every call with one gRPC status."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def Predict(self, request, context):
        context.abort(self.code, "refused by the test backend")

    def GetModelMetadata(self, request, context):
        context.abort(self.code, "refused by the test backend")


def errors_by_cause(metrics: str) -> dict[str, float]:
    return {
        cause: float(value)
        for cause, value in re.findall(
            r'^cifarflow_gateway_errors_total\{cause="(\w+)"\} (\S+)$', metrics, re.M
        )
    }


@pytest.mark.parametrize(
    "code, cause",
    [
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "failed_precondition",
        ),  # HTTP 400, like invalid input: the old table mixed them
        (
            grpc.StatusCode.NOT_FOUND,
            "unavailable",
        ),  # the gateway's word for a backend without the model (503)
        (grpc.StatusCode.UNAVAILABLE, "unavailable"),
    ],
)
def test_rest_and_grpc_count_a_backend_failure_under_the_same_cause(code, cause):
    backend = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        RefusingBackend(code), backend
    )
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    backend.start()
    gateway = Gateway(
        GatewayConfig(
            backend=f"127.0.0.1:{backend_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=0,
            model_name="cifar",
        )
    ).start()
    try:
        image = encode(cifar_test_images()[0][0], "PNG")
        rest = requests.post(
            f"http://127.0.0.1:{gateway.port}/v1/classify",
            files={"file": ("x.png", image, "image/png")},
            timeout=10,
        )
        assert rest.status_code >= 400, rest.text
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError):
                classifier_pb2_grpc.ClassifierStub(channel).Classify(
                    classifier_pb2.ClassifyRequest(image=image), timeout=10
                )
        counted = errors_by_cause(
            requests.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5).text
        )
        assert counted == {cause: 2.0}, counted
    finally:
        gateway.stop(1)
        backend.stop(0)

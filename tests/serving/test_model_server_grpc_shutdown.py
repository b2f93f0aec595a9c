"""The model server's gRPC stop (a drain, then cancellation past the grace) and its bind."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.store import publish_model
from tests.serving.model_factory import reference_logits


def _start(store) -> ModelServer:
    return ModelServer(
        ModelServerConfig(
            str(store), "cifar", host="127.0.0.1", grpc_port=0, rest_port=-1, poll_interval_s=60
        )
    ).start()


def _held_predicts(server: ModelServer) -> tuple[threading.Event, threading.Event]:
    """Makes the served version's Predict wait for `release` once it has `entered` the model call."""
    served = server.manager.get("cifar")
    real_predict = served.predict
    entered, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real_predict(*args, **kwargs)

    served.predict = held
    return entered, release


def _request(pixels: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cifar"
    request.model_spec.signature_name = "predict_pixels"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels))
    return request


@pytest.fixture(scope="module")
def store(exported_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("shutdown-store")
    publish_model(exported_model, path, "cifar", {})
    return path


def test_stop_waits_for_a_predict_in_flight_and_it_gets_its_answer(store, cifar):
    server = _start(store)
    entered, release = _held_predicts(server)
    pixels = cifar[0][:2]
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = pool.submit(stub.Predict, _request(pixels), timeout=30)
        assert entered.wait(10)
        stopping = pool.submit(server.stop, 20.0)
        time.sleep(0.5)
        assert not stopping.done()  # still draining: the Predict has not answered yet
        release.set()
        response = answer.result(timeout=10)
        stopping.result(timeout=10)
    assert list(tf.make_ndarray(response.outputs["class_ids"])) == list(
        np.argmax(reference_logits(pixels), axis=1)
    )


def test_stop_cancels_a_predict_still_running_after_the_grace(store, cifar):
    server = _start(store)
    entered, release = _held_predicts(server)
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
            ThreadPoolExecutor(1) as pool,
        ):
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = pool.submit(stub.Predict, _request(cifar[0][:1]), timeout=30)
            assert entered.wait(10)
            started = time.monotonic()
            server.stop(0.5)
            assert time.monotonic() - started < 5  # the held model call did not hold stop()
            with pytest.raises(grpc.RpcError) as info:
                answer.result(timeout=10)
            assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        release.set()


def test_a_grpc_port_in_use_is_an_oserror_that_leaves_nothing_running(store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ModelServerConfig(
            str(store), "cifar", host="127.0.0.1", grpc_port=port, rest_port=-1, poll_interval_s=60
        )
        server = ModelServer(config)
        before = set(threading.enumerate())
        with pytest.raises(OSError, match=f"cannot bind gRPC to 127.0.0.1:{port}"):
            server.start()
        # The version poller and the batch threads end with it (the batch threads
        # on the sentinel they were sent, so give them a moment).
        deadline = time.monotonic() + 10
        while not set(threading.enumerate()) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(threading.enumerate()) <= before, set(threading.enumerate()) - before

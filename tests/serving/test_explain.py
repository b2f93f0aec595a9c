"""Explanations end to end: the `explain` signature served like TF Serving serves it, and the gateway's
REST `/v1/explain` and gRPC `Explain` over it, on the trainer's real export (an untrained ResNet-8)
and real CIFAR-100 test images. A served version without the signature (tests/serving/model_factory.py,
like a model exported before explanations) is a 501 / UNIMPLEMENTED that says so.
"""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.server import Gateway
from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.store import publish_model
from tests.serving.gateway_support import ImageSite
from tests.serving.images import encode

TOKEN = "explain-test-token"


def _stack(model_dir, store, token=None):
    publish_model(model_dir, store, "cifar", {})
    server = ModelServer(
        ModelServerConfig(str(store), "cifar", host="127.0.0.1", grpc_port=0, rest_port=0)
    ).start()
    gateway = Gateway(
        GatewayConfig(
            backend=f"127.0.0.1:{server.grpc_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=0,
            model_name="cifar",
            token=token,
            allowed_url_hosts=("127.0.0.1",),  # tests/serving/gateway_support.ImageSite
            allow_private_urls=True,
        )
    ).start()
    return server, gateway


@pytest.fixture(scope="module")
def stack(explainable_model, tmp_path_factory):
    server, gateway = _stack(explainable_model, tmp_path_factory.mktemp("explain-store"))
    yield server, gateway
    gateway.stop(1)
    server.stop()


def _direct_explain(server, data: bytes) -> dict[str, np.ndarray]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "cifar"
        request.model_spec.signature_name = "explain"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data]))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    assert response.model_spec.signature_name == "explain"
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_the_model_server_serves_explain_through_tf_servings_predict_apis(stack, cifar):
    server, _ = stack
    data = encode(cifar[0][3], "PNG")
    outputs = _direct_explain(server, data)
    assert outputs["saliency"].shape == (1, 32, 32) and outputs["saliency"].dtype == np.float32
    assert 0 <= outputs["saliency"].min() and outputs["saliency"].max() <= 1
    assert outputs["probability"][0] == pytest.approx(
        outputs["probabilities"][0, outputs["class_ids"][0]]
    )
    # REST, TF Serving's row format with "signature_name".
    answer = requests.post(
        f"http://127.0.0.1:{server.rest_port}/v1/models/cifar:predict",
        json={"signature_name": "explain", "instances": [{"b64": base64.b64encode(data).decode()}]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    row = answer.json()["predictions"][0]
    np.testing.assert_allclose(np.array(row["saliency"]), outputs["saliency"][0], atol=1e-6)
    assert row["class_names"] == COARSE_CLASS_NAMES[outputs["class_ids"][0]]
    metadata = requests.get(
        f"http://127.0.0.1:{server.rest_port}/v1/models/cifar/metadata", timeout=10
    ).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["explain"]
    assert set(signature["outputs"]) >= {"saliency", "probability", "class_ids", "probabilities"}


def test_gateway_rest_explain_takes_the_classify_inputs_and_returns_the_map(stack, cifar):
    server, gateway = stack
    base = f"http://127.0.0.1:{gateway.port}"
    pixels = cifar[0][7]
    data = encode(pixels, "PNG")
    expected = _direct_explain(server, data)
    classified = requests.post(f"{base}/v1/classify", files={"file": ("x.png", data)}, timeout=30)
    answers = [
        requests.post(f"{base}/v1/explain", files={"file": ("x.png", data)}, timeout=30),
        requests.post(
            f"{base}/v1/explain",
            json={"image_b64": base64.b64encode(data).decode(), "top_k": 3},
            timeout=30,
        ),
        requests.post(
            f"{base}/v1/explain", data=data, headers={"Content-Type": "image/png"}, timeout=30
        ),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Request-ID"]
        body = answer.json()
        assert body["model"] == "cifar" and body["version"] == 1
        assert body["class"] == classified.json()["predictions"][0]["class"]
        assert body["probability"] == pytest.approx(
            classified.json()["predictions"][0]["probability"], abs=1e-6
        )
        saliency = np.array(body["saliency"])
        assert saliency.shape == (32, 32)
        np.testing.assert_allclose(saliency, expected["saliency"][0], atol=5e-4)  # 3 decimals
    assert len(answers[1].json()["predictions"]) == 3 and len(answers[0].json()["predictions"]) == 5
    # A different image, a different map.
    other = requests.post(
        f"{base}/v1/explain",
        files={"file": ("y.jpg", encode(cifar[0][21], "JPEG", 96))},
        timeout=30,
    )
    assert np.abs(np.array(other.json()["saliency"]) - saliency).max() > 0.05


def test_gateway_rest_explain_refuses_bad_input_like_classify(stack):
    _, gateway = stack
    base = f"http://127.0.0.1:{gateway.port}"
    empty = requests.post(f"{base}/v1/explain", files={"file": ("x.png", b"")}, timeout=10)
    text = requests.post(f"{base}/v1/explain", files={"file": ("x.png", b"hello")}, timeout=10)
    bad_json = requests.post(
        f"{base}/v1/explain", data=b"{", headers={"Content-Type": "application/json"}, timeout=10
    )
    for answer in (empty, text, bad_json):
        assert answer.status_code == 400 and answer.json()["error"], answer.text
    assert "not an image" in text.json()["error"]


def test_gateway_grpc_explain(stack, cifar):
    server, gateway = stack
    data = encode(cifar[0][11], "JPEG", 128, quality=90)
    expected = _direct_explain(server, data)
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        response = stub.Explain(classifier_pb2.ExplainRequest(image=data), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Explain(classifier_pb2.ExplainRequest(image=b"hello"), timeout=10)
    assert (response.height, response.width) == (32, 32)
    np.testing.assert_allclose(
        np.array(response.saliency).reshape(32, 32), expected["saliency"][0], atol=1e-6
    )
    assert response.class_id == expected["class_ids"][0]
    assert response.class_name == COARSE_CLASS_NAMES[response.class_id]
    assert response.probability == pytest.approx(float(expected["probability"][0]), abs=1e-6)
    assert response.model == "cifar" and response.version == 1 and response.request_id
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_explain_by_url_fetches_and_explains_the_same_image_over_rest_and_grpc(stack, cifar):
    server, gateway = stack
    data = encode(cifar[0][5], "PNG", 96)
    expected = _direct_explain(server, data)["saliency"][0]
    site = ImageSite()
    site.routes["/photo.png"] = (200, {"Content-Type": "image/png"}, data)
    try:
        url = site.url("/photo.png")
        rest = requests.post(
            f"http://127.0.0.1:{gateway.port}/v1/explain", json={"url": url}, timeout=30
        )
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            answer = classifier_pb2_grpc.ClassifierStub(channel).Explain(
                classifier_pb2.ExplainRequest(url=url), timeout=30
            )
    finally:
        site.close()
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(np.array(rest.json()["saliency"]), expected, atol=1e-3)
    np.testing.assert_allclose(np.array(answer.saliency).reshape(32, 32), expected, atol=1e-6)


def test_a_version_without_explain_is_a_clear_501_and_classify_still_works(
    exported_model, tmp_path, cifar
):
    server, gateway = _stack(exported_model, tmp_path / "store", token=TOKEN)
    try:
        base = f"http://127.0.0.1:{gateway.port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        data = encode(cifar[0][5], "PNG")
        no_token = requests.post(f"{base}/v1/explain", files={"file": ("x.png", data)}, timeout=10)
        assert no_token.status_code == 401
        answer = requests.post(
            f"{base}/v1/explain", files={"file": ("x.png", data)}, headers=auth, timeout=30
        )
        assert answer.status_code == 501, answer.text
        assert "no 'explain' signature" in answer.json()["error"]
        assert (
            requests.post(
                f"{base}/v1/classify", files={"file": ("x.png", data)}, headers=auth, timeout=30
            ).status_code
            == 200
        )
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as anonymous:
                classifier_pb2_grpc.ClassifierStub(channel).Explain(
                    classifier_pb2.ExplainRequest(image=data), timeout=30
                )
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as refused:
                classifier_pb2_grpc.ClassifierStub(channel).Explain(
                    classifier_pb2.ExplainRequest(image=data),
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=30,
                )
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "explain" in refused.value.details()
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert 'endpoint="/v1/explain"' in metrics
    finally:
        gateway.stop(1)
        server.stop()

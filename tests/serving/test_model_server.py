"""The model server against TensorFlow Serving's stock gRPC stubs and its REST API."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.store import local_store, publish_model
from tests.serving.images import encode
from tests.serving.model_factory import reference_logits


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("ms-store")
    publish_model(exported_model, store, "cifar", {"metrics": {"accuracy": 0.1}})
    config = ModelServerConfig(
        str(store),
        "cifar",
        host="127.0.0.1",
        grpc_port=0,
        rest_port=0,
        poll_interval_s=0.2,
        batch_timeout_s=0.005,
        max_message_bytes=2 * 1024 * 1024,
    )
    running = ModelServer(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def rest(server):
    return f"http://127.0.0.1:{server.rest_port}"


def predict_request(name="cifar", signature="", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_predict_images_matches_the_model(stub, cifar):
    pixels, _ = cifar
    batch = pixels[:6]
    encoded = [encode(p, "PNG") for p in batch]  # lossless, 32x32: decode gives the same pixels
    response = stub.Predict(
        predict_request(image_bytes=np.array(encoded, dtype=object)), timeout=10
    )
    assert response.model_spec.name == "cifar" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    logits = tf.make_ndarray(response.outputs["logits"])
    np.testing.assert_allclose(logits, reference_logits(batch), atol=1e-4)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 20)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    ids = tf.make_ndarray(response.outputs["class_ids"])
    assert ids.dtype == np.int64 and list(ids) == list(np.argmax(reference_logits(batch), axis=1))
    names = tf.make_ndarray(response.outputs["class_names"])
    from cifarflow.classes import COARSE_CLASS_NAMES

    assert [n.decode() for n in names] == [COARSE_CLASS_NAMES[i] for i in ids]


def test_predict_pixels_signature_and_output_filter(stub, cifar):
    pixels, _ = cifar
    request = predict_request(signature="predict_pixels", images=pixels[:3])
    request.output_filter.append("class_ids")
    response = stub.Predict(request, timeout=10)
    assert set(response.outputs) == {"class_ids"}
    assert list(tf.make_ndarray(response.outputs["class_ids"])) == list(
        np.argmax(reference_logits(pixels[:3]), axis=1)
    )


def test_jpeg_at_several_sizes_gives_close_answers(stub, cifar):
    pixels, _ = cifar
    image = pixels[10]
    sizes = [32, 64, 200, 500]
    encoded = [encode(image, "JPEG", size, quality=95) for size in sizes]
    response = stub.Predict(
        predict_request(image_bytes=np.array(encoded, dtype=object)), timeout=10
    )
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    # Antialiased downscaling brings every size back close to the original 32x32.
    reference = tf.nn.softmax(reference_logits(image[None])).numpy()[0]
    assert np.abs(probabilities - reference).max() < 0.05


def test_metadata_and_status_with_stock_stubs(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "cifar"
    response = stub.GetModelMetadata(request, timeout=5)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    pixels_sig = signatures.signature_def["predict_pixels"]
    assert [d.size for d in pixels_sig.inputs["images"].tensor_shape.dim] == [-1, 32, 32, 3]
    assert set(pixels_sig.outputs) == {"probabilities", "logits", "class_ids", "class_names"}

    status_stub = model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    )
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "cifar"
    status = status_stub.GetModelStatus(status_request, timeout=5)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    status_request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        status_stub.GetModelStatus(status_request, timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "make_request, code, message",
    [
        (
            lambda p: predict_request(name="nope", image_bytes=np.array([b"x"], dtype=object)),
            grpc.StatusCode.NOT_FOUND,
            "Latest(nope)",
        ),
        (
            lambda p: _with_version(predict_request(images=p[:1], signature="predict_pixels"), 9),
            grpc.StatusCode.NOT_FOUND,
            "Specific(cifar, 9)",
        ),
        (
            lambda p: predict_request(signature="nope", images=p[:1]),
            grpc.StatusCode.FAILED_PRECONDITION,
            'signature key "nope"',
        ),
        (
            lambda p: predict_request(signature="predict_pixels", pixels=p[:1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Sent extra: ['pixels']",
        ),
        (
            lambda p: predict_request(
                signature="predict_pixels", images=p[:1].astype(np.float32) + 0.5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "non-integer",
        ),
        (
            lambda p: predict_request(signature="predict_pixels", images=p[:1, :16]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "shape [-1, 32, 32, 3]",
        ),
        (
            lambda p: predict_request(
                signature="predict_pixels", images=np.zeros((0, 32, 32, 3), np.uint8)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty batch",
        ),
        (
            lambda p: predict_request(image_bytes=np.array([b"not an image"], dtype=object)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unknown image file format",
        ),
        (
            lambda p: predict_request(
                image_bytes=np.array([b"\x00" * (3 * 1024 * 1024)], dtype=object)
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "unknown-signature",
        "wrong-alias",
        "wrong-dtype",
        "wrong-shape",
        "empty-batch",
        "not-an-image",
        "too-large",
    ],
)
def test_bad_requests_get_tf_serving_status_codes(stub, cifar, make_request, code, message):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make_request(cifar[0]), timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()


def _with_version(request, version):
    request.model_spec.version.value = version
    return request


def test_rest_status_metadata_and_both_predict_formats(rest, cifar):
    pixels, _ = cifar
    status = requests.get(f"{rest}/v1/models/cifar", timeout=5).json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert requests.get(f"{rest}/v1/models/cifar/versions/1", timeout=5).status_code == 200
    metadata = requests.get(f"{rest}/v1/models/cifar/metadata", timeout=5).json()
    assert "predict_pixels" in metadata["metadata"]["signature_def"]["signature_def"]

    b64 = [{"b64": base64.b64encode(encode(p, "PNG")).decode()} for p in pixels[:2]]
    rows = requests.post(f"{rest}/v1/models/cifar:predict", json={"instances": b64}, timeout=10)
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    expected = np.argmax(reference_logits(pixels[:2]), axis=1)
    assert [p["class_ids"] for p in predictions] == list(expected)
    assert len(predictions[0]["probabilities"]) == 20 and isinstance(
        predictions[0]["class_names"], str
    )

    columns = requests.post(
        f"{rest}/v1/models/cifar/versions/1:predict",
        json={"signature_name": "predict_pixels", "inputs": {"images": pixels[:2].tolist()}},
        timeout=10,
    )
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"]["class_ids"] == list(expected)


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/models/nope:predict", {"instances": [1]}, 404, "Latest(nope)"),
        ("/v1/models/cifar/versions/7:predict", {"instances": [1]}, 404, "Specific(cifar, 7)"),
        ("/v1/models/cifar:predict", b"{not json", 400, "malformed JSON"),
        ("/v1/models/cifar:predict", {"instances": [{"b64": "@@@"}]}, 400, "base64"),
        ("/v1/models/cifar:predict", {"instances": []}, 400, "empty"),
        ("/v1/models/cifar:predict", {"rows": []}, 400, "'instances'"),
        (
            "/v1/models/cifar:predict",
            {"signature_name": "x", "instances": [1]},
            400,
            'signature key "x"',
        ),
        (
            "/v1/models/cifar:predict",
            {"signature_name": "predict_pixels", "inputs": [[1, 2]]},
            400,
            "rank 4",
        ),
        ("/v1/models/cifar:predict", b"x" * (3 * 1024 * 1024), 413, "limit"),
        ("/v1/models/cifar:explain", {"instances": [1]}, 404, "only :predict"),
    ],
)
def test_rest_errors(rest, path, body, status, message):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.post(rest + path, timeout=10, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_concurrent_requests_are_batched_and_one_bad_image_fails_alone(server, stub, cifar):
    pixels, _ = cifar
    server.batch_sizes.clear()
    good = encode(pixels[0], "PNG")

    def call(i: int):
        payload = b"garbage" if i == 5 else good
        try:
            response = stub.Predict(
                predict_request(image_bytes=np.array([payload], dtype=object)), timeout=10
            )
            return int(tf.make_ndarray(response.outputs["class_ids"])[0])
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(48)))
    expected = int(np.argmax(reference_logits(pixels[:1])))
    assert results[5] == grpc.StatusCode.INVALID_ARGUMENT
    assert results[:5] + results[6:] == [expected] * 47
    assert max(server.batch_sizes) > 1  # requests really ran together


def test_new_version_hot_loaded_under_traffic_and_bad_version_ignored(
    exported_model, favour7_model, tmp_path, cifar
):
    store = tmp_path / "store"
    publish_model(exported_model, store, "cifar", {})
    config = ModelServerConfig(
        str(store), "cifar", host="127.0.0.1", grpc_port=0, rest_port=-1, poll_interval_s=0.1
    )
    server = ModelServer(config).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = np.array([encode(cifar[0][3], "PNG")], dtype=object)
    seen, failures, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                started = time.monotonic()
                response = stub.Predict(predict_request(image_bytes=image), timeout=10)
                seen.append(
                    (
                        response.model_spec.version.value,
                        int(tf.make_ndarray(response.outputs["class_ids"])[0]),
                        started,
                        time.monotonic(),
                    )
                )
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        publish_model(favour7_model, store, "cifar", {})
        deadline = time.monotonic() + 20
        while not any(v == 2 for v, *_ in seen[-8:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A broken version 3 (complete, but not loadable) must not take version 2 down.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        publish_model(broken, store, "cifar", {})
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert not failures, failures[:3]
        seen.sort(key=lambda s: s[2])
        assert seen[0][0] == 1 and seen[-1][0] == 2
        # Once a client has had an answer from version 2, no request started later gets version 1.
        first_v2_answer = min(end for v, _, _, end in seen if v == 2)
        assert all(v == 2 for v, _, start, _ in seen if start > first_v2_answer)
        assert all(c == 7 for v, c, _, _ in seen if v == 2)
        status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "cifar"
        states = {
            s.version: (s.state, s.status.error_message)
            for s in status_stub.GetModelStatus(request, timeout=5).model_version_status
        }
        assert states[2][0] == 30 and states[1][0] == 50  # AVAILABLE, END (unloaded)
        assert states[3][0] == 50 and states[3][1]  # failed to load, with the reason
    finally:
        channel.close()
        server.stop()


def test_label_picks_the_served_version(exported_model, favour7_model, tmp_path, cifar):
    store = tmp_path / "store"
    publish_model(exported_model, store, "cifar", {})
    publish_model(favour7_model, store, "cifar", {})
    local_store(store).promote("cifar", 1, "stable")
    server = ModelServer(
        ModelServerConfig(
            str(store),
            "cifar",
            host="127.0.0.1",
            grpc_port=0,
            rest_port=0,
            label="stable",
            poll_interval_s=60,
        )
    ).start()
    try:
        rest = f"http://127.0.0.1:{server.rest_port}"
        body = {"signature_name": "predict_pixels", "instances": cifar[0][:1].tolist()}
        default = requests.post(f"{rest}/v1/models/cifar:predict", json=body, timeout=10).json()
        assert default["predictions"][0]["class_ids"] != 7
        labelled = requests.post(
            f"{rest}/v1/models/cifar/labels/stable:predict", json=body, timeout=10
        )
        assert labelled.status_code == 200 and labelled.json() == default
        # An unknown label is INVALID_ARGUMENT in TF Serving (GetModelVersionForLabel), so 400, not 404.
        unknown = requests.post(
            f"{rest}/v1/models/cifar/labels/canary:predict", json=body, timeout=10
        )
        assert (
            unknown.status_code == 400
            and "Unrecognized servable version label: canary" in unknown.json()["error"]
        )
    finally:
        server.stop()
    unlabelled = tmp_path / "unlabelled"
    publish_model(exported_model, unlabelled, "cifar", {})
    publish_model(favour7_model, unlabelled, "cifar", {})
    server = ModelServer(
        ModelServerConfig(
            str(unlabelled),
            "cifar",
            host="127.0.0.1",
            grpc_port=0,
            rest_port=-1,
            label="stable",
            poll_interval_s=60,
        )
    ).start()
    try:
        assert server.manager.default_version == 2  # no promotion yet: the newest serves
    finally:
        server.stop()


def test_serves_from_an_s3_store_and_picks_up_new_versions(
    exported_model, favour7_model, s3_server, s3_bucket, tmp_path, cifar
):
    uri = f"s3://{s3_bucket}/models"
    publish_model(exported_model, uri, "cifar", {}, s3_server.settings)
    config = ModelServerConfig(
        uri,
        "cifar",
        host="127.0.0.1",
        grpc_port=0,
        rest_port=0,
        poll_interval_s=0.2,
        cache_dir=tmp_path / "cache",
    )
    server = ModelServer(config, s3_server.settings).start()
    try:
        rest = f"http://127.0.0.1:{server.rest_port}"
        body = {"signature_name": "predict_pixels", "instances": cifar[0][:1].tolist()}
        assert (
            requests.get(f"{rest}/v1/models/cifar", timeout=5).json()["model_version_status"][0][
                "version"
            ]
            == "1"
        )
        publish_model(favour7_model, uri, "cifar", {}, s3_server.settings)
        deadline = time.monotonic() + 20
        while server.manager.default_version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = requests.post(f"{rest}/v1/models/cifar:predict", json=body, timeout=10).json()
        assert answer["predictions"][0]["class_ids"] == 7
        assert sorted(
            p.name for p in (tmp_path / "cache" / "cifar").iterdir() if p.name.isdigit()
        ) == ["1", "2"]
    finally:
        server.stop()

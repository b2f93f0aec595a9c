"""The gateway over real gRPC to the model server, with real images and every bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import threading

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.server import Gateway
from cifarflow.serving.ports import PortUnavailable
from tests.serving.conftest import free_port, model_server_for
from tests.serving.gateway_support import ImageSite
from tests.serving.images import encode, exif_rotated_jpeg
from tests.serving.model_factory import reference_logits


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model_server(exported_model, tmp_path_factory):
    with model_server_for(exported_model, tmp_path_factory.mktemp("gw-store"), "cifar") as server:
        yield server


def start_gateway(model_server, **overrides) -> Gateway:
    config = dict(
        backend=f"127.0.0.1:{model_server.grpc_port}",
        host="127.0.0.1",
        port=0,
        grpc_port=0,
        model_name="cifar",
        max_image_bytes=1024 * 1024,
        max_pixels=4_000_000,
    )
    config.update(overrides)
    return Gateway(GatewayConfig(**config)).start()


@pytest.fixture(scope="module")
def site():
    s = ImageSite()
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(model_server, site):
    gw = start_gateway(
        model_server, allowed_url_hosts=("127.0.0.1",), allow_private_urls=True, url_timeout_s=1.0
    )
    yield gw
    gw.stop(1)


@pytest.fixture(scope="module")
def base(gateway):
    return f"http://127.0.0.1:{gateway.port}"


def classify_file(
    base: str, data: bytes, name: str = "image", top_k: int | None = None, **kwargs
) -> requests.Response:
    fields = {"top_k": (None, str(top_k))} if top_k else {}
    return requests.post(
        f"{base}/v1/classify", files={"file": (name, data), **fields}, timeout=10, **kwargs
    )


def top_probabilities(response: requests.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {p["class"]: p["probability"] for p in response.json()["predictions"]}


def test_real_images_as_png_and_jpeg_at_several_sizes(base, cifar):
    pixels, _ = cifar
    expected = softmax(reference_logits(pixels[:12]))
    for i in range(12):  # lossless 32x32 PNG: exactly the model's answer
        body = classify_file(base, encode(pixels[i], "PNG"), top_k=20).json()
        assert body["model"] == "cifar" and body["version"] == 1
        got = np.array(
            [
                dict((p["class"], p["probability"]) for p in body["predictions"])[c]
                for c in COARSE_CLASS_NAMES
            ]
        )
        np.testing.assert_allclose(got, expected[i], atol=1e-5)
    image = pixels[20]
    reference = softmax(reference_logits(image[None]))[0]
    for fmt, size in [("JPEG", 32), ("JPEG", 96), ("JPEG", 500), ("PNG", 128), ("PNG", 300)]:
        predictions = classify_file(
            base, encode(image, fmt, size, **({"quality": 95} if fmt == "JPEG" else {}))
        ).json()["predictions"]
        assert len(predictions) == 5
        assert [p["probability"] for p in predictions] == sorted(
            (p["probability"] for p in predictions), reverse=True
        )
        assert predictions[0]["class"] == COARSE_CLASS_NAMES[int(np.argmax(reference))], (fmt, size)


def test_json_base64_and_raw_body(base, cifar):
    data = encode(cifar[0][1], "PNG")
    response = requests.post(
        f"{base}/v1/classify",
        json={"image_b64": base64.b64encode(data).decode(), "top_k": 3},
        timeout=10,
    )
    assert response.status_code == 200 and len(response.json()["predictions"]) == 3
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert (
        requests.post(f"{base}/v1/classify", json={"image_b64": data_url}, timeout=10).json()
        == requests.post(
            f"{base}/v1/classify?top_k=5",
            data=data,
            headers={"Content-Type": "image/png"},
            timeout=10,
        ).json()
    )


def test_grayscale_rgba_palette_and_exif_rotation_are_handled(base, cifar):
    pixels = cifar[0][7]

    def expect(rgb: np.ndarray) -> np.ndarray:
        return softmax(reference_logits(rgb[None]))[0]

    def served(data: bytes) -> np.ndarray:
        predictions = classify_file(base, data, top_k=20).json()["predictions"]
        lookup = {p["class"]: p["probability"] for p in predictions}
        return np.array([lookup[c] for c in COARSE_CLASS_NAMES])

    gray = np.array(Image.fromarray(pixels).convert("L"))
    np.testing.assert_allclose(
        served(encode(pixels, "PNG", mode="L")), expect(np.stack([gray] * 3, -1)), atol=1e-5
    )

    rgba = np.dstack([pixels, np.full((32, 32), 255, np.uint8)])
    rgba[:, :16, 3] = 0  # left half transparent (black underneath): must become white, not black
    rgba[:, :16, :3] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    on_white = pixels.copy()
    on_white[:, :16] = 255
    np.testing.assert_allclose(served(buffer.getvalue()), expect(on_white), atol=1e-5)

    palette = Image.fromarray(pixels).quantize(64)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    np.testing.assert_allclose(
        served(buffer.getvalue()), expect(np.array(palette.convert("RGB"))), atol=1e-5
    )

    wide = gray.astype(np.uint16) * 257  # the same picture as a 16-bit grayscale PNG
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, "PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    np.testing.assert_allclose(
        served(buffer.getvalue()), expect(np.stack([gray] * 3, -1)), atol=1e-5
    )

    gif = io.BytesIO()
    palette.save(gif, "GIF")
    np.testing.assert_allclose(
        served(gif.getvalue()), expect(np.array(palette.convert("RGB"))), atol=1e-5
    )

    upright = served(encode(pixels, "JPEG", 64, quality=95))
    rotated = served(exif_rotated_jpeg(pixels, 64))
    # What a decoder that ignores EXIF (TensorFlow's) would answer: the image on its side.
    sideways = expect(np.array(Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)))
    assert np.abs(rotated - upright).max() < 0.02
    assert np.abs(rotated - upright).max() < np.abs(sideways - upright).max() / 2


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    return buffer.getvalue()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buffer, "PNG")  # 12 MP of zeros: a few KB on the wire
    return buffer.getvalue()


def _truncated(cifar_pixels) -> bytes:
    data = encode(cifar_pixels, "JPEG", 200)
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("empty-file", lambda p: {"files": {"file": ("x.png", b"")}}, 400, "empty image"),
    (
        "not-an-image",
        lambda p: {"files": {"file": ("x.png", b"hello, this is text")}},
        400,
        "not an image",
    ),
    ("truncated", lambda p: {"files": {"file": ("x.jpg", _truncated(p))}}, 400, "truncated"),
    (
        "unsupported-format",
        lambda p: {"files": {"file": ("x.tiff", _tiff())}},
        415,
        "unsupported image format TIFF",
    ),
    (
        "too-many-bytes",
        lambda p: {
            "data": b"\x89PNG" + b"\0" * (1024 * 1024 + 10),
            "headers": {"Content-Type": "image/png"},
        },
        413,
        "limit",
    ),
    (
        "body-over-limit",
        lambda p: {"data": b"\0" * (3 * 1024 * 1024), "headers": {"Content-Type": "image/png"}},
        413,
        "request body",
    ),
    ("too-many-pixels", lambda p: {"files": {"file": ("bomb.png", _bomb())}}, 413, "pixels"),
    (
        "wrong-content-type",
        lambda p: {"data": b"abc", "headers": {"Content-Type": "text/plain"}},
        415,
        "Content-Type",
    ),
    ("no-content-type", lambda p: {"data": b"abc"}, 415, "Content-Type"),
    (
        "malformed-json",
        lambda p: {"data": b'{"image_b64": ', "headers": {"Content-Type": "application/json"}},
        400,
        "malformed JSON",
    ),
    ("json-not-object", lambda p: {"json": ["x"]}, 400, "object"),
    ("json-no-image", lambda p: {"json": {"top_k": 3}}, 400, "image_b64"),
    ("malformed-base64", lambda p: {"json": {"image_b64": "not base64!!"}}, 400, "base64"),
    ("base64-not-string", lambda p: {"json": {"image_b64": 12}}, 400, "base64 string"),
    (
        "bad-top-k",
        lambda p: {"json": {"image_b64": base64.b64encode(encode(p, "PNG")).decode(), "top_k": 50}},
        400,
        "top_k",
    ),
    (
        "top-k-not-int",
        lambda p: {
            "json": {"image_b64": base64.b64encode(encode(p, "PNG")).decode(), "top_k": "many"}
        },
        400,
        "top_k",
    ),
    ("multipart-without-file", lambda p: {"files": {"other": ("x.png", b"abc")}}, 400, "'file'"),
    (
        "multipart-without-boundary",
        lambda p: {"data": b"--x--", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "boundary",
    ),
]


@pytest.mark.parametrize(
    "make, status, message", [b[1:] for b in BAD_UPLOADS], ids=[b[0] for b in BAD_UPLOADS]
)
def test_bad_input_is_a_4xx_with_a_message(base, cifar, make, status, message):
    response = requests.post(f"{base}/v1/classify", timeout=10, **make(cifar[0][0]))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_routing_errors(base):
    assert requests.get(f"{base}/v1/classify", timeout=5).status_code == 405
    missing = requests.get(f"{base}/nope", timeout=5)
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]


def test_predict_url_contract_and_its_limits(base, site, cifar, model_server):
    png = encode(cifar[0][2], "PNG")
    site.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, png)
    site.routes["/huge.png"] = (200, {"Content-Type": "image/png"}, b"\0" * (1024 * 1024 + 1))
    site.routes["/away"] = (302, {"Location": "http://example.invalid/x.png"}, b"")
    site.routes["/hop"] = (302, {"Location": "/cat.png"}, b"")
    scores = requests.post(f"{base}/predict", json={"url": site.url("/cat.png")}, timeout=10)
    assert scores.status_code == 200, scores.text
    body = scores.json()
    assert set(body) == set(COARSE_CLASS_NAMES) and abs(sum(body.values()) - 1) < 1e-4
    expected = softmax(reference_logits(cifar[0][2:3]))[0]
    np.testing.assert_allclose([body[c] for c in COARSE_CLASS_NAMES], expected, atol=1e-5)
    assert (
        requests.post(f"{base}/predict", json={"url": site.url("/hop")}, timeout=10).json() == body
    )

    def refused(url, status, message, **kwargs):
        response = requests.post(f"{base}/predict", json={"url": url}, timeout=10, **kwargs)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]

    refused(site.url("/cat.png", host="localhost"), 403, "allow-list")
    refused(site.url("/away"), 403, "allow-list")  # a redirect off the list
    refused(site.url("/huge.png"), 413, "limit")
    refused(site.url("/slow"), 504, "longer than")
    refused(site.url("/missing.png"), 400, "404")
    refused("file:///etc/passwd", 400, "only http and https")
    refused("http://user:pw@127.0.0.1/x.png", 400, "credentials")
    response = requests.post(
        f"{base}/predict", data="url=x", headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert response.status_code == 415

    strict = start_gateway(model_server, allowed_url_hosts=("127.0.0.1", "localhost"))
    closed = start_gateway(model_server)
    try:
        for gw, url, message in [
            (strict, site.url("/cat.png"), "loopback"),
            (strict, site.url("/cat.png", host="localhost"), "loopback"),
            (closed, site.url("/cat.png"), "disabled"),
        ]:
            response = requests.post(
                f"http://127.0.0.1:{gw.port}/predict", json={"url": url}, timeout=10
            )
            assert response.status_code == 403 and message in response.json()["error"], (
                response.text
            )
    finally:
        strict.stop(1)
        closed.stop(1)


def test_url_policy_refuses_private_addresses():
    from cifarflow.serving.gateway.url_fetch import _refused_address

    assert _refused_address("10.1.2.3") == "private"
    assert _refused_address("169.254.169.254") == "link-local"
    assert _refused_address("::1") == "loopback"
    assert _refused_address("::ffff:127.0.0.1") == "loopback"
    assert _refused_address("8.8.8.8") is None


def test_health_ready_metrics_and_request_ids(base, cifar, caplog):
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["version"] == 1
    with caplog.at_level(logging.INFO, logger="cifarflow.gateway.access"):
        response = classify_file(
            base, encode(cifar[0][0], "PNG"), headers={"X-Request-ID": "trace-123"}
        )
        classify_file(base, b"junk")
    assert response.headers["X-Request-ID"] == "trace-123"
    assert len(requests.get(f"{base}/healthz", timeout=5).headers["X-Request-ID"]) == 32
    lines = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "cifarflow.gateway.access"
    ]
    traced = [line for line in lines if line["request_id"] == "trace-123"]
    assert (
        len(traced) == 1
        and {"status": 200, "path": "/v1/classify", "protocol": "http"}.items() <= traced[0].items()
    )
    assert any(line["status"] == 400 and len(line["request_id"]) == 32 for line in lines)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert (
        'cifarflow_gateway_requests_total{code="200",endpoint="/v1/classify",protocol="http"}'
        in metrics
    )
    assert 'cifarflow_gateway_errors_total{cause="invalid_input"}' in metrics
    assert (
        "cifarflow_gateway_request_seconds_bucket" in metrics
        and "cifarflow_gateway_batch_images_count" in metrics
    )
    assert "cifarflow_gateway_backend_seconds_count" in metrics
    assert "cifarflow_gateway_in_flight 0.0" in metrics


def test_backend_down_is_503_with_retry_after_and_deadlines_apply(model_server, base, cifar):
    down = start_gateway(model_server, backend=f"127.0.0.1:{free_port()}", backend_timeout_s=1.0)
    try:
        url = f"http://127.0.0.1:{down.port}"
        response = classify_file(url, encode(cifar[0][0], "PNG"))
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "unavailable" in response.json()["error"]
        ready = requests.get(f"{url}/readyz", timeout=5)
        assert ready.status_code == 503 and "Retry-After" in ready.headers
    finally:
        down.stop(1)
    late = classify_file(
        base, encode(cifar[0][0], "PNG", 400), headers={"X-Request-Timeout": "0.0005"}
    )
    assert late.status_code == 504, late.text


def test_bearer_token_auth(model_server, cifar):
    gw = start_gateway(model_server, token="s3cret-token")
    url = f"http://127.0.0.1:{gw.port}"
    data = encode(cifar[0][0], "PNG")
    try:
        missing = classify_file(url, data)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith(
            "Bearer"
        )
        assert (
            classify_file(url, data, headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert (
            classify_file(url, data, headers={"Authorization": "Bearer s3cret-token"}).status_code
            == 200
        )
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/v1/info", timeout=5).json()["auth"] is True
        channel = grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}")
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(classifier_pb2.ClassifyRequest(image=data), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Classify(
            classifier_pb2.ClassifyRequest(image=data),
            timeout=5,
            metadata=(("authorization", "Bearer s3cret-token"),),
        )
        assert ok.version == 1
        channel.close()
    finally:
        gw.stop(1)


def test_gateway_grpc_service(gateway, cifar):
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    pixels = cifar[0]
    response, call = stub.Classify.with_call(
        classifier_pb2.ClassifyRequest(image=encode(pixels[4], "JPEG", 128), top_k=3),
        timeout=5,
        metadata=(("x-request-id", "grpc-1"),),
    )
    assert response.model == "cifar" and response.version == 1 and len(response.predictions) == 3
    assert (
        response.request_id == "grpc-1"
        and dict(call.trailing_metadata())["x-request-id"] == "grpc-1"
    )
    batch = stub.ClassifyBatch(
        classifier_pb2.ClassifyBatchRequest(images=[encode(p, "PNG") for p in pixels[:8]], top_k=1),
        timeout=5,
    )
    assert [r.predictions[0].class_id for r in batch.results] == list(
        np.argmax(reference_logits(pixels[:8]), axis=1)
    )
    for request, code, message in [
        (
            classifier_pb2.ClassifyRequest(image=b"junk"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not an image",
        ),
        (classifier_pb2.ClassifyRequest(), grpc.StatusCode.INVALID_ARGUMENT, "set 'image'"),
        (classifier_pb2.ClassifyRequest(image=_tiff()), grpc.StatusCode.INVALID_ARGUMENT, "TIFF"),
        (
            classifier_pb2.ClassifyRequest(image=encode(pixels[0], "PNG"), top_k=99),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=5)
        assert info.value.code() == code and message in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(images=[encode(pixels[0], "PNG"), b"junk"]),
            timeout=5,
        )
    assert "image 1" in info.value.details()
    channel.close()


def test_graceful_shutdown_finishes_in_flight_requests(model_server, cifar):
    gw = start_gateway(model_server)
    real = gw.backend.classify
    entered = threading.Event()

    async def slow_classify(*args, **kwargs):  # the backend client is asynchronous
        entered.set()
        await asyncio.sleep(0.6)  # a request that is still running when the stop comes
        return await real(*args, **kwargs)

    gw.backend.classify = slow_classify
    url = f"http://127.0.0.1:{gw.port}"
    results = {}
    worker = threading.Thread(
        target=lambda: results.update(r=classify_file(url, encode(cifar[0][0], "PNG")))
    )
    worker.start()
    assert entered.wait(10)
    assert gw.stop(grace_s=5) is True
    worker.join()
    assert results["r"].status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_a_grpc_port_in_use_stops_the_http_server_it_had_started():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = Gateway(
            GatewayConfig(
                backend=f"127.0.0.1:{free_port()}", host="127.0.0.1", port=0, grpc_port=port
            )
        )
        http_port = gateway.port
        with pytest.raises(PortUnavailable, match=f"cannot bind gRPC to 127.0.0.1:{port}"):
            gateway.start()
    assert not [t for t in threading.enumerate() if t.name == f"http-{http_port}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", http_port), timeout=5).close()

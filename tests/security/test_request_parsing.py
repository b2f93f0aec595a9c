"""Property tests of request parsing: the gateway's multipart/JSON/raw bodies and headers, and the
model server's tensors (gRPC TensorProto and REST JSON). Anything a client sends ends as a result or a
4xx ServingError, quickly; never a 500, never an allocation the request did not pay for in bytes.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from http.client import parse_headers

import grpc
import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarflow.serving.errors import ServingError
from cifarflow.serving.gateway.inputs import RawRequest
from cifarflow.serving.gateway.inputs import request_deadline as _deadline
from cifarflow.serving.gateway.multipart_form import MAX_PARTS as MAX_MULTIPART_PARTS
from cifarflow.serving.gateway.rest import GatewayApi
from tests.security.conftest import MODEL
from tests.serving.images import cifar_test_images, encode

QUICK_S = 1.5
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _request(header_lines: list[str], body: bytes, query: dict | None = None) -> RawRequest:
    raw = "".join(f"{line}\r\n" for line in header_lines).encode("latin-1") + b"\r\n"
    return RawRequest(parse_headers(io.BytesIO(raw)), query or {}, body)


def parse(api: GatewayApi, request: RawRequest):
    """classify_input + the deadline header, asserting only quick 4xx ServingErrors come out."""
    started = time.monotonic()
    try:
        data, top_k = api.classify_input(request)
        _deadline(request)
        assert isinstance(data, bytes) and 1 <= top_k <= 20
    except ServingError as exc:
        assert 400 <= exc.http_status < 500, exc
    assert time.monotonic() - started < QUICK_S


PNG = encode(cifar_test_images()[0][0], "PNG")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TOP_K = JSON_VALUES | st.sampled_from(
    [0, 1, 20, 21, -1, 3.0, 3.5, True, "7", "", 10**30, float("inf"), float("nan")]
)
CONTENT_TYPES = st.sampled_from(
    [
        "multipart/form-data; boundary=B",
        'multipart/form-data; boundary="B"',
        "Multipart/Form-Data; BOUNDARY=B",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=B;a*",
        "multipart/mixed; boundary=B",
        "application/json",
        "application/json; charset=utf-16",
        "APPLICATION/JSON",
        "image/png",
        "image/x-whatever",
        "text/plain",
        "",
        "; ;",
        "application/json;;;boundary=B",
    ]
) | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@FUZZ
@given(
    body=JSON_VALUES,
    top_k=TOP_K,
    image=st.sampled_from([PNG, b"", b"junk"]) | st.binary(max_size=64),
    as_data_url=st.booleans(),
    timeout=st.none() | st.sampled_from(["1", "0", "-1", "nan", "inf", "1e309", "x", " 2 "]),
)
def test_json_bodies(api, body, top_k, image, as_data_url, timeout):
    if isinstance(body, dict):
        encoded = base64.b64encode(image).decode()
        body = {
            **body,
            "image_b64": ("data:image/png;base64," + encoded) if as_data_url else encoded,
            "top_k": top_k,
        }
    headers = ["Content-Type: application/json"] + (
        [f"X-Request-Timeout: {timeout}"] if timeout is not None else []
    )
    parse(api, _request(headers, json.dumps(body).encode()))


@st.composite
def multipart_bodies(draw) -> tuple[str, bytes]:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["file", "top_k", "other", "", 'fi"le', "file\\"]))
        headers = [
            f'Content-Disposition: form-data; name="{name}"'
            + draw(st.sampled_from(["", '; filename="a.png"', "; name*=utf-8''%ff"]))
        ]
        headers += draw(
            st.lists(
                st.sampled_from(
                    [
                        "Content-Transfer-Encoding: base64",
                        "Content-Transfer-Encoding: quoted-printable",
                        "Content-Type: multipart/mixed; boundary=C",
                        "Content-Type: image/png",
                        "X-\u00ff: \u00ff",
                    ]
                ),
                max_size=2,
            )
        )
        payload = draw(
            st.sampled_from([PNG, b"3", b"=ZZ", b"--B", b"\r\n--C\r\n"]) | st.binary(max_size=32)
        )
        parts.append("\r\n".join(headers).encode("latin-1") + b"\r\n\r\n" + payload)
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + draw(
        st.sampled_from([b"--B--\r\n", b"", b"--B"])
    )
    cut = draw(st.integers(0, len(body)))
    return draw(CONTENT_TYPES), body[:cut] if draw(st.booleans()) else body


@FUZZ
@given(multipart_bodies())
def test_multipart_bodies_and_content_types(api, content_type_and_body):
    content_type, body = content_type_and_body
    parse(api, _request([f"Content-Type: {content_type}"], body))


def test_many_tiny_parts_are_refused_at_the_first_part_too_many(api):
    body = (
        b"".join(
            b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
            for i in range(100_000)
        )
        + b"--B--\r\n"
    )
    started = time.monotonic()
    with pytest.raises(ServingError, match=f"more than {MAX_MULTIPART_PARTS} parts"):
        api.classify_input(_request(["Content-Type: multipart/form-data; boundary=B"], body))
    assert (
        time.monotonic() - started < 0.5
    )  # the email parser the gateway once used took ~10 s for this


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
                min_size=1,
                max_size=12,
            ),
            st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
        ),
        max_size=6,
    ),
    st.binary(max_size=64),
)
def test_arbitrary_headers(api, headers, body):
    parse(api, _request([f"{name}: {value}" for name, value in headers], body))


# -- the real gateway: what reaches it over a socket ------------------------------------------


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    content_type=CONTENT_TYPES,
    length=st.sampled_from(["", "0", "-1", "abc", "99999999999999999999", "5, 5"]),
    extra=st.lists(
        st.sampled_from(
            [
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: gzip",
                "Content-Type: image/png",
                "Expect: 100-continue",
                "X-Request-ID: " + "\u00ff" * 80,
                "Authorization: Bearer \u00ff",
                "Content-Length: 3",
            ]
        ),
        max_size=3,
    ),
    body=st.binary(max_size=64),
)
def test_the_gateway_process_answers_hostile_headers_without_a_5xx(
    stack, content_type, length, extra, body
):
    lines = [
        "POST /v1/classify HTTP/1.1",
        "Host: x",
        f"Content-Type: {content_type}",
        f"Authorization: Bearer {stack.token}",
        *([f"Content-Length: {length}"] if length else []),
        *extra,
        "Connection: close",
    ]
    answer = _raw(
        int(stack.url.rsplit(":", 1)[1]), "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body
    )
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None
    assert status is None or status < 500, answer[:300]


def test_deeply_nested_json_is_a_400_on_the_gateway_and_the_model_server(stack):
    deep = b"[" * 200_000 + b"]" * 200_000
    gateway = requests.post(
        f"{stack.url}/v1/classify",
        data=deep,
        headers={**stack.auth, "Content-Type": "application/json"},
        timeout=30,
    )
    assert gateway.status_code == 400 and "malformed JSON" in gateway.json()["error"]
    model = requests.post(f"{stack.model_rest}/v1/models/{MODEL}:predict", data=deep, timeout=30)
    assert model.status_code == 400, model.text


# -- the model server's tensors -------------------------------------------------------------

DTYPES = [1, 2, 3, 4, 5, 6, 7, 9, 10, 17, 19, 22, 23, 0, 8, 99]
DIMS = st.integers(0, 4) | st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1])


@st.composite
def tensor_protos(draw):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    for size in draw(st.lists(DIMS, max_size=draw(st.sampled_from([4, 70])))):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    source = draw(st.sampled_from(["content", "values", "none"]))
    if source == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif source == "values":
        ints = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6)
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=6)))
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6)))
        proto.int64_val.extend(draw(ints))
        proto.half_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)))
        proto.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
        proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=3)))
    return proto


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor_protos())
def test_any_tensor_proto_decodes_or_is_a_4xx(proto):
    from cifarflow.serving.tensors import from_tensor_proto

    try:
        array = from_tensor_proto(proto, "x")
    except ServingError as exc:
        assert 400 <= exc.http_status < 500, exc
        return
    assert isinstance(array, np.ndarray) and array.nbytes <= 64 * 1024 * 1024


def test_a_broadcast_bomb_does_not_grow_the_model_server(stack):
    """One uint8 value asked to fill [200000, 32, 32, 3] (614 MB), sent to the real model server over gRPC."""
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    bomb = tensor_pb2.TensorProto(dtype=4, int_val=[7])
    for size in (200_000, 32, 32, 3):
        bomb.tensor_shape.dim.add(size=size)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "predict_pixels"
    request.inputs["images"].CopyFrom(bomb)
    server = psutil.Process(stack.model.process.pid)
    before = server.memory_info().rss
    with grpc.insecure_channel(stack.model_grpc) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert refused.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ), refused.value
    assert server.memory_info().rss - before < 100 * 1024 * 1024


REST_KEYS = st.sampled_from(
    ["instances", "inputs", "signature_name", "images", "image_bytes", "b64"]
) | st.text(max_size=6)
REST_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.sampled_from([PNG, b"junk"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(REST_KEYS, inner, max_size=3),
    max_leaves=20,
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=st.dictionaries(REST_KEYS, REST_VALUES, max_size=3),
    signature=st.sampled_from([None, "predict_pixels", "serving_default", "nope"]),
)
def test_the_model_server_rest_api_answers_any_json_without_a_5xx(stack, body, signature):
    if signature:
        body = {**body, "signature_name": signature}
    # json.dumps writes Infinity, which is not JSON but which Python's parser on the server takes.
    response = requests.post(
        f"{stack.model_rest}/v1/models/{MODEL}:predict",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code in (200, 400, 404, 413), (
        body,
        response.status_code,
        response.text[:300],
    )

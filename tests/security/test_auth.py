"""Auth on: every endpoint but the public ones refuses a missing or wrong token, on REST and gRPC."""

from __future__ import annotations

import base64
import hmac
from unittest import mock

import grpc
import pytest
import requests

from cifarflow.serving.errors import Unauthenticated
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.rest import PUBLIC, openapi_description
from tests.serving.images import cifar_test_images, encode


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, public) for every operation the OpenAPI description lists."""
    spec = openapi_description()
    return [
        (method.upper(), path, op.get("security", spec["security"]) == [])
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def _png() -> bytes:
    return encode(cifar_test_images()[0][0], "PNG")


def _valid_request(method: str, path: str) -> dict:
    if path == "/predict":
        return {"json": {"url": "http://127.0.0.1:9/x.png"}}
    if path == "/v1/classify":
        return {"json": {"image_b64": base64.b64encode(_png()).decode()}}
    return {}


BAD_CREDENTIALS = {
    "missing": None,
    "empty": "",
    "scheme-only": "Bearer",
    "wrong": "Bearer wrong-token",
    "prefix": "Bearer {token_prefix}",
    "longer": "Bearer {token}x",
    "wrong-scheme": "Basic {token}",
    "no-scheme": "{token}",
    "two-tokens": "Bearer wrong {token}",
}


def _header(template: str | None, token: str) -> dict[str, str]:
    if template is None:
        return {}
    return {"Authorization": template.format(token=token, token_prefix=token[:-1])}


@pytest.mark.timeout(60)
def test_every_protected_rest_endpoint_refuses_bad_credentials_and_public_ones_do_not(stack):
    operations = _operations()
    assert {path for _, path, public in operations if public} == {
        p for p in PUBLIC if p != "/favicon.ico"
    }
    protected = [(m, p) for m, p, public in operations if not public]
    assert protected, "the description lists no protected endpoint"
    for method, path in protected:
        for name, template in BAD_CREDENTIALS.items():
            response = requests.request(
                method,
                stack.url + path,
                headers=_header(template, stack.token),
                timeout=10,
                **_valid_request(method, path),
            )
            assert response.status_code == 401, (method, path, name, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert stack.token not in response.text
        # The right token gets past auth: whatever the answer is, it is not 401.
        good = requests.request(
            method, stack.url + path, headers=stack.auth, timeout=10, **_valid_request(method, path)
        )
        assert good.status_code != 401, (method, path, good.text)
    for method, path, public in operations:
        if public:
            response = requests.request(method, stack.url + path, timeout=10)
            assert response.status_code == 200, (method, path, response.text)


@pytest.mark.timeout(60)
def test_grpc_refuses_missing_and_wrong_tokens_with_unauthenticated(stack):
    image = _png()
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        calls = [
            (stub.Classify, classifier_pb2.ClassifyRequest(image=image)),
            (stub.ClassifyBatch, classifier_pb2.ClassifyBatchRequest(images=[image])),
        ]
        for call, request in calls:
            for name, template in BAD_CREDENTIALS.items():
                metadata = tuple((k.lower(), v) for k, v in _header(template, stack.token).items())
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=10, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (call, name)
                assert stack.token not in (refused.value.details() or "")
            assert (
                call(request, timeout=10, metadata=(("authorization", f"Bearer {stack.token}"),))
                is not None
            )


def test_token_comparison_is_constant_time():
    """Every candidate, right or wrong, any length, goes through hmac.compare_digest on the whole token."""
    token = "s3cret-" + "x" * 40
    auth = BearerAuth(token)
    candidates = [
        token[:-1] + "y",
        "s" + "z" * 46,
        token[:5],
        token + "tail",
        "",
        "\u00e9" * 10,
        token,
    ]
    with mock.patch(
        "cifarflow.serving.gateway.auth.hmac.compare_digest", wraps=hmac.compare_digest
    ) as compare:
        for candidate in candidates:
            try:
                auth.check(f"Bearer {candidate}")
            except Unauthenticated:  # only the refusal is expected; anything else is a bug
                pass
    compared = [call.args for call in compare.call_args_list]
    assert len(compared) == len(candidates)
    for (supplied, expected), candidate in zip(compared, candidates, strict=True):
        assert expected == token.encode() and isinstance(supplied, bytes)
        assert supplied == candidate.encode()

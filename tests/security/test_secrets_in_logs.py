"""Tokens and S3 keys never reach a log: every process of the stack runs at DEBUG with a distinctive
token and S3 credentials, gets good and bad requests (near-miss tokens, the token where it does not
belong, wrong S3 keys), and everything it printed is searched for the secrets.
"""

from __future__ import annotations

import secrets

import grpc
import requests

from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from tests.security.conftest import MODEL
from tests.serving.images import cifar_test_images, encode


def _fragments(secret: str) -> set[str]:
    """The secret and its halves: a log that prints part of a key leaks it too."""
    half = len(secret) // 2
    return {secret, secret[:half], secret[half:]}


def _bad_and_good_requests(stack) -> None:
    png = encode(cifar_test_images()[0][0], "PNG")
    token = stack.token
    for header in (
        f"Bearer {token[:-1]}",
        f"Bearer {token}x",
        f"Basic {token}",
        token,
        f"Bearer  {token[::-1]}",
        None,
    ):
        requests.post(
            f"{stack.url}/v1/classify",
            files={"file": ("x.png", png)},
            timeout=10,
            headers={"Authorization": header} if header else {},
        )
    # The token where it does not belong: the query string, the path, a URL to fetch, a bad image.
    requests.post(
        f"{stack.url}/v1/classify?token={token}", files={"file": ("x.png", png)}, timeout=10
    )
    requests.get(f"{stack.url}/v1/{token}", headers=stack.auth, timeout=10)
    requests.post(
        f"{stack.url}/predict",
        json={"url": f"http://127.0.0.1:9/{token}.png"},
        headers=stack.auth,
        timeout=10,
    )
    requests.post(
        f"{stack.url}/predict",
        json={"url": f"http://{token}.invalid/x.png"},
        headers=stack.auth,
        timeout=10,
    )
    requests.post(
        f"{stack.url}/v1/classify",
        data=token.encode(),
        headers={**stack.auth, "Content-Type": "image/png"},
        timeout=10,
    )
    assert requests.post(
        f"{stack.url}/v1/classify", files={"file": ("x.png", png)}, headers=stack.auth, timeout=10
    ).ok
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for metadata in (
            (("authorization", f"Bearer {token}x"),),
            (("authorization", f"Bearer {token}"),),
        ):
            try:
                stub.Classify(
                    classifier_pb2.ClassifyRequest(image=png), timeout=10, metadata=metadata
                )
            except grpc.RpcError:
                pass
    # The model server's own REST API, the token and a key in the path and body.
    requests.post(
        f"{stack.model_rest}/v1/models/{MODEL}:predict", json={"instances": [token]}, timeout=10
    )
    requests.get(f"{stack.model_rest}/v1/models/{stack.s3_env['S3_SECRET_KEY']}", timeout=10)


def test_no_token_or_s3_key_in_any_log(stack, tmp_path):
    _bad_and_good_requests(stack)
    wrong_secret = "wrong-" + secrets.token_hex(16)
    wrong_access = "AKwrong" + secrets.token_hex(8)
    debug = ["serve", "--log-level", "DEBUG"]
    code, output = stack.run(
        "sync-ok",
        [*debug, "sync", "--from", stack.store, "--to", str(tmp_path / "mirror")],
        stack.s3_env,
    )
    assert code == 0 and f"added {MODEL}/1" in output, output
    code, output = stack.run(
        "sync-wrong-secret",
        [*debug, "sync", "--from", stack.store, "--to", str(tmp_path / "m2")],
        {**stack.s3_env, "S3_SECRET_KEY": wrong_secret},
    )
    assert code != 0 and "credentials" in output, output  # it fails, and says why
    code, output = stack.run(
        "publish-wrong-access-key",
        [
            "--debug",
            "publish",
            "--model",
            str(stack.export),
            "--store",
            stack.store,
            "--model-name",
            MODEL,
        ],
        {**stack.s3_env, "S3_ACCESS_KEY": wrong_access},
    )
    assert code != 0, output
    code, output = stack.run(
        "models-list",
        ["models", "list", "--store", stack.store, "--model-name", MODEL],
        stack.s3_env,
    )
    assert code == 0, output

    logs = {path.name: path.read_text(errors="replace") for path in stack.logs.glob("*.log")}
    assert {
        "gateway.log",
        "model.log",
        "publish.log",
        "sync-ok.log",
        "sync-wrong-secret.log",
    } <= set(logs)
    assert '"status": 401' in logs["gateway.log"], (
        "the bad requests never reached the gateway's log"
    )
    secret_values = {
        "gateway token": stack.token,
        "S3 access key": stack.s3_env["S3_ACCESS_KEY"],
        "S3 secret key": stack.s3_env["S3_SECRET_KEY"],
        "wrong S3 secret": wrong_secret,
        "wrong S3 access key": wrong_access,
    }
    leaks = [
        (what, name)
        for what, value in secret_values.items()
        for name, text in logs.items()
        if any(fragment in text for fragment in _fragments(value))
    ]
    assert not leaks, leaks

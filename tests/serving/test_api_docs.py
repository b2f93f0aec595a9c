"""The gateway's /docs page works without internet: every file it references is served by the gateway."""

from __future__ import annotations

import re

import pytest
import requests

from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.server import Gateway
from tests.serving.conftest import free_port

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


@pytest.fixture(scope="module")
def base():
    # The page needs no backend: one that is not there does.
    gateway = Gateway(
        GatewayConfig(backend=f"127.0.0.1:{free_port()}", host="127.0.0.1", port=0, grpc_port=-1)
    ).start()
    try:
        yield f"http://127.0.0.1:{gateway.port}"
    finally:
        gateway.stop(1)


def test_the_docs_page_and_every_file_it_references_come_from_the_gateway(base):
    page = requests.get(f"{base}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "url: '/openapi.json'" in page.text
    assert not re.findall(r"https?://", page.text), "the page still names an outside address"
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {path.rsplit(".", 1)[1] for path in referenced} == {"js", "css", "png"}
    for path in referenced:
        assert path.startswith("/docs/assets/"), path
        answer = requests.get(base + path, timeout=10)
        media_type = answer.headers["Content-Type"].split(";")[0]
        assert answer.status_code == 200 and len(answer.content) > 1000, path
        assert media_type in CONTENT_TYPES["." + path.rsplit(".", 1)[1]], (path, media_type)
    spec = requests.get(f"{base}/openapi.json", timeout=10).json()
    # Swagger UI 5 renders 3.1 (the 4.x of swagger-ui-bundle does not).
    assert spec["openapi"].startswith("3.1")
    bundle = requests.get(f"{base}/docs/assets/swagger-ui-bundle.js", timeout=10).text
    assert "openapi: 3.1.x" in bundle
    assert requests.get(f"{base}/docs/assets/nope.js", timeout=10).status_code == 404

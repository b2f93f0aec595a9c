"""The web page's explanation: the saliency map drawn as a heat map over the dropped picture.

On the trainer's real export (it has the `explain` signature) and a real
CIFAR-100 test image, in the system's headless Chromium.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.server import Gateway
from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
from cifarflow.serving.store import publish_model
from tests.serving.browser import Browser, find_chromium
from tests.serving.images import encode
from tests.serving.test_web_page import screenshot_dir
from tests.serving.web_page_scripts import DROP_FILE, HEATMAP

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def page(explainable_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("web-explain-store")
    publish_model(explainable_model, store, "cifar", {})
    server = ModelServer(
        ModelServerConfig(str(store), "cifar", host="127.0.0.1", grpc_port=0, rest_port=-1)
    ).start()
    gateway = Gateway(
        GatewayConfig(
            backend=f"127.0.0.1:{server.grpc_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=-1,
            model_name="cifar",
        )
    ).start()
    browser = Browser(CHROMIUM)
    try:
        browser.navigate(f"http://127.0.0.1:{gateway.port}/")
        yield browser
    finally:
        browser.close()
        gateway.stop(1)
        server.stop()


def test_the_heat_map_lies_over_the_picture_and_shows_the_map(page, cifar, tmp_path):
    # A wide photo: the page letterboxes it, and the heat map must cover the picture, not the box.
    photo = encode(cifar[0][42], "PNG", 256)
    buffer = io.BytesIO()
    Image.fromarray(cifar[0][7]).resize((360, 120), Image.BICUBIC).save(buffer, "JPEG", quality=92)
    wide = buffer.getvalue()
    for data, name, kind in ((photo, "photo.png", "image/png"), (wide, "wide.jpg", "image/jpeg")):
        page.evaluate(DROP_FILE % (base64.b64encode(data).decode(), name, kind))
        heatmap = page.wait_for(f"(() => {{ const h = {HEATMAP}; return h.shown ? h : null; }})()")
        picture = heatmap["picture"]
        for side in ("left", "top", "width", "height"):
            assert abs(heatmap["box"][side] - picture[side]) < 1.5, (side, heatmap)
        assert picture["width"] > 100
        # The canvas holds the 32x32 map: transparent where it is 0, opaque at its peak.
        assert (heatmap["size"], heatmap["maxAlpha"]) == ([32, 32], 255)
        assert heatmap["minAlpha"] < heatmap["maxAlpha"]
        assert page.evaluate("document.getElementById('explain-text').textContent").startswith(
            "Show what made the model say "
        )
    assert page.evaluate("getComputedStyle(document.getElementById('error')).display") == "none"
    out = screenshot_dir(tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(out / "web_page_explain.png")
    # The switch hides the heat map.
    page.evaluate("document.getElementById('explain-show').click(); true")
    assert page.evaluate("getComputedStyle(document.getElementById('heatmap')).display") == "none"

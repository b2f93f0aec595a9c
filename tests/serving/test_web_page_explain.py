"""The web page's explanation: the saliency map drawn as a heat map over the dropped picture.

On the trainer's real export (it has the `explain` signature) and a real
CIFAR-100 test image, in the system's headless Chromium.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.serving.images import encode
from tests.serving.web_page_scripts import DROP_FILE, HEATMAP
from tests.serving.web_page_support import needs_chromium, screenshot_dir, web_page_on

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(explainable_model, tmp_path_factory):
    with web_page_on(explainable_model, tmp_path_factory.mktemp("web-explain-store")) as browser:
        yield browser


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

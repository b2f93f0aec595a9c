"""The gateway's web page in headless Chromium: drop an image, see it and the class bars."""

from __future__ import annotations

import base64

import pytest

from tests.serving.gateway_support import ImageSite
from tests.serving.images import encode
from tests.serving.web_page_scripts import BARS, DROP_FILE
from tests.serving.web_page_support import needs_chromium, screenshot_dir, web_page_on

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(exported_model, tmp_path_factory):
    site = ImageSite()
    try:
        with web_page_on(
            exported_model,
            tmp_path_factory.mktemp("web-store"),
            allowed_url_hosts=("127.0.0.1",),
            allow_private_urls=True,
        ) as browser:
            yield browser, site
    finally:
        site.close()


def test_drop_an_image_and_see_top_classes(page, cifar, tmp_path):
    browser, _ = page
    assert browser.evaluate("document.title").startswith("cifarflow")
    photo = encode(cifar[0][42], "JPEG", 256, quality=92)
    browser.evaluate(DROP_FILE % (base64.b64encode(photo).decode(), "photo.jpg", "image/jpeg"))
    # The page sets each bar's width a frame after its text (so the bar animates).
    bars = browser.wait_for(
        f"(() => {{ const b = {BARS}; "
        "return b.length === 5 && b.every((x) => Number.isFinite(x.width)) ? b : null; })()"
    )
    assert [b["pct"] for b in bars] == sorted((b["pct"] for b in bars), reverse=True)
    assert all(0 < b["pct"] <= 100 for b in bars)
    assert abs(bars[0]["width"] - bars[0]["pct"]) < 0.2  # the bar is as long as its probability
    assert (
        browser.evaluate("document.getElementById('meta').textContent") == "model cifar, version 1"
    )
    assert (
        browser.wait_for("document.getElementById('preview').naturalWidth") == 256
    )  # the image is shown
    assert browser.evaluate("getComputedStyle(document.getElementById('error')).display") == "none"
    browser.wait_for(
        "parseFloat(document.querySelector('#bars .fill').style.width) > 0 && "
        "document.querySelector('#bars .fill').getBoundingClientRect().width > 5"
    )
    import time

    time.sleep(0.4)  # let the bar transition finish before the screenshot
    out = screenshot_dir(tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    browser.screenshot(out / "web_page_result.png")
    assert (out / "web_page_result.png").stat().st_size > 10_000


def test_bad_file_shows_the_gateway_message(page, tmp_path):
    browser, _ = page
    browser.evaluate(
        DROP_FILE % (base64.b64encode(b"just some text").decode(), "notes.png", "image/png")
    )
    message = browser.wait_for(
        "document.getElementById('error').style.display === 'block' && document.getElementById('error').textContent"
    )
    assert "not an image" in message
    assert (
        browser.evaluate("document.querySelectorAll('#bars .bar').length") == 0
    )  # no stale classes
    browser.wait_for("document.getElementById('placeholder').textContent.startsWith('No preview')")
    browser.screenshot(screenshot_dir(tmp_path) / "web_page_error.png")


def test_paste_a_url_when_the_gateway_allows_it(page, cifar):
    browser, site = page
    site.routes["/bird.png"] = (200, {"Content-Type": "image/png"}, encode(cifar[0][9], "PNG", 128))
    assert browser.evaluate("!document.getElementById('url-row').classList.contains('hidden')")
    browser.evaluate(
        f"document.getElementById('url').value = {site.url('/bird.png')!r}; "
        "document.getElementById('url-go').click(); true"
    )
    browser.wait_for("document.getElementById('meta').textContent.startsWith('model cifar')")
    assert browser.evaluate("document.querySelectorAll('#bars .bar').length") == 5


def test_a_model_without_explanations_says_so_and_draws_no_heat_map(page, cifar):
    browser, _ = page
    photo = encode(cifar[0][3], "PNG", 96)
    browser.evaluate(DROP_FILE % (base64.b64encode(photo).decode(), "photo.png", "image/png"))
    note = browser.wait_for(
        "document.getElementById('explain-text').textContent.startsWith('No explanation') && "
        "document.getElementById('explain-text').textContent"
    )
    assert "no 'explain' signature" in note
    assert (
        browser.evaluate("getComputedStyle(document.getElementById('heatmap')).display") == "none"
    )
    assert browser.evaluate("getComputedStyle(document.getElementById('error')).display") == "none"
    assert browser.evaluate("document.querySelectorAll('#bars .bar').length") == 5

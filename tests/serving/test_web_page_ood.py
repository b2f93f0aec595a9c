"""The web page says in words when a photo looks unlike anything the model was trained on (headless Chromium)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from cifarflow.ood_scores import energy
from cifarflow.serving.gateway.monitoring.config import MonitorConfig
from tests.serving.browser import Browser
from tests.serving.images import encode
from tests.serving.model_factory import reference_logits
from tests.serving.monitoring_support import model_with_reference
from tests.serving.web_page_scripts import BARS, DROP_FILE
from tests.serving.web_page_support import needs_chromium, web_page_on

pytestmark = needs_chromium
NOTICE = "This photo looks unlike anything the model was trained on"


@pytest.fixture(scope="module")
def page(exported_model, tmp_path_factory):
    model = model_with_reference(exported_model, tmp_path_factory.mktemp("web-ood") / "model")
    store = tmp_path_factory.mktemp("web-ood-store")
    with web_page_on(model, store, monitors=MonitorConfig(store=str(store))) as browser:
        scores = json.loads((model / "reference.json").read_text())["scores"]["scores"]
        yield browser, scores["energy"]["threshold"]


def drop(browser: Browser, image: np.ndarray) -> str:
    """Drops `image` as a PNG, waits for the bars; the notice's text when shown, else ''."""
    browser.evaluate("document.getElementById('bars').textContent = ''")
    data = base64.b64encode(encode(image, "PNG")).decode()
    browser.evaluate(DROP_FILE % (data, "photo.png", "image/png"))
    browser.wait_for(f"{BARS}.length === 5")
    shown = browser.evaluate("getComputedStyle(document.getElementById('ood')).display")
    return browser.evaluate("document.getElementById('ood').textContent") if shown != "none" else ""


def test_the_page_says_when_a_photo_looks_unlike_the_training_images(page, cifar):
    browser, threshold = page
    pixels = cifar[0][:50]
    scores = energy(reference_logits(pixels))
    typical = pixels[int(np.argmin(scores))]  # the most training-like of 50 real test images
    # A flat magenta square: no object at all, in a colour CIFAR-100 images rarely have.
    magenta = np.full((32, 32, 3), (192, 0, 192), np.uint8)
    assert scores.min() <= threshold < energy(reference_logits(magenta[None]))[0]
    assert drop(browser, typical) == ""
    assert drop(browser, magenta).startswith(NOTICE)
    assert drop(browser, typical) == ""  # a new answer clears the notice

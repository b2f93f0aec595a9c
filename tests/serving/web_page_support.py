"""The gateway's web page on a real stack, for the tests that drive it in headless Chromium."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.server import Gateway
from tests.serving.browser import Browser, find_chromium
from tests.serving.conftest import model_server_for

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)


@contextlib.contextmanager
def web_page_on(model_dir: Path, store: Path, **gateway: Any) -> Iterator[Browser]:
    """Chromium on the page of a REST-only gateway over `model_dir`, published as version 1.

    Args:
        model_dir: the SavedModel to serve.
        store: an empty folder for the model store.
        **gateway: `GatewayConfig` fields to set (URL policy, monitors, ...).
    """
    assert CHROMIUM is not None
    with model_server_for(model_dir, store, "cifar") as server:
        config = GatewayConfig(
            backend=f"127.0.0.1:{server.grpc_port}",
            host="127.0.0.1",
            port=0,
            grpc_port=-1,
            model_name="cifar",
            **gateway,
        )
        started = Gateway(config).start()
        browser = Browser(CHROMIUM)
        try:
            browser.navigate(f"http://127.0.0.1:{started.port}/")
            yield browser
        finally:
            browser.close()
            started.stop(1)


def screenshot_dir(tmp_path: Path) -> Path:
    """Set CIFARFLOW_SCREENSHOT_DIR to keep the screenshots for a person to look at."""
    return Path(os.environ.get("CIFARFLOW_SCREENSHOT_DIR") or tmp_path)

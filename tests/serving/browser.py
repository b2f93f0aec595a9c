"""Driving the system's headless Chromium from tests with Playwright (a maintained client).

Playwright's browser download is not used: it launches Debian's `chromium`
(`executable_path`), so nothing is fetched at test time.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic")


def find_chromium() -> str | None:
    """The system Chromium, or None (the web page tests then skip)."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


class Browser:
    """One headless Chromium page: navigate, evaluate JavaScript, wait for a condition, screenshot."""

    def __init__(self, binary: str, width: int = 1100, height: int = 720) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=binary, headless=True, args=list(FLAGS)
            )
            self.page = self._browser.new_page(viewport={"width": width, "height": height})
        except Exception:
            self._playwright.stop()
            raise

    def evaluate(self, expression: str, timeout: float = 20.0) -> Any:
        """The value of a JavaScript expression (or statements: the last one's value)."""
        self.page.set_default_timeout(timeout * 1000)
        return self.page.evaluate(expression)

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Waits until `expression` is truthy and returns its value."""
        handle = self.page.wait_for_function(expression, timeout=timeout * 1000)
        return handle.json_value()

    def navigate(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def screenshot(self, path: str | os.PathLike) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()

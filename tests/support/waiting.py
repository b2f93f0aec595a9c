"""Waiting for something a real process does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "", interval_s: float = 0.1
) -> None:
    """Polls `condition()` until it is true; fails the test after `timeout_s`, naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(interval_s)

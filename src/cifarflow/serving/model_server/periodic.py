"""A function run every few seconds on a daemon thread until stopped.

The model manager polls for new versions and the config reloader re-reads
TF Serving's model config this way: a failed pass is logged and the next one
tries again, so a bad moment never stops the server serving what it has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs `fn` every `interval_s` seconds after `start()`, until `stop()`.

    Args:
        name: the thread's name.
        interval_s: seconds between passes; 0 or less never starts a thread.
        fn: one pass.
        what: names a failed pass in the log ("polling /models/m for new versions").
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object], what: str) -> None:
        self.name, self.interval_s, self.fn, self.what = name, interval_s, fn, what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:  # keep serving; the next pass tries again
                log.exception("%s failed", self.what)

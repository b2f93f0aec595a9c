"""Byte-count progress lines on stderr for long transfers and loops."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_MIB = 1024 * 1024


class ByteProgress:
    """Prints `label  12.0/161.1 MiB (7%)  10.2 MiB/s` at most every `interval` s.

    Args:
        label: what is being transferred.
        total: expected size in bytes, or None when unknown.
        start: bytes already present (a resumed download).
        interval: minimum seconds between two lines.
        stream: where to write; stderr by default so stdout stays parseable.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        start: int = 0,
        interval: float = 1.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.done = start
        self._start_bytes = start
        self._interval = interval
        self._stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._emit(now)

    def finish(self) -> None:
        self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-6)
        rate = (self.done - self._start_bytes) / elapsed / _MIB
        if self.total:
            pct = 100.0 * self.done / self.total
            text = f"{self.done / _MIB:.1f}/{self.total / _MIB:.1f} MiB ({pct:.0f}%)"
        else:
            text = f"{self.done / _MIB:.1f} MiB"
        print(f"{self.label}  {text}  {rate:.1f} MiB/s", file=self._stream, flush=True)

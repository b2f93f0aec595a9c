"""uvicorn's httptools protocol with a deadline for each request's headers.

uvicorn closes a keep-alive connection that stays idle after an answer
(`timeout_keep_alive`), but not one that never finishes its headers: a
client that sends a byte now and then (slowloris) would hold its connection
for as long as it likes. Here each connection must deliver a request's
complete headers within `header_timeout_s` of connecting, and of its
previous answer, or it is closed. A connection costs no thread either way
(the event loop serves them all), only a few kB of buffers until then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cifarflow.serving.coalesced_writes import CoalescingTransport

DEFAULT_HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose headers do not arrive in time.

    The deadline is `config.header_timeout_s` (an attribute UvicornServer adds
    to uvicorn's Config; the default when absent).
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout_s = getattr(config, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are due in time as well (unless a
        # pipelined one has already started).
        if self.cycle.response_complete and not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

"""One send per answer: an asyncio transport that joins the writes of one loop iteration.

uvicorn's httptools protocol writes an answer's status line and headers,
then its body, as two `transport.write` calls, and uvloop sends each at
once: two send() syscalls, two TCP segments, and on loopback (or a pod's
veth) the receiving side's processing twice, for every answer. Both writes
happen in the same step of the request's task, so holding what is written
until the end of the loop iteration (one `call_soon`) sends an answer in
one syscall and delays nothing: the held bytes go out before the loop next
waits for I/O.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a transport: `write`s are joined and sent once per loop iteration.

    Everything else is the wrapped transport's, except `close`, which sends
    what is held first, and `abort`, which drops it.

    Args:
        transport: the connection's transport.
        loop: the loop the connection runs on.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def flush(self) -> None:
        """Sends what is held, in one write (nothing after the connection closed)."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

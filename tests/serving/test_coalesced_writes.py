"""CoalescingTransport over real TCP connections on uvloop: one send per loop iteration.

The peer is a real socket; a recorder between CoalescingTransport and
uvloop's transport counts the writes that reach the kernel.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from cifarflow.serving.coalesced_writes import CoalescingTransport


class Recorder:
    """Forwards to the real transport, noting each write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


async def connected() -> tuple[Recorder, CoalescingTransport, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    recorder = Recorder(transport)
    return recorder, CoalescingTransport(recorder, loop), theirs  # type: ignore[arg-type]


def read_all(peer: socket.socket) -> bytes:
    chunks = []
    while chunk := peer.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_writes_of_one_iteration_go_out_as_one_send_in_order():
    async def scenario():
        recorder, transport, peer = await connected()
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        transport.write(bytearray(b"hel"))
        transport.write(memoryview(b"lo"))
        assert recorder.writes == []  # held until the iteration ends
        assert transport.get_write_buffer_size() == 43
        await asyncio.sleep(0)
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
        transport.write(b"next")  # a later iteration: a send of its own
        await asyncio.sleep(0)
        assert recorder.writes[1:] == [b"next"]
        transport.close()
        await asyncio.sleep(0.05)
        return read_all(peer)

    received = uvloop.run(scenario())
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhellonext"


def test_close_sends_what_is_held_and_abort_drops_it():
    async def scenario():
        recorder, transport, peer = await connected()
        transport.write(b"last words")
        transport.close()  # before the iteration ends: still delivered, then EOF
        await asyncio.sleep(0.05)
        closed = read_all(peer)
        recorder, transport, peer = await connected()
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0.05)
        return closed, read_all(peer), recorder.writes

    closed, aborted, writes = uvloop.run(scenario())
    assert closed == b"last words"
    assert aborted == b"" and writes == []


def test_bytes_held_when_the_peer_is_gone_are_dropped_without_error():
    async def scenario():
        recorder, transport, peer = await connected()
        peer.close()
        transport.write(b"to nobody")
        transport._transport.transport.close()  # the connection is lost meanwhile
        await asyncio.sleep(0.05)
        return recorder.writes

    assert uvloop.run(scenario()) == []

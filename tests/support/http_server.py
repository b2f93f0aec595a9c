"""A local HTTP file server with Range support and injectable faults.

Serves one payload at `/<name>`. Faults are set per test: drop the
connection after N bytes on the first K requests, answer 500 on the first K
requests, ignore Range headers, or flip one byte of the body. Every request's
Range header is recorded so tests can assert how the client resumed.
"""

from __future__ import annotations

import dataclasses
from http.server import BaseHTTPRequestHandler

from tests.support.local_http import LocalHTTPServer


@dataclasses.dataclass
class Faults:
    drop_after_bytes: int | None = None  # close the socket mid-body ...
    drop_requests: int = 0  # ... on this many requests
    error_requests: int = 0  # answer 500 to this many requests first
    ignore_range: bool = False
    corrupt_offset: int | None = None  # flip the byte at this offset


class FileServer(LocalHTTPServer):
    def __init__(self, payload: bytes, name: str = "cifar-100-python.tar.gz") -> None:
        self.payload = payload
        self.name = name
        self.path = f"/{name}"
        self.faults = Faults()
        self.ranges: list[str | None] = []
        super().__init__()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.ranges.append(self.headers.get("Range"))
                    faults = server.faults
                    fail = faults.error_requests > 0
                    if fail:
                        faults.error_requests -= 1
                    drop = faults.drop_requests > 0 and faults.drop_after_bytes is not None
                    if drop:
                        faults.drop_requests -= 1
                if self.path != f"/{server.name}":
                    self.send_error(404, "not found")
                    return
                if fail:
                    self.send_error(500, "injected failure")
                    return
                body = bytearray(server.payload)
                if faults.corrupt_offset is not None:
                    body[faults.corrupt_offset] ^= 0xFF
                start, total = 0, len(body)
                header = self.headers.get("Range")
                if header and not faults.ignore_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(total - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                chunk = bytes(body[start:])
                if drop:
                    self.wfile.write(chunk[: faults.drop_after_bytes])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the client sees a short body
                    return
                self.wfile.write(chunk)

        return Handler

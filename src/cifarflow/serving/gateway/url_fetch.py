"""Fetching an image by URL for `POST /predict`, without becoming an open proxy.

A fetch is refused unless the host is on the allow-list; private, loopback,
link-local, multicast and reserved addresses are refused unless explicitly
allowed (so an allowed name that resolves to 169.254.169.254 or 10.x is still
refused). The connection goes to the address that was checked, not to a
second DNS answer (no DNS-rebinding window). Redirects are followed only to
URLs that pass the same checks. Size and total time are capped: every read
and write waits at most for what is left of the fetch's deadline, so a
server that drips its headers or body a byte at a time cannot stretch it.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from cifarflow.serving.errors import (
    BadGateway,
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
)


@dataclasses.dataclass(frozen=True)
class UrlPolicy:
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 5.0
    max_redirects: int = 3

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_hosts)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.allowed_hosts:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*.") and (host.endswith(pattern[1:]) and host != pattern[2:]):
                return True
            if host == pattern:
                return True
        return False


def _refused_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, 6to4) reaches that IPv4 host.
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    # Most specific first: 169.254.x.x is also "private", but link-local says why.
    for attribute in (
        "is_loopback",
        "is_link_local",
        "is_multicast",
        "is_unspecified",
        "is_reserved",
        "is_private",
    ):
        if getattr(ip, attribute):
            return attribute[3:].replace("_", "-")
    # Not private, yet not the internet either: the shared address space
    # 100.64.0.0/10, where some clouds put their metadata service (100.100.100.200).
    if not ip.is_global:
        return "non-global"
    return None


def _resolve(host: str, port: int, policy: UrlPolicy) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve host {host!r}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not policy.allow_private:
        for address in addresses:
            why = _refused_address(address)
            if why:
                raise Forbidden(
                    f"refusing to fetch from {host} ({address}): {why} addresses are not allowed"
                )
    return addresses


def _check_url(url: str, policy: UrlPolicy) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or not url:
        raise InvalidInput("'url' must be a non-empty string")
    if len(url) > 2048:
        raise InvalidInput("'url' is longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(
            f"only http and https URLs are fetched, not {parts.scheme or 'a relative URL'!r}"
        )
    if parts.username or parts.password:
        raise InvalidInput("URLs with credentials are not fetched")
    host = parts.hostname
    if not host:
        raise InvalidInput("the URL has no host")
    if not policy.enabled:
        raise Forbidden("URL fetching is disabled on this gateway (no allowed hosts configured)")
    if not policy.host_allowed(host):
        raise Forbidden(f"host {host!r} is not on the gateway's allow-list")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput("the URL has an invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, target


def fetch_image(url: str, policy: UrlPolicy) -> bytes:
    """The body of `url`, within the policy's host, size and time limits.

    Raises:
        InvalidInput: a malformed URL, an unresolvable host, a 4xx answer.
        Forbidden: the host or its address is not allowed.
        PayloadTooLarge: the body is over `max_bytes`.
        DeadlineExceeded: the fetch took longer than `timeout_s`.
        BadGateway: the server failed (5xx, connection refused).
    """
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(policy.max_redirects + 1):
        scheme, host, port, target = _check_url(url, policy)
        address = _resolve(host, port, policy)[0]
        status, location, body = _get(scheme, host, port, address, target, policy, deadline)
        if status in (301, 302, 303, 307, 308) and location:
            url = urljoin(url, location)
            continue
        if 400 <= status < 500:
            raise InvalidInput(f"fetching the URL failed: the server answered {status}")
        if status >= 300:
            raise BadGateway(f"fetching the URL failed: the server answered {status}")
        return body
    raise InvalidInput(f"too many redirects (more than {policy.max_redirects})")


def _remaining(deadline: float, policy: UrlPolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"fetching the URL took longer than {policy.timeout_s:g}s")
    return left


class _DeadlineSocket:
    """A connected socket as http.client uses it, each send and receive bounded by the fetch's deadline.

    A socket timeout bounds one receive, not the sum: without this, a server
    that sends a header byte every second would hold the fetch for hours.
    """

    def __init__(self, sock: socket.socket, deadline: float, policy: UrlPolicy) -> None:
        self._sock, self._deadline, self._policy = sock, deadline, policy

    def _arm(self) -> None:
        self._sock.settimeout(_remaining(self._deadline, self._policy))

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer) -> int:
        self._arm()
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        # http.client closes the connection while a Connection: close response
        # still reads from it; `_get` closes the real socket when it is done.
        pass


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)


def _get(
    scheme: str, host: str, port: int, address: str, target: str, policy: UrlPolicy, deadline: float
):
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((address, port), timeout=_remaining(deadline, policy))
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        connection = http.client.HTTPConnection(host, port)
        connection.sock = _DeadlineSocket(
            sock, deadline, policy
        )  # already connected to the checked address
        connection.request(
            "GET",
            target,
            headers={
                "Host": host if port in (80, 443) else f"{host}:{port}",
                "User-Agent": "cifarflow-gateway",
                "Accept": "image/*",
            },
        )
        response = connection.getresponse()
        if 300 <= response.status < 400:
            return response.status, response.getheader("Location"), b""
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > policy.max_bytes:
            raise PayloadTooLarge(
                f"the URL's image is {length} bytes; the limit is {policy.max_bytes} bytes"
            )
        chunks, size = [], 0
        while chunk := response.read1(64 * 1024):
            size += len(chunk)
            if size > policy.max_bytes:
                raise PayloadTooLarge(
                    f"the URL's image is over the limit of {policy.max_bytes} bytes"
                )
            chunks.append(chunk)
        return response.status, None, b"".join(chunks)
    except TimeoutError:
        raise DeadlineExceeded(f"fetching the URL took longer than {policy.timeout_s:g}s") from None
    except ssl.SSLError as exc:
        raise BadGateway(f"TLS failed for {host}: {exc.reason or exc}") from None
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        raise BadGateway(f"fetching the URL failed: {type(exc).__name__}: {exc}") from None
    finally:
        if sock is not None:
            sock.close()

"""Fetching an image by URL for `POST /predict`, without becoming an open proxy.

A fetch is refused unless the host is on the allow-list; private, loopback,
link-local, multicast and reserved addresses are refused unless explicitly
allowed (so an allowed name that resolves to 169.254.169.254 or 10.x is still
refused). The connection goes to the address that was checked, not to a
second DNS answer (no DNS-rebinding window). Redirects are followed only to
URLs that pass the same checks. Size and total time are capped.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from cifarflow.serving.errors import BadGateway, DeadlineExceeded, Forbidden, InvalidInput, PayloadTooLarge


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
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    # Most specific first: 169.254.x.x is also "private", but link-local says why.
    for attribute in ("is_loopback", "is_link_local", "is_multicast", "is_unspecified", "is_reserved", "is_private"):
        if getattr(ip, attribute):
            return attribute[3:].replace("_", "-")
    return None


def _resolve(host: str, port: int, policy: UrlPolicy) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve host {host!r}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not policy.allow_private:
        for address in addresses:
            why = _refused_address(address)
            if why:
                raise Forbidden(f"refusing to fetch from {host} ({address}): {why} addresses are not allowed")
    return addresses


def _check_url(url: str, policy: UrlPolicy) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or not url:
        raise InvalidInput("'url' must be a non-empty string")
    if len(url) > 2048:
        raise InvalidInput("'url' is longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"only http and https URLs are fetched, not {parts.scheme or 'a relative URL'!r}")
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


def _get(scheme: str, host: str, port: int, address: str, target: str, policy: UrlPolicy, deadline: float):
    try:
        sock = socket.create_connection((address, port), timeout=_remaining(deadline, policy))
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        connection = http.client.HTTPConnection(host, port, timeout=_remaining(deadline, policy))
        connection.sock = sock  # already connected to the checked address
        connection.request("GET", target, headers={"Host": host if port in (80, 443) else f"{host}:{port}",
                                                   "User-Agent": "cifarflow-gateway", "Accept": "image/*"})
        response = connection.getresponse()
        try:
            if 300 <= response.status < 400:
                return response.status, response.getheader("Location"), b""
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise PayloadTooLarge(f"the URL's image is {length} bytes; the limit is {policy.max_bytes} bytes")
            chunks, size = [], 0
            while True:
                sock.settimeout(_remaining(deadline, policy))
                chunk = response.read1(64 * 1024) if hasattr(response, "read1") else response.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > policy.max_bytes:
                    raise PayloadTooLarge(f"the URL's image is over the limit of {policy.max_bytes} bytes")
                chunks.append(chunk)
            return response.status, None, b"".join(chunks)
        finally:
            connection.close()
    except (socket.timeout, TimeoutError):
        raise DeadlineExceeded(f"fetching the URL took longer than {policy.timeout_s:g}s") from None
    except ssl.SSLError as exc:
        raise BadGateway(f"TLS failed for {host}: {exc.reason or exc}") from None
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        raise BadGateway(f"fetching the URL failed: {type(exc).__name__}: {exc}") from None

"""Fetching an image by URL for `POST /predict`, without becoming an open proxy or holding a thread.

A fetch is refused unless the host is on the allow-list; private, loopback,
link-local, multicast and reserved addresses are refused unless explicitly
allowed (so an allowed name that resolves to 169.254.169.254 or 10.x is still
refused). The name is resolved once, and the connection goes to the address
that was checked, not to a second DNS answer (no DNS-rebinding window);
Host, TLS SNI and the certificate check still use the name. Redirects are
followed only to URLs that pass the same checks. The body is counted as it
streams in and the fetch stops at the size limit; one deadline bounds the
whole fetch (DNS, connect, TLS, headers, body, every redirect), so a server
that drips its headers or body a byte at a time cannot stretch it.

The fetch is a coroutine on httpx's AsyncClient: a slow server costs a
waiting coroutine, not one of the event loop's few executor threads, so
slow URLs do not queue other requests behind them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import socket
import ssl
from urllib.parse import urljoin, urlsplit

import httpx

from cifarflow.serving.errors import (
    BadGateway,
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
)

# Fetches in flight at once per process; more wait for a connection (within
# their deadline), so a flood of URLs cannot open unbounded connections.
MAX_CONCURRENT_FETCHES = 100
_REDIRECTS = (301, 302, 303, 307, 308)


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


async def _resolve(host: str, port: int, policy: UrlPolicy) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
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


class UrlFetcher:
    """Fetches images by URL within a UrlPolicy, on one httpx.AsyncClient.

    One per process (the gateway's Classifier holds it); close it with
    `aclose()` on the event loop that used it.

    Args:
        policy: hosts, addresses, size and time allowed.
        ssl_context: the certificates trusted for https URLs; default the
            system's (`system_ssl_context()`).
    """

    def __init__(self, policy: UrlPolicy, ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self._client = httpx.AsyncClient(
            verify=ssl_context or system_ssl_context(),
            # No proxy or .netrc from the environment: a proxy would connect
            # by name, to an address nobody checked.
            trust_env=False,
            follow_redirects=False,  # each hop is checked here first
            # A connection per fetch, to the address that fetch checked: a kept
            # one would be keyed by address and could carry another name's request.
            limits=httpx.Limits(
                max_connections=MAX_CONCURRENT_FETCHES, max_keepalive_connections=0
            ),
            timeout=None,  # one deadline for the whole fetch, in `fetch`
            headers={
                "User-Agent": "cifarflow-gateway",
                "Accept": "image/*",
                # Bytes as sent: the size limit counts what arrives, and a
                # compressed body cannot expand past it.
                "Accept-Encoding": "identity",
            },
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> UrlFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body of `url`, within the policy's host, size and time limits.

        Raises:
            InvalidInput: a malformed URL, an unresolvable host, a 4xx answer.
            Forbidden: the host or its address is not allowed.
            PayloadTooLarge: the body is over `max_bytes`.
            DeadlineExceeded: the fetch took longer than `timeout_s`.
            BadGateway: the server failed (5xx, connection refused, TLS).
        """
        try:
            return await asyncio.wait_for(self._follow(url), self.policy.timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"fetching the URL took longer than {self.policy.timeout_s:g}s"
            ) from None

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            scheme, host, port, target = _check_url(url, self.policy)
            address = (await _resolve(host, port, self.policy))[0]
            status, location, body = await self._get(scheme, host, port, address, target)
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if 400 <= status < 500:
                raise InvalidInput(f"fetching the URL failed: the server answered {status}")
            if status >= 300:
                raise BadGateway(f"fetching the URL failed: the server answered {status}")
            return body
        raise InvalidInput(f"too many redirects (more than {self.policy.max_redirects})")

    async def _get(
        self, scheme: str, host: str, port: int, address: str, target: str
    ) -> tuple[int, str | None, bytes]:
        """One GET to `address`, as a request for `host` (Host header, TLS SNI and certificate)."""
        literal = f"[{address}]" if ":" in address else address
        try:
            request = self._client.build_request(
                "GET",
                f"{scheme}://{literal}:{port}{target}",
                headers={"Host": _host_header(host, port)},
                # httpcore sends this name as SNI and checks the certificate
                # against it, not against the address in the URL.
                extensions={"sni_hostname": host},
            )
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"the URL is not valid: {exc}") from None
        try:
            response = await self._client.send(request, stream=True)
            try:
                return await self._read(response)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            tls = _ssl_error(exc)
            if tls is not None:
                raise BadGateway(f"TLS failed for {host}: {tls.reason or tls}") from None
            raise BadGateway(f"fetching the URL failed: {type(exc).__name__}: {exc}") from None

    async def _read(self, response: httpx.Response) -> tuple[int, str | None, bytes]:
        if 300 <= response.status_code < 400:
            return response.status_code, response.headers.get("Location"), b""
        limit = self.policy.max_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"the URL's image is {length} bytes; the limit is {limit} bytes")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():  # raw: no decoding, the bytes that arrived
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the URL's image is over the limit of {limit} bytes")
            chunks.append(chunk)
        return response.status_code, None, b"".join(chunks)


async def fetch_image(url: str, policy: UrlPolicy) -> bytes:
    """One fetch on a client of its own (a script, a test); a server keeps one UrlFetcher."""
    async with UrlFetcher(policy) as fetcher:
        return await fetcher.fetch(url)


@functools.cache
def system_ssl_context() -> ssl.SSLContext:
    """The system's trusted certificates, loaded once per process (a load costs 20-200 ms of CPU)."""
    return ssl.create_default_context()


def _host_header(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port in (80, 443) else f"{name}:{port}"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure under httpx's error (httpx and httpcore chain the original as the cause)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None

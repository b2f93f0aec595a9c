"""The URL fetcher against a hostile HTTP server on real sockets.

tests/serving/test_gateway.py covers the allow-list, a redirect off it, a
declared oversized body, a server that stalls before answering and the
policy's address table. Here: servers that drip, never end, loop, or
redirect to internal addresses, names that resolve to internal ones, and
https with the connection pinned to an address but TLS checked against the name.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest
import requests

from cifarflow.serving.errors import (
    BadGateway,
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
)
from cifarflow.serving.gateway.url_fetch import (
    UrlFetcher,
    UrlPolicy,
    _refused_address,
    fetch_image,
)
from tests.serving.images import cifar_test_images, encode
from tests.support.local_http import LocalHTTPServer

DRIP_S = 0.1  # one byte every DRIP_S
DRIP_FOR_S = 8.0  # then the server gives up, so a fetcher without a total limit fails the test instead of hanging it


class HostileSite(LocalHTTPServer):
    """Paths: /image.png, /drip-headers, /drip-body, /endless, /endless-chunked,
    /loop/<n> (redirects to /loop/<n+1>), /to?url=U (redirects to U). Counts requests per path."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.png = encode(cifar_test_images()[0][3], "PNG")
        super().__init__()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _drip(self, data: bytes) -> None:
                until = time.monotonic() + DRIP_FOR_S
                for i in range(len(data)):
                    if time.monotonic() > until:
                        self.wfile.write(data[i:])
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(DRIP_S)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with site._lock:
                    site.hits[parts.path] += 1
                try:
                    self._route(parts)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _route(self, parts) -> None:
                if parts.path == "/image.png":
                    self._answer(200, {"Content-Type": "image/png"}, site.png)
                elif parts.path.startswith("/loop/"):
                    self._answer(
                        302, {"Location": f"/loop/{int(parts.path.rsplit('/', 1)[1]) + 1}"}, b""
                    )
                elif parts.path == "/to":
                    self._answer(302, {"Location": parse_qs(parts.query)["url"][0]}, b"")
                elif parts.path == "/drip-headers":
                    self._drip(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Filler: "
                        + b"a" * 200
                        + b"\r\n\r\n"
                    )
                elif parts.path == "/drip-body":
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(site.png)
                    )
                    self._drip(site.png)
                elif parts.path == "/endless":  # no length: the body ends when the connection does
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n"
                    )
                    self._forever(lambda block: block)
                elif parts.path == "/endless-chunked":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    self._forever(lambda block: b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self._answer(404, {}, b"no")

            def _forever(self, frame) -> None:
                block = b"\0" * 65536
                until = time.monotonic() + 30
                while time.monotonic() < until:
                    self.wfile.write(frame(block))
                self.close_connection = True

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture(scope="module")
def site():
    with HostileSite() as s:
        yield s


LOOPBACK_OK = UrlPolicy(
    allowed_hosts=("127.0.0.1",), allow_private=True, max_bytes=256 * 1024, timeout_s=1.0
)


def _timed(url: str, policy: UrlPolicy = LOOPBACK_OK):
    started = time.monotonic()
    try:
        return asyncio.run(fetch_image(url, policy)), time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started


def test_the_hostile_site_serves_a_real_image(site):
    body, _ = _timed(site.at("/image.png"))
    assert body == site.png


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/drip-headers", "/drip-body"])
def test_a_dripping_server_cannot_stretch_the_total_time_limit(site, path):
    """Each byte comes well within a per-read timeout; only a total deadline stops it."""
    error, seconds = _timed(site.at(path))
    assert isinstance(error, DeadlineExceeded), error
    assert seconds < LOOPBACK_OK.timeout_s + 1.0, f"{path}: the 1 s limit held for {seconds:.1f} s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/endless", "/endless-chunked"])
def test_an_endless_body_stops_at_the_size_limit(site, path):
    error, seconds = _timed(
        site.at(path), UrlPolicy(("127.0.0.1",), True, max_bytes=256 * 1024, timeout_s=10.0)
    )
    assert isinstance(error, PayloadTooLarge), error
    assert seconds < 5


@pytest.mark.timeout(60)
def test_a_redirect_loop_ends_after_max_redirects(site):
    site.hits.clear()
    error, seconds = _timed(site.at("/loop/0"))
    assert isinstance(error, InvalidInput) and "too many redirects" in str(error)
    assert (
        sum(n for p, n in site.hits.items() if p.startswith("/loop/"))
        == LOOPBACK_OK.max_redirects + 1
    )
    assert seconds < LOOPBACK_OK.timeout_s + 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/image.png",  # a name for loopback
        "http://127.1:{port}/image.png",  # short, hex, decimal and mapped forms of 127.0.0.1
        "http://0x7f000001:{port}/image.png",
        "http://2130706433:{port}/image.png",
        "http://[::ffff:127.0.0.1]:{port}/image.png",
        "http://[::1]:{port}/image.png",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.100.100.200/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_GET",
    ],
)
def test_a_redirect_from_an_allowed_host_to_an_internal_address_is_refused_unfetched(site, target):
    """The first hop is allowed; the second must pass the same checks before any connection is made."""
    site.hits.clear()
    error, _ = _timed(
        site.at("/to?url=" + requests.utils.quote(target.format(port=site.port), safe=""))
    )
    assert isinstance(error, (Forbidden, InvalidInput)), error
    assert site.hits == {"/to": 1}, "the redirect target was contacted"


@pytest.mark.timeout(60)
def test_names_that_resolve_to_internal_addresses_are_refused_unfetched(site):
    names = ["localhost", "LOCALHOST", socket.gethostname()]
    policy = UrlPolicy(allowed_hosts=tuple(names), allow_private=False, timeout_s=1.0)
    site.hits.clear()
    for name in names:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, site.port)}
        assert all(_refused_address(a) for a in addresses), (
            name,
            addresses,
        )  # what the test relies on
        error, _ = _timed(site.at("/image.png", host=name), policy)
        assert isinstance(error, Forbidden) and "addresses are not allowed" in str(error), (
            name,
            error,
        )
    assert not site.hits


class RebindingName:
    """A DNS name whose answer changes between lookups (rebinding): public first, loopback after.

    The "public" address is routed to the hostile site, standing in for an
    attacker's public server; any connection to another address is recorded
    and refused, so nothing reaches the internet. Connections are seen where
    the HTTP client (httpx, through httpcore) opens them; names are resolved
    by the event loop through socket.getaddrinfo.
    """

    PUBLIC = "93.184.216.34"

    def __init__(self, site: HostileSite, monkeypatch) -> None:
        self.site, self.lookups, self.connects = site, [], []
        monkeypatch.setattr(socket, "getaddrinfo", self._resolve)
        connect_tcp = httpcore.AnyIOBackend.connect_tcp

        async def connect(backend, host, port, *args, **kwargs):
            self.connects.append(host)
            if host != self.PUBLIC:
                raise httpcore.ConnectError("not the checked address")
            # A literal address is connected to without a lookup.
            return await connect_tcp(backend, "127.0.0.1", site.port, *args, **kwargs)

        monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect)

    def _resolve(self, host, port, *args, **kwargs):
        self.lookups.append(host)
        address = self.PUBLIC if len(self.lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    def url(self, path: str) -> str:
        return f"http://rebind.example:{self.site.port}{path}"


REBIND_POLICY = UrlPolicy(allowed_hosts=("rebind.example",), allow_private=False, timeout_s=1.0)


def test_a_rebinding_name_is_fetched_from_the_address_that_was_checked(site, monkeypatch):
    name = RebindingName(site, monkeypatch)
    site.hits.clear()
    body, _ = _timed(name.url("/image.png"), REBIND_POLICY)
    # One lookup, and the connection went to its (checked) answer: a second
    # lookup by the HTTP library, which would have answered loopback, never happened.
    assert body == site.png
    assert name.lookups == ["rebind.example"] and name.connects == [RebindingName.PUBLIC]


def test_a_redirect_back_to_a_rebound_name_is_checked_again_and_refused(site, monkeypatch):
    name = RebindingName(site, monkeypatch)
    site.hits.clear()
    error, _ = _timed(
        name.url("/to?url=" + requests.utils.quote(name.url("/image.png"), safe="")), REBIND_POLICY
    )
    assert isinstance(error, Forbidden) and "127.0.0.1" in str(error), error
    assert name.lookups == ["rebind.example"] * 2 and name.connects == [RebindingName.PUBLIC]
    assert site.hits == {"/to": 1}


@pytest.mark.parametrize(
    "address, why",
    [
        (
            "100.100.100.200",
            "non-global",
        ),  # shared address space: a cloud metadata service lives here
        ("100.64.0.1", "non-global"),
        ("::ffff:100.100.100.200", "non-global"),
        ("2002:a00:1::", "private"),  # 6to4 wrapping of 10.0.0.1
        ("2002:7f00:1::", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("fd12::1", "private"),
    ],
)
def test_every_non_global_address_is_refused(address, why):
    assert _refused_address(address) == why
    assert _refused_address("93.184.215.14") is None and _refused_address("2606:4700::1111") is None


@pytest.mark.timeout(60)
def test_the_gateway_answers_a_drip_with_504_in_time(stack, site):
    """The same through the real gateway process (URL timeout 1 s)."""
    started = time.monotonic()
    response = requests.post(
        f"{stack.url}/predict",
        json={"url": site.at("/drip-headers")},
        headers=stack.auth,
        timeout=30,
    )
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 3
    ok = requests.post(
        f"{stack.url}/predict", json={"url": site.at("/image.png")}, headers=stack.auth, timeout=30
    )
    assert ok.status_code == 200 and len(ok.json()) == 20


@pytest.mark.timeout(60)
def test_many_concurrent_drips_all_end_on_time(site):
    results: list[float] = []

    def one() -> None:
        error, seconds = _timed(site.at("/drip-body"))
        assert isinstance(error, DeadlineExceeded)
        results.append(seconds)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8 and max(results) < LOOPBACK_OK.timeout_s + 1.5


def _certificate(name: str, directory) -> tuple[str, str]:
    """A self-signed certificate for DNS name `name` (no IP address in it): (cert file, key file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


class TlsSite(LocalHTTPServer):
    """An https server on 127.0.0.1 with a certificate for one DNS name; records the SNI it was sent."""

    def __init__(self, cert_file: str, key_file: str, png: bytes) -> None:
        self.png, self.server_names = png, []
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    def _handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(site.png)))
                self.end_headers()
                self.wfile.write(site.png)

        return Handler


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory, site):
    cert_file, key_file = _certificate("images.test", tmp_path_factory.mktemp("tls"))
    with TlsSite(cert_file, key_file, site.png) as s:
        s.cert_file = cert_file
        yield s


def _fetch_tls(tls_site, name: str, trusted: bool) -> tuple[bytes | Exception, float]:
    """Fetches https://NAME:PORT/ with NAME resolving to 127.0.0.1; the site's certificate trusted or not."""
    policy = UrlPolicy(allowed_hosts=(name,), allow_private=True, timeout_s=5.0)
    context = ssl.create_default_context(cafile=tls_site.cert_file) if trusted else None

    async def fetch() -> bytes:
        async with UrlFetcher(policy, context) as fetcher:
            return await fetcher.fetch(f"https://{name}:{tls_site._server.server_address[1]}/x.png")

    started = time.monotonic()
    try:
        return asyncio.run(fetch()), time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started


@pytest.fixture
def loopback_test_names(monkeypatch):
    resolve = socket.getaddrinfo

    def loopback(host, port, *args, **kwargs):
        return resolve("127.0.0.1" if host.endswith(".test") else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback)


@pytest.mark.timeout(60)
def test_https_is_pinned_to_the_address_but_sni_and_certificate_use_the_name(
    tls_site, loopback_test_names
):
    """The connection goes to 127.0.0.1, yet TLS names images.test: the certificate has no IP in it."""
    tls_site.server_names.clear()
    body, _ = _fetch_tls(tls_site, "images.test", trusted=True)
    assert body == tls_site.png
    assert tls_site.server_names == ["images.test"]


@pytest.mark.timeout(60)
def test_https_refuses_a_certificate_for_another_name_or_from_an_untrusted_issuer(
    tls_site, loopback_test_names
):
    wrong_name, _ = _fetch_tls(tls_site, "other.test", trusted=True)
    assert isinstance(wrong_name, BadGateway), wrong_name
    assert "TLS failed for other.test" in str(wrong_name)
    untrusted, _ = _fetch_tls(tls_site, "images.test", trusted=False)  # the system's CAs
    assert isinstance(untrusted, BadGateway) and "TLS failed" in str(untrusted), untrusted

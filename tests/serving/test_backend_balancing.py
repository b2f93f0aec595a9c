"""The gateway spreads its backend calls over every model server one name resolves to.

In Kubernetes the gateway dials `dns:///tf-serving-grpc...:8500`, a headless
Service whose DNS name has one A record per TensorFlow Serving pod. Here the
same happens on loopback: two real `cifarflow serve model` processes on
127.0.0.1 and 127.0.0.2 at the same port, a tiny DNS server on loopback that
answers one name with both addresses, and a real `cifarflow serve gateway`
whose --backend is that name. The servers serve different versions, so the
`version` of each answer says which server it came from.
"""

from __future__ import annotations

import base64
import collections
import json
import socket
import struct
import threading

import grpc
import pytest
import requests

from cifarflow.errors import BadInputError
from cifarflow.serving.gateway.config import GatewayConfig
from cifarflow.serving.gateway.target import ROUND_ROBIN_SERVICE_CONFIG, channel_options
from tests.serving.images import encode
from tests.support.processes import GatewayProcess, ModelServerProcess
from tests.support.waiting import wait_until

MODEL = "cifarflow"
ADDRESSES = ("127.0.0.1", "127.0.0.2")
BACKEND_NAME = "tf-serving-grpc.cifarflow.test"
CALLS = 40


class LoopbackDns:
    """A UDP DNS server on 127.0.0.1 that answers A queries for `records`' names, NXDOMAIN otherwise.

    Only what gRPC's c-ares resolver asks: one question per query, A and AAAA
    (AAAA and other types get an empty answer), no compression in questions.
    """

    def __init__(self, records: dict[str, tuple[str, ...]]) -> None:
        self.records = {name.lower().rstrip("."): addresses for name, addresses in records.items()}
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.queries: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.socket.recvfrom(512)
            except OSError:  # closed
                return
            try:
                self.socket.sendto(self._answer(query), peer)
            except (IndexError, struct.error, OSError):
                continue

    def _answer(self, query: bytes) -> bytes:
        query_id, flags = struct.unpack("!HH", query[:4])
        labels, position = [], 12
        while query[position]:
            length = query[position]
            labels.append(query[position + 1 : position + 1 + length].decode("ascii"))
            position += 1 + length
        qtype = struct.unpack("!H", query[position + 1 : position + 3])[0]
        question = query[12 : position + 5]
        name = ".".join(labels).lower()
        self.queries[name] += 1
        addresses = self.records.get(name)
        rcode = 3 if addresses is None else 0  # NXDOMAIN for names we do not know
        answers = []
        if addresses and qtype == 1:  # A
            for address in addresses:
                # A pointer to the question's name, type A, class IN, TTL 5 s, 4 bytes.
                answers.append(
                    b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(address)
                )
        header = struct.pack(
            "!HHHHHH", query_id, 0x8180 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0
        )
        return header + question + b"".join(answers)

    def close(self) -> None:
        self.socket.close()


def _port_free_on_every_address() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((ADDRESSES[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in ADDRESSES:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


def _available(status_url: str) -> bool:
    """The model server's REST status shows a version AVAILABLE (it loads after it listens)."""
    try:
        answer = requests.get(status_url, timeout=5)
    except requests.ConnectionError:
        return False
    return answer.ok and any(
        v["state"] == "AVAILABLE" for v in answer.json()["model_version_status"]
    )


@pytest.fixture(scope="module")
def two_model_servers(exported_model, tmp_path_factory):
    """(port, {address: version}): model servers on both addresses, one port, different versions."""
    from cifarflow.serving.store import publish_model

    root = tmp_path_factory.mktemp("balancing")
    port = _port_free_on_every_address()
    servers, versions = [], {}
    try:
        for index, address in enumerate(ADDRESSES):
            store = root / f"store-{index}"
            for _ in range(index + 1):  # the second store's newest version is 2
                result = publish_model(exported_model, store, MODEL, {})
            versions[address] = int(result.version)
            servers.append(
                ModelServerProcess(
                    str(store),
                    MODEL,
                    root / f"model-server-{index}.log",
                    "--host",
                    address,
                    "--poll-interval",
                    "60",
                    grpc_port=port,
                    rest_port=0,
                )
            )
        assert len(set(versions.values())) == len(ADDRESSES)
        for server, address in zip(servers, ADDRESSES, strict=True):
            status_url = f"http://{address}:{server.rest_port}/v1/models/{MODEL}"
            wait_until(
                lambda url=status_url: _available(url),
                60,
                f"{status_url}: a version AVAILABLE",
                interval_s=0.2,
            )
        yield port, versions
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def dns(two_model_servers):
    server = LoopbackDns({BACKEND_NAME: ADDRESSES})
    yield server
    server.close()


def _wait_available_through(gateway_url: str, timeout_s: float = 30.0) -> None:
    wait_until(
        lambda: requests.get(f"{gateway_url}/readyz", timeout=5).status_code == 200,
        timeout_s,
        f"{gateway_url}/readyz answering 200",
        interval_s=0.2,
    )


def _classify_many(url: str, cifar, calls: int = CALLS) -> collections.Counter[int]:
    pixels, _ = cifar
    image = base64.b64encode(encode(pixels[0])).decode()
    versions: collections.Counter[int] = collections.Counter()
    with requests.Session() as session:
        for _ in range(calls):
            answer = session.post(f"{url}/v1/classify", json={"image_b64": image}, timeout=30)
            assert answer.status_code == 200, answer.text
            versions[int(answer.json()["version"])] += 1
    return versions


@pytest.mark.parametrize("kind", ["dns", "ipv4"])
def test_gateway_spreads_calls_over_every_model_server_of_one_name(
    kind, two_model_servers, dns, cifar, tmp_path
):
    port, versions = two_model_servers
    backend = (
        f"dns://127.0.0.1:{dns.port}/{BACKEND_NAME}:{port}"
        if kind == "dns"
        else "ipv4:" + ",".join(f"{address}:{port}" for address in ADDRESSES)
    )
    # The c-ares resolver (gRPC's default) is the one that takes a DNS server in the target.
    gateway = GatewayProcess(
        backend, tmp_path / "gateway.log", "--grpc-port", "-1", env={"GRPC_DNS_RESOLVER": "ares"}
    )
    try:
        _wait_available_through(gateway.url)
        answered = _classify_many(gateway.url, cifar)
    finally:
        gateway.stop()
    if kind == "dns":
        assert dns.queries[BACKEND_NAME.lower()] >= 1, "the gateway resolved the name through DNS"
    assert set(answered) == set(versions.values()), (
        f"answers came from {dict(answered)}, not from every server"
    )
    # Round robin alternates; allow for the first calls going out while the
    # second connection is still being made.
    assert min(answered.values()) >= CALLS // 4, dict(answered)


def test_without_round_robin_one_channel_stays_on_one_server(two_model_servers, dns):
    """The control: gRPC's default policy (what the gateway used before) sends every call to one address."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    port, _ = two_model_servers
    target = f"dns://127.0.0.1:{dns.port}/{BACKEND_NAME}:{port}"
    peers = collections.Counter()
    with grpc.insecure_channel(target) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
        for _ in range(CALLS // 2):
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MODEL
            response = status(request, timeout=10)
            peers[max(s.version for s in response.model_version_status)] += 1
    assert len(peers) == 1, dict(peers)


@pytest.mark.parametrize(
    "target",
    [
        "dns:///tf-serving-grpc.cifarflow.svc.cluster.local:8500",
        "dns://10.96.0.10:53/tf-serving-grpc.cifarflow.svc.cluster.local:8500",
        "ipv4:10.0.0.1:8500,10.0.0.2:8500",
        "ipv6:[fd00::1]:8500,[fd00::2]:8500",
    ],
)
def test_multi_address_targets_get_round_robin(target):
    GatewayConfig(backend=target)
    options = dict(channel_options(target))
    assert json.loads(options["grpc.service_config"]) == json.loads(ROUND_ROBIN_SERVICE_CONFIG)


@pytest.mark.parametrize("target", ["tf-serving:8500", "127.0.0.1:8500", "[::1]:8500"])
def test_plain_host_port_keeps_one_connection(target):
    GatewayConfig(backend=target)
    assert channel_options(target) == []


@pytest.mark.parametrize(
    "target",
    ["tf-serving", "dns:///tf-serving-grpc", "unix:/tmp/grpc.sock", "http://tf-serving:8500"],
)
def test_other_backend_forms_are_refused_with_the_accepted_ones(target):
    with pytest.raises(BadInputError, match="dns:///NAME:PORT"):
        GatewayConfig(backend=target)

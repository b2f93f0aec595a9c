"""Which model servers the gateway's backend address names, and how calls are spread over them.

A plain `HOST:PORT` is one gRPC connection: behind a Kubernetes ClusterIP
Service, kube-proxy picks one pod per TCP connection, so every call of the
gateway's one HTTP/2 channel lands on the same model server however many
run. A target with a gRPC resolver scheme names every address at once:
`dns:///NAME:PORT` (every A record, e.g. of a headless Service, re-resolved
when a connection drops), `ipv4:A:P,B:P`, `ipv6:[A]:P,[B]:P`. For those the
channel gets gRPC's `round_robin` policy, which keeps a connection to each
address and sends each call to the next one.
"""

from __future__ import annotations

import json
import re

from cifarflow.errors import BadInputError

# gRPC resolver schemes that can name several addresses (gRPC's naming doc:
# https://github.com/grpc/grpc/blob/master/doc/naming.md).
MULTI_ADDRESS_SCHEMES = ("dns", "ipv4", "ipv6")
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*):(?!\d+$)")
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


def resolver_scheme(target: str) -> str | None:
    """The gRPC resolver scheme `target` names (`dns`, `ipv4`, ...), None for plain HOST:PORT."""
    if _HOST_PORT.match(target):
        return None
    match = _SCHEME.match(target)
    return match["scheme"] if match else None


def validate_target(target: str) -> None:
    """Raises BadInputError unless `target` is HOST:PORT or a multi-address gRPC target.

    Raises:
        BadInputError: with the forms the gateway accepts.
    """
    scheme = resolver_scheme(target)
    if scheme is None and _HOST_PORT.match(target):
        return
    if scheme in MULTI_ADDRESS_SCHEMES and target.rpartition(":")[2].isdigit():
        return
    raise BadInputError(
        f"--backend must be HOST:PORT, dns:///NAME:PORT, ipv4:ADDR:PORT[,ADDR:PORT...] or "
        f"ipv6:[ADDR]:PORT[,...], got {target!r}"
    )


def balances_per_call(target: str) -> bool:
    """True when calls to `target` are spread round robin over every address it names."""
    return resolver_scheme(target) in MULTI_ADDRESS_SCHEMES


def channel_options(target: str) -> list[tuple[str, str]]:
    """The gRPC channel options that choose how calls to `target` are balanced.

    Plain HOST:PORT keeps gRPC's default (`pick_first`): one connection, which
    is what a single server or a ClusterIP Service gives anyway.
    """
    if balances_per_call(target):
        return [("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG)]
    return []

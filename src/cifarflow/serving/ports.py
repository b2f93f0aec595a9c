"""Binding the ports a server listens on, with one error for a port it cannot have.

The model server, the gateway and the gateway's workers all start the same
way when a port is taken or not this host's: one line naming the address,
exit code 5, and nothing left running.
"""

from __future__ import annotations

import socket
from typing import Any

from cifarflow.errors import CifarflowError


class PortUnavailable(CifarflowError, OSError):
    """A port a server was asked to listen on cannot be bound (in use, or not this host's)."""

    exit_code = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for HTTP (port 0: a free one), so the port is known before serving.

    Raises:
        PortUnavailable: the address cannot be bound.
    """
    sock = _socket(host, "HTTP", port, socket.SO_REUSEADDR)
    sock.listen(1024)
    return sock


def reserve_grpc_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket that holds a gRPC port for workers to share.

    Each worker's gRPC server binds the same port with SO_REUSEPORT while
    this socket keeps port 0's pick (and the port) for them.

    Raises:
        PortUnavailable: the address cannot be bound.
    """
    return _socket(host, "gRPC", port, socket.SO_REUSEPORT)


def _socket(host: str, protocol: str, port: int, option: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortUnavailable(
            f"cannot bind {protocol} to {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


def add_grpc_port(server: Any, address: str) -> int:
    """Binds a grpcio server (sync or aio) to `address` and returns the port it got.

    grpcio reports a failed bind in two ways depending on its version: older
    releases return port 0, newer ones (1.85 here) raise RuntimeError.

    Raises:
        PortUnavailable: the address cannot be bound.
    """
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise PortUnavailable(f"cannot bind gRPC to {address} (in use, or not this host's)")
    return port

"""Loopback port selection and probing."""

from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"


def pick_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that are free right now.

    All picking sockets stay open until every port is picked, so the kernel never hands out one
    port twice. Another process can still take a port before the component binds it: the
    supervisor retries a component that dies with "address in use".
    """
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
    return ports


def accepts_connections(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to the port opens within the timeout: the server is listening."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False

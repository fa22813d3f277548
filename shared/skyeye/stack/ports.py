"""Loopback port selection and probing."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Ports below this are privileged or well known.
_FIRST_PORT = 10000
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_EPHEMERAL = (32768, 60999)
# candidates tried before falling back to a kernel-chosen port
_TRIES = 200


def pick_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that are free right now.

    They are picked outside the kernel's ephemeral range, from which it gives every outgoing
    connection its local port: a port picked inside it was, now and then, taken by one of the
    stack's own client connections before its server bound it (Ray's metrics agent lost its
    port that way). All picking sockets stay open until every port is picked, so no port is
    picked twice. Another server can still take a port before the component binds it: the
    supervisor retries a component that dies with "address in use".
    """
    low, high = _ephemeral_range()
    outside = [p for p in range(_FIRST_PORT, 65536) if not low <= p <= high]
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for candidate in random.sample(outside, min(len(outside), _TRIES)):
            if len(ports) == count:
                break
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((LOOPBACK, candidate))
            except OSError:
                continue
            ports.append(candidate)
        # nothing free outside the range (a machine configured so): any free port will do
        while len(ports) < count:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
    return ports


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = (int(v) for v in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _LINUX_EPHEMERAL
    return low, high


def accepts_connections(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to the port opens within the timeout: the server is listening."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False

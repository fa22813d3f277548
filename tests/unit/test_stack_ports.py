from __future__ import annotations

import socket

from skyeye.stack.ports import LOOPBACK, accepts_connections, pick_ports


def test_pick_ports_are_distinct_and_bindable() -> None:
    ports = pick_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, port))


def test_pick_zero_ports() -> None:
    assert pick_ports(0) == []


def test_accepts_connections_sees_a_listener() -> None:
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        port = server.getsockname()[1]
        assert accepts_connections(LOOPBACK, port)
    assert not accepts_connections(LOOPBACK, port)

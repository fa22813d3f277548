from __future__ import annotations

import socket

import pytest

from skyeye.stack import ports as ports_module
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


def test_ports_are_picked_outside_the_ephemeral_range() -> None:
    # outgoing connections get their local ports from that range: one could take a picked port
    low, high = ports_module._ephemeral_range()
    assert low <= high
    assert all(not low <= port <= high for port in pick_ports(20))


def test_a_machine_with_no_port_outside_the_range_still_gets_free_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports_module, "_ephemeral_range", lambda: (1, 65535))
    ports = pick_ports(3)
    assert len(set(ports)) == 3 and all(0 < port < 65536 for port in ports)


def test_a_taken_candidate_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        taken = server.getsockname()[1]
        # only the taken port lies outside the range: it is tried and passed over
        monkeypatch.setattr(ports_module, "_FIRST_PORT", taken)
        monkeypatch.setattr(ports_module, "_ephemeral_range", lambda: (taken + 1, 65535))
        assert taken not in pick_ports(2)

"""User-mode network with an allow-list: the guest reaches the destinations
named, and nothing else (TCP is refused with a reset, UDP dropped)."""

from __future__ import annotations

import socket

import pytest
from net_user_guest import GW_IP, Guest, GuestTcp

from pocketvm.backends.net_user import UserNet, parse_allow


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    s.settimeout(10.0)
    return s


def test_only_allowed_destinations_are_reached():
    allowed, other = listener(), listener()
    net = UserNet(dns="127.0.0.1:9", allow=[f"10.0.2.2:{allowed.getsockname()[1]}"])
    try:
        guest = Guest(net)
        blocked = GuestTcp(guest, GW_IP, other.getsockname()[1], 50010)
        assert not blocked.connect()
        other.settimeout(0.2)
        with pytest.raises(socket.timeout):
            other.accept()  # the host side never saw a connection
        through = GuestTcp(guest, GW_IP, allowed.getsockname()[1], 50011)
        assert through.connect()
        conn, _ = allowed.accept()
        conn.close()
    finally:
        net.close()
        allowed.close()
        other.close()


def test_an_address_without_port_allows_every_port():
    s = listener()
    net = UserNet(dns="127.0.0.1:9", allow=["10.0.2.2"])
    try:
        assert GuestTcp(Guest(net), GW_IP, s.getsockname()[1], 50012).connect()
    finally:
        net.close()
        s.close()


@pytest.mark.parametrize("bad", ["10.0.2", "10.0.2.2:0", "10.0.2.2:70000", "host:80", "10.0.2.256", ""])
def test_bad_entries_are_refused(bad):
    with pytest.raises(ValueError, match="allowed destination"):
        parse_allow(bad)
    with pytest.raises(ValueError):
        UserNet(dns="127.0.0.1:9", allow=[bad])


def test_the_allow_list_survives_a_snapshot_description():
    from pocketvm.machine import NicSpec

    spec = NicSpec("user", [], ["10.0.2.2:8000"])
    assert NicSpec.from_dict(spec.as_dict()) == spec
    assert NicSpec.from_dict(NicSpec("user").as_dict()).allow is None

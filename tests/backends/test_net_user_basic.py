"""User-mode network: ARP, DHCP, ping, UDP NAT and the DNS relay, driven by a scripted guest."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from net_user_guest import (
    BCAST_MAC, DNS_IP, DNS_MAC, GUEST_IP, GUEST_MAC, GW_IP, GW_MAC, Guest, Rx, arp_request, aton, dhcp_frame,
    dhcp_options, icmp_echo, parse_l4, udp_frame,
)

from pocketvm.backends.net_user import UserNet, parse_dns


@pytest.fixture
def net():
    n = UserNet(dns="127.0.0.1:9")
    yield n
    n.close()


@pytest.fixture
def guest(net):
    return Guest(net)


@pytest.fixture
def udp_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5.0)
    yield s
    s.close()


def is_udp_to(port: int):
    return lambda rx: rx.udp is not None and rx.udp[1] == port


# --- ARP ------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "mac"), [(GW_IP, GW_MAC), (DNS_IP, DNS_MAC)])
def test_arp_for_the_gateway_and_dns(guest, target, mac):
    guest.send(arp_request(target))
    rx = guest.expect(lambda rx: rx.arp is not None)
    assert rx.dst_mac == GUEST_MAC and rx.src_mac == mac
    assert rx.arp == (2, mac, target, GUEST_MAC, GUEST_IP)


def test_arp_for_other_addresses_is_not_answered(guest):
    guest.send(arp_request("10.0.2.99"))
    guest.send(arp_request(GUEST_IP, sender="0.0.0.0"))  # a DHCP client's address probe
    guest.send(arp_request("192.168.1.1"))
    guest.sentinel()
    assert guest.other_frames() == []


# --- DHCP ------------------------------------------------------------------------------


def bootp_of(rx: Rx) -> bytes:
    assert rx.udp is not None and rx.udp[:2] == (67, 68) and rx.ip_src == GW_IP
    return rx.udp[2]


def test_dhcp_handshake_broadcast(guest):
    guest.send(dhcp_frame(1, 0x1234, flags=0x8000))
    offer = guest.expect(is_udp_to(68))
    assert offer.dst_mac == BCAST_MAC and offer.ip_dst == "255.255.255.255"
    bootp = bootp_of(offer)
    assert bootp[0] == 2 and struct.unpack_from("!I", bootp, 4)[0] == 0x1234
    assert socket.inet_ntoa(bootp[16:20]) == GUEST_IP and bootp[28:34] == GUEST_MAC
    options = dhcp_options(bootp)
    assert options[53] == b"\x02"
    assert options[54] == aton(GW_IP)
    assert options[1] == aton("255.255.255.0")
    assert options[3] == aton(GW_IP)
    assert options[6] == aton(DNS_IP)
    assert options[51] == struct.pack("!I", 86400)

    guest.send(dhcp_frame(3, 0x1235, bytes((50, 4)) + aton(GUEST_IP) + bytes((54, 4)) + aton(GW_IP), flags=0x8000))
    ack = guest.expect(is_udp_to(68))
    bootp = bootp_of(ack)
    assert ack.ip_dst == "255.255.255.255" and struct.unpack_from("!I", bootp, 4)[0] == 0x1235
    options = dhcp_options(bootp)
    assert options[53] == b"\x05" and socket.inet_ntoa(bootp[16:20]) == GUEST_IP
    assert options[51] == struct.pack("!I", 86400) and options[6] == aton(DNS_IP)


def test_dhcp_unicast_replies_and_renewal(guest):
    guest.send(dhcp_frame(1, 7))  # no broadcast flag: the client can take unicast (udhcpc)
    offer = guest.expect(is_udp_to(68))
    assert offer.dst_mac == GUEST_MAC and offer.ip_dst == GUEST_IP
    guest.send(dhcp_frame(3, 8, bytes((50, 4)) + aton(GUEST_IP)))
    assert dhcp_options(bootp_of(guest.expect(is_udp_to(68))))[53] == b"\x05"
    # Renewal: unicast from the leased address, ciaddr set, no requested-address option.
    guest.send(dhcp_frame(3, 9, ciaddr=GUEST_IP, src=GUEST_IP, dst=GW_IP))
    renew = guest.expect(is_udp_to(68))
    assert renew.ip_dst == GUEST_IP and dhcp_options(bootp_of(renew))[53] == b"\x05"


def test_dhcp_nak_for_another_address_and_silence_for_another_server(guest):
    guest.send(dhcp_frame(3, 10, bytes((50, 4)) + aton("10.0.2.77")))
    nak = guest.expect(is_udp_to(68))
    assert nak.ip_dst == "255.255.255.255" and dhcp_options(bootp_of(nak))[53] == b"\x06"
    guest.send(dhcp_frame(3, 11, bytes((50, 4)) + aton(GUEST_IP) + bytes((54, 4)) + aton("10.0.2.9")))
    guest.send(dhcp_frame(7, 12, ciaddr=GUEST_IP, src=GUEST_IP, dst=GW_IP))  # RELEASE
    guest.sentinel()
    assert guest.other_frames() == []


# --- ICMP -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [GW_IP, DNS_IP])
def test_ping_the_gateway_and_dns(guest, target):
    payload = bytes(range(56))
    guest.send(icmp_echo(target, 0x4242, 3, payload))
    rx = guest.expect(lambda rx: rx.icmp is not None)
    assert rx.ip_src == target and rx.ip_dst == GUEST_IP and rx.dst_mac == GUEST_MAC
    assert rx.icmp[0] == 0 and rx.icmp[4:8] == struct.pack("!HH", 0x4242, 3) and rx.icmp[8:] == payload


def test_other_icmp_is_dropped(guest):
    guest.send(icmp_echo("192.0.2.1", 1, 1, b"outside"))
    bad = bytearray(icmp_echo(GW_IP, 1, 2, b"bad checksum"))
    bad[-1] ^= 0xFF
    guest.send(bytes(bad))
    guest.sentinel()
    assert guest.other_frames() == []


# --- UDP ------------------------------------------------------------------------------


def test_udp_round_trip_via_the_gateway(guest, udp_server):
    port = udp_server.getsockname()[1]
    guest.send(udp_frame(GW_IP, 40000, port, b"hello host"))
    data, peer = udp_server.recvfrom(2048)
    assert data == b"hello host" and peer[0] == "127.0.0.1"
    udp_server.sendto(b"hello guest", peer)
    rx = guest.expect(is_udp_to(40000))
    assert rx.ip_src == GW_IP and rx.src_mac == GW_MAC and rx.udp == (port, 40000, b"hello guest")
    # The same flow carries the next datagram from the same host port.
    guest.send(udp_frame(GW_IP, 40000, port, b"again"))
    assert udp_server.recvfrom(2048) == (b"again", peer)


def test_udp_reply_larger_than_the_mtu_arrives_in_fragments(guest, udp_server):
    port = udp_server.getsockname()[1]
    guest.send(udp_frame(GW_IP, 40001, port, b"?"))
    _, peer = udp_server.recvfrom(2048)
    big = bytes(i * 7 & 0xFF for i in range(4000))
    udp_server.sendto(big, peer)
    fragments = [guest.expect(lambda rx: rx.proto == 17 and rx.ip_dst == GUEST_IP) for _ in range(3)]
    assert len({f.ip_id for f in fragments}) == 1
    assert all(len(f.frame) <= 1514 for f in fragments)
    whole = b"".join(f.ip_payload for f in sorted(fragments, key=lambda f: f.frag & 0x1FFF))
    assert [f.frag & 0x2000 for f in fragments] == [0x2000, 0x2000, 0]
    rx = fragments[0]
    parse_l4(rx, whole)
    assert rx.udp == (port, 40001, big)


def test_dns_is_relayed_to_the_configured_resolver(udp_server):
    port = udp_server.getsockname()[1]
    net = UserNet(dns=f"127.0.0.1:{port}")
    try:
        guest = Guest(net)
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
        guest.send(udp_frame(DNS_IP, 5353, 53, query, dst_mac=DNS_MAC))
        data, peer = udp_server.recvfrom(2048)
        assert data == query
        udp_server.sendto(query[:2] + b"\x81\x80" + query[4:], peer)
        rx = guest.expect(is_udp_to(5353))
        assert rx.ip_src == DNS_IP and rx.udp[0] == 53 and rx.udp[2][2:4] == b"\x81\x80"
    finally:
        net.close()


def test_udp_to_dns_on_another_port_or_to_the_network_goes_nowhere(guest, net):
    guest.send(udp_frame(DNS_IP, 5000, 54, b"x"))
    guest.send(udp_frame("10.0.2.77", 5000, 53, b"x"))
    guest.send(udp_frame("224.0.0.251", 5353, 5353, b"mdns"))
    guest.send(udp_frame("255.255.255.255", 5000, 9, b"x", dst_mac=BCAST_MAC))
    guest.send(udp_frame("127.0.0.1", 5000, 9, b"x"))
    guest.sentinel()
    assert net.counts()["udp_flows"] == 0


def test_udp_flows_are_capped_and_expire(udp_server):
    net = UserNet(dns="127.0.0.1:9")
    net.max_udp_flows = 4
    net.udp_idle_timeout = 0.2
    try:
        guest = Guest(net)
        port = udp_server.getsockname()[1]
        for sport in range(41000, 41010):
            guest.send(udp_frame(GW_IP, sport, port, b"%d" % sport))
        guest.sentinel()
        assert net.counts()["udp_flows"] == 4
        # The newest flow is one of the four kept and still works.
        for _ in range(10):
            data, peer = udp_server.recvfrom(2048)
        assert data == b"41009"
        udp_server.sendto(b"back", peer)
        assert guest.expect(is_udp_to(41009)).udp[2] == b"back"
        deadline = time.monotonic() + 5.0
        while net.counts()["udp_flows"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert net.counts()["udp_flows"] == 0
    finally:
        net.close()


# --- configuration --------------------------------------------------------------------


def test_dns_parameter_forms():
    assert parse_dns("192.0.2.53") == (socket.AF_INET, ("192.0.2.53", 53))
    assert parse_dns("127.0.0.1:5353") == (socket.AF_INET, ("127.0.0.1", 5353))
    assert parse_dns("[::1]:5353") == (socket.AF_INET6, ("::1", 5353, 0, 0))
    assert parse_dns("::1") == (socket.AF_INET6, ("::1", 53, 0, 0))
    for bad in ("resolver.example", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            parse_dns(bad)


def test_bad_host_forwards_are_refused():
    for bad in [("udp", 1, 2), ("tcp", -1, 22), ("tcp", 1, 0), ("tcp", 70000, 22), ("tcp", 1)]:
        with pytest.raises(ValueError):
            UserNet(host_forwards=[bad])

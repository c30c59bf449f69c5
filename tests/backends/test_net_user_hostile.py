"""User-mode network against a hostile guest: malformed frames, bad checksums, floods, and close()."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time

import pytest
from net_user_guest import (
    ACK, BCAST_MAC, DNS_IP, GUEST_IP, GW_IP, GW_MAC, PSH, RST, SYN, Guest, GuestTcp, arp_request, aton, csum,
    dhcp_frame, eth, icmp_echo, ip_packet, pseudo, tcp_frame, udp_frame,
)

from pocketvm.backends.net_user import UserNet


@pytest.fixture
def ports():
    """A UDP echo-less sink and a TCP port that refuses: the only host ports the fuzz may reach."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # held but not listening: connections to it are refused
    yield sink.getsockname()[1], closed.getsockname()[1]
    sink.close()
    closed.close()


def no_exceptions_logged(caplog) -> None:
    errors = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert errors == [], errors[0].getMessage()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def fuzz_frames(rng: random.Random, udp_port: int, tcp_port: int) -> list[bytes]:
    def l4(proto: int, dst: str) -> bytes:
        body = rng.randbytes(rng.randrange(0, 80))
        if proto == 17:
            sport, dport = rng.choice([68, 5000, 40000]), rng.choice([67, 53, udp_port])
            header = struct.pack("!HHHH", sport, dport, 8 + len(body), 0)
            c = csum(pseudo(GUEST_IP, dst, 17, 8 + len(body)), header, body)
            return header[:6] + struct.pack("!H", c) + body
        if proto == 6:
            header = struct.pack(
                "!HHIIBBHHH", rng.randrange(1024, 1040), tcp_port, rng.getrandbits(32), rng.getrandbits(32),
                rng.randrange(5, 16) << 4, rng.getrandbits(8), rng.getrandbits(16), 0, 0,
            )
            options = rng.randbytes((header[12] >> 4) * 4 - 20)
            seg = header + options + body
            c = csum(pseudo(GUEST_IP, dst, 6, len(seg)), seg)
            return seg[:16] + struct.pack("!H", c) + seg[18:]
        if proto == 1:
            msg = bytes((rng.choice([8, 0, 3, 13]), rng.randrange(0, 2), 0, 0)) + body
            return msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
        return body

    valid = [
        arp_request(GW_IP), arp_request(DNS_IP), dhcp_frame(1, 1, flags=0x8000),
        dhcp_frame(3, 2, bytes((50, 4)) + aton(GUEST_IP)), icmp_echo(GW_IP, 1, 1, b"x" * 40),
        udp_frame(GW_IP, 40000, udp_port, b"payload"), udp_frame(DNS_IP, 40000, 53, b"query"),
        tcp_frame(GW_IP, 1024, tcp_port, 1, 0, SYN, mss=1460), tcp_frame(GW_IP, 1025, tcp_port, 1, 1, ACK, payload=b"d"),
    ]
    frames: list[bytes] = []
    for base in valid:  # every truncation of every kind of frame
        frames += [base[:n] for n in range(len(base))]
    for _ in range(3000):
        kind = rng.randrange(6)
        if kind == 0:  # noise
            frames.append(rng.randbytes(rng.randrange(0, 200)))
        elif kind == 1:  # noise behind a plausible Ethernet header
            frames.append(eth(rng.randbytes(rng.randrange(0, 200)), rng.choice([0x0800, 0x0806, 0x86DD])))
        elif kind == 2:  # a valid frame with a few bytes changed (the destination address kept)
            frame = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 5)):
                i = rng.randrange(len(frame))
                if not 30 <= i < 34:
                    frame[i] = rng.getrandbits(8)
            frames.append(bytes(frame))
        elif kind == 3:  # checksums right, contents random: reaches the protocol code
            proto = rng.choice([1, 6, 17, 17, 6, rng.getrandbits(8)])
            dst = rng.choice([GW_IP, DNS_IP, "10.0.2.255", "255.255.255.255", "10.0.2.77"])
            dst_mac = rng.choice([GW_MAC, BCAST_MAC])
            frames.append(eth(ip_packet(GUEST_IP, dst, proto, l4(proto, dst), frag=rng.choice([0, 0, 0x4000, 0x2000, 1])), dst=dst_mac))
        elif kind == 5:  # DHCP with random options
            options = rng.randbytes(rng.randrange(0, 40))
            if rng.random() < 0.5:
                options = bytes((50, rng.choice([4, 3, 0]))) + aton(GUEST_IP) + options
            frames.append(dhcp_frame(rng.randrange(0, 10), rng.getrandbits(32), options, flags=rng.choice([0, 0x8000]),
                                     ciaddr=rng.choice(["0.0.0.0", GUEST_IP, "10.0.2.99"]), end=rng.random() < 0.5))
        else:  # an IPv4 header with random fields and a right header checksum
            ihl = rng.randrange(0, 16)
            header = bytearray(rng.randbytes(max(ihl * 4, 20)))
            header[0] = rng.choice([0x40, 0x45, 0x60]) | ihl if rng.random() < 0.9 else header[0]
            header[12:20] = aton(GUEST_IP) + aton(GW_IP)
            header[10:12] = b"\0\0"
            header[10:12] = struct.pack("!H", csum(bytes(header[: ihl * 4 or 20])))
            frames.append(eth(bytes(header) + rng.randbytes(rng.randrange(0, 60))))
    return frames


def test_fuzzed_frames_never_break_the_backend(caplog, ports):
    caplog.set_level(logging.DEBUG, logger="pocketvm.backends")
    udp_port, tcp_port = ports
    net = UserNet(dns=f"127.0.0.1:{udp_port}")
    net.max_udp_flows = 8
    net.max_tcp_conns = 8
    try:
        guest = Guest(net)
        frames = fuzz_frames(random.Random(20240601), udp_port, tcp_port)
        for i, frame in enumerate(frames):
            guest.send(frame)
            if i % 500 == 499:
                guest.sentinel()  # let the backend keep up: the inbox is bounded too
                guest.other_frames()
        guest.sentinel()
        assert net._thread.is_alive()
        counts = net.counts()
        assert counts["udp_flows"] <= 8 and counts["tcp_conns"] <= 8 and counts["dropped_in"] == 0
        # Nothing the fuzz did went anywhere but the host's loopback.
        assert all(k[2] in (aton(GW_IP), aton(DNS_IP)) for k in list(net._udp) + list(net._tcp))
        # Still a working network.
        guest.other_frames()
        guest.send(arp_request(GW_IP))
        assert guest.expect(lambda rx: rx.arp is not None).arp[2] == GW_IP
    finally:
        net.close()
    no_exceptions_logged(caplog)


def test_bad_checksums_and_fragments_are_dropped(ports):
    udp_port, tcp_port = ports
    net = UserNet(dns="127.0.0.1:9")
    try:
        guest = Guest(net)
        bad_udp = bytearray(udp_frame(GW_IP, 40000, udp_port, b"payload"))
        bad_udp[-1] ^= 1
        bad_ip = bytearray(udp_frame(GW_IP, 40001, udp_port, b"payload"))
        bad_ip[14 + 8] ^= 1  # the TTL, under the header checksum
        bad_tcp = bytearray(tcp_frame(GW_IP, 1024, tcp_port, 1, 0, SYN))
        bad_tcp[-1] ^= 1
        seg = udp_frame(GW_IP, 40002, udp_port, b"fragment")[34:]
        fragment = eth(ip_packet(GUEST_IP, GW_IP, 17, seg, frag=0x2000))  # more fragments follow
        later = eth(ip_packet(GUEST_IP, GW_IP, 17, seg, frag=0x0001))  # at offset 8
        spoofed = udp_frame(GW_IP, 40003, udp_port, b"x", src="192.0.2.1")  # not from the guest's network
        for frame in (bad_udp, bad_ip, bad_tcp, fragment, later, spoofed):
            guest.send(bytes(frame))
        guest.sentinel()
        assert guest.other_frames() == []
        assert net.counts()["udp_flows"] == 0 and net.counts()["tcp_conns"] == 0
    finally:
        net.close()


def test_connection_flood_is_capped(ports):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # never accepts: the kernel completes the connections anyway
    net = UserNet(dns="127.0.0.1:9")
    net.max_tcp_conns = 4
    try:
        guest = Guest(net)
        port = listener.getsockname()[1]
        conns = [GuestTcp(guest, GW_IP, port, 2000 + i) for i in range(10)]
        results = [c.connect() for c in conns]
        assert results == [True] * 4 + [False] * 6
        assert net.counts()["tcp_conns"] == 4
    finally:
        net.close()
        listener.close()


def test_queues_toward_and_from_the_guest_are_bounded():
    net = UserNet(dns="127.0.0.1:9")
    net.max_queued_frames = 100
    try:
        ping = icmp_echo(GW_IP, 1, 1, b"x")
        net.send(bytes(14 + 65536))  # longer than any frame can be
        for _ in range(250):  # not attached yet: nothing drains the inbox
            net.send(ping)
        assert net.counts()["inbox"] == 100 and net.counts()["dropped_in"] == 151
        woken = threading.Event()
        net.attach(woken.set)  # a guest that never takes its frames
        wait_for(lambda: net.counts()["inbox"] == 0)
        for _ in range(50):
            net.send(ping)
        wait_for(lambda: net.counts()["inbox"] == 0)
        assert woken.is_set()
        assert net.counts()["outbox"] == 100 and net.counts()["dropped_out"] == 50
    finally:
        net.close()


def test_a_guest_that_ignores_the_window_cannot_grow_the_buffer():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepted by the kernel, never read: the host socket fills up
    net = UserNet(dns="127.0.0.1:9")
    try:
        guest = Guest(net)
        tcp = GuestTcp(guest, GW_IP, listener.getsockname()[1], 3000)
        assert tcp.connect()
        blob = b"\xaa" * 1460
        for _ in range(12):  # 8 MiB, beyond any window and what the host kernel buffers
            for _ in range(500):
                tcp.tx(ACK | PSH, blob)
                tcp.snd_nxt = (tcp.snd_nxt + len(blob)) & 0xFFFFFFFF
            guest.sentinel()  # paced: the backend's inbox is bounded too
        (conn,) = net._tcp.values()
        assert len(conn.to_host) <= net.tcp_buffer
        # What the backend took is what the host kernel buffers plus its own
        # bounded buffer, not everything sent.
        guest.other_frames()
        tcp.tx(ACK, seq=(tcp.snd_nxt + 10) & 0xFFFFFFFF)  # out of window: answered with an ACK
        rx = guest.expect(tcp.match)
        taken = (rx.tcp.ack - tcp.iss - 1) & 0xFFFFFFFF
        assert taken < 6000 * len(blob)
    finally:
        net.close()
        listener.close()


def test_a_guest_that_never_acknowledges_is_given_up_on():
    received = threading.Event()

    def host_side(conn: socket.socket) -> None:
        try:
            conn.sendall(b"\x55" * (4 << 20))
        except OSError:
            received.set()  # reset by the backend giving up

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    net = UserNet(dns="127.0.0.1:9")
    net.tcp_rto = 0.01
    net.tcp_rto_max = 0.02
    net.tcp_max_retries = 3
    try:
        guest = Guest(net)
        tcp = GuestTcp(guest, GW_IP, listener.getsockname()[1], 3001)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                host_side(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert tcp.connect()
        # Never acknowledge: data, retransmissions, then a reset.
        rst = guest.expect(lambda rx: tcp.match(rx) and rx.tcp.flags & RST)
        assert rst.tcp.flags & RST
        thread.join(10.0)
        assert received.is_set()
        assert net.counts()["tcp_conns"] == 0
        sent = [rx for rx in guest.other_frames() if tcp.match(rx) and rx.tcp.payload]
        assert sum(len(rx.tcp.payload) for rx in sent) <= 4 * 65535  # bounded by the window, times the tries
    finally:
        net.close()
        listener.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_releases_every_socket():
    before = open_fds()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    net = UserNet(host_forwards=[("tcp", 0, 2225)], dns="127.0.0.1:9")
    client = None
    try:
        guest = Guest(net)
        guest.send(udp_frame(GW_IP, 40000, sink.getsockname()[1], b"x"))
        established = GuestTcp(guest, GW_IP, listener.getsockname()[1], 3002)
        assert established.connect()
        connecting = GuestTcp(guest, GW_IP, listener.getsockname()[1], 3003)
        connecting.snd_una = connecting.snd_nxt = connecting.iss
        connecting.tx(SYN, mss=1460)  # left half open
        client = socket.create_connection(("127.0.0.1", net.forwarded_ports[0]), timeout=5.0)
        guest.expect(lambda rx: rx.tcp is not None and rx.tcp.dport == 2225)  # the forward's SYN, unanswered
        guest.sentinel()
        counts = net.counts()
        assert counts["udp_flows"] == 1 and counts["tcp_conns"] == 3
        assert open_fds() > before
    finally:
        net.close()
        net.close()  # idempotent
    assert not net._thread.is_alive()
    net.send(b"\0" * 60)  # after close: ignored, never raises
    assert net.receive() is None
    client.close()
    listener.close()
    sink.close()
    assert open_fds() == before

"""A hostile guest (and hostile host programs) against virtio-vsock: seeded fuzzes.

Whatever comes in, the device must not crash (the transport would report an
internal device error), must keep every buffer within its limits, and must
still carry a fresh connection afterwards.
"""

from __future__ import annotations

import logging
import random
import socket

import pytest
from virtio_guest import PER_DESCRIPTOR, scramble_rings
from vsock_guest import VsockGuest

from pocketvm.devices import virtio_mmio as m
from pocketvm.devices import virtio_vsock as vs

OPS = list(range(10))
PORTS = [52, 1024, 50000, 50001, vs.FIRST_HOST_PORT, vs.FIRST_HOST_PORT + 1, 0xFFFF_FFFF]


@pytest.fixture
def guest(tmp_path):
    g = VsockGuest(tmp_path / "vm.vsock")
    yield g
    g.close()


def check_bounds(g: VsockGuest) -> None:
    dev = g.dev
    assert len(dev.conns) <= dev.max_connections
    for conn in dev.conns.values():
        assert len(conn.to_host) <= dev.buf_alloc
        assert len(conn.to_guest) <= vs.TO_GUEST_MAX
    assert len(dev._orphan_resets) <= vs.MAX_ORPHAN_RESETS
    assert g.host.open_streams <= dev.max_connections + g.host.max_handshakes


def no_crash(caplog: pytest.LogCaptureFixture) -> None:
    crashes = [r for r in caplog.records if "crashed" in r.getMessage() or "internal device error" in r.getMessage()]
    assert not crashes, crashes[0].getMessage()


def works_afterwards(g: VsockGuest) -> None:
    """After a driver reset, a host connection carries bytes both ways."""
    g.rx.set(m.STATUS, 0)
    for d in g.drivers:  # fresh rings, as a driver sets them up
        d.avail_idx = d.last_used = d.next_desc = 0
        g.ram.write(d.DESC, bytes(0xC000))
    g.tx_free = list(range(0, g.qsize, 2))
    g.received.clear()
    g.start()
    s = g.host_connect(52)
    # Host programs of the fuzz may still be in the listen backlog with a
    # CONNECT line: accept every request until ours has its answer.
    s.setblocking(False)
    line = b""

    def answered() -> bool:
        nonlocal line
        for p in [p for p in g.received if p.op == vs.OP_REQUEST]:
            g.received.remove(p)
            g.send(p.dst_port, p.src_port, vs.OP_RESPONSE)
        try:
            line += s.recv(64)
        except BlockingIOError:
            pass
        return line.endswith(b"\n")

    g.pump(answered)
    s.settimeout(10)
    host_port = int(line.split()[1])
    s.sendall(b"still alive")
    rw = g.wait_packet(vs.OP_RW)
    while rw.src_port != host_port:
        rw = g.wait_packet(vs.OP_RW)
    assert rw.payload == b"still alive"
    g.send(52, host_port, vs.OP_RW, b"yes")
    assert s.recv(16) == b"yes"
    s.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_packets_from_a_hostile_guest(guest, tmp_path, seed, caplog):
    rnd = random.Random(seed)
    caplog.set_level(logging.WARNING)
    guest.start()
    guest.dev.max_connections = 8
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.path}_1024")
    lst.listen(64)
    lst.setblocking(False)
    peers: list[socket.socket] = []
    hosts: list[socket.socket] = []
    for step in range(400):
        action = rnd.random()
        if action < 0.55:
            length = rnd.choice([0, 1, 100, 4096, 65536, 65537, 1 << 31])
            payload = bytes(rnd.randrange(256) for _ in range(min(length, 64))) * (min(length, 65536) // 64 or 1)
            payload = payload[: rnd.choice([0, len(payload), len(payload) // 2])]
            hdr = guest.header(
                rnd.choice(PORTS), rnd.choice(PORTS), rnd.choice(OPS), length=length & 0xFFFF_FFFF,
                flags=rnd.randrange(8), buf_alloc=rnd.choice([0, 1, 4096, 1 << 20, 0xFFFF_FFFF]),
                fwd_cnt=rnd.randrange(1 << 32), src_cid=rnd.choice([3, 3, 3, 2, 4, 1 << 40]),
                dst_cid=rnd.choice([2, 2, 2, 3, 0xFFFF_FFFF, 1 << 33]), typ=rnd.choice([1, 1, 1, 2, 0]),
            )  # fmt: skip
            if rnd.random() < 0.6:
                # Well-formed, on a connection that exists or could: deeper into the state machine.
                keys = list(guest.dev.conns) or [(rnd.choice([50000, 50001]), 1024)]
                gport, hport = rnd.choice(keys)
                op = rnd.choice([vs.OP_REQUEST, vs.OP_RESPONSE, vs.OP_RW, vs.OP_RW, vs.OP_RW, vs.OP_SHUTDOWN,
                                 vs.OP_CREDIT_UPDATE, vs.OP_CREDIT_REQUEST, vs.OP_RST])  # fmt: skip
                payload = payload if op == vs.OP_RW else b""
                hdr = guest.header(gport, hport, op, length=len(payload), flags=rnd.randrange(4),
                                   buf_alloc=rnd.choice([0, 4096, 1 << 18, 0xFFFF_FFFF]), fwd_cnt=rnd.randrange(1 << 20))
            elif rnd.random() < 0.1:
                hdr = hdr[: rnd.randrange(len(hdr))]
            guest.send_raw(hdr, payload, strict=False)
        elif action < 0.65:
            hosts.append(guest.host_connect(rnd.choice([52, 1024, 7])) if rnd.random() < 0.8 else _garbage(guest, rnd))
        elif action < 0.75 and hosts:
            h = rnd.choice(hosts)
            try:
                h.setblocking(False)
                h.send(bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 100, 5000]))))
            except OSError:
                pass
        elif action < 0.8 and hosts:
            hosts.pop(rnd.randrange(len(hosts))).close()
        elif action < 0.9:
            try:
                peer, _ = lst.accept()
                peers.append(peer)
                peer.setblocking(False)
                peer.send(b"from the host program " * rnd.randrange(1, 50))
            except OSError:
                pass
        elif guest.rx_outstanding() < guest.qsize:
            # Receive buffers of odd sizes, also too small for a header.
            size = rnd.choice([0, 10, 44, 45, 4140])
            idx = guest.rx.next_desc
            guest.rx.next_desc = (idx + 1) % guest.qsize
            guest.rx.write_desc(idx, guest.rx_addr[idx], size, 2, 0)
            guest.rx.make_available(idx)
            guest.rx.notify(vs.RX)
        guest.dev.poll()
        guest.collect(repost=rnd.random() < 0.7)
        check_bounds(guest)
        assert not guest.mmio.status & 0x40, "the device asked for a reset"
    no_crash(caplog)
    # The fuzz got past the header checks. (How far exactly depends on when
    # the host sockets become ready, so the run is seeded but not exact.)
    assert guest.dev.stats["connections"] >= 5, guest.dev.stats
    for sock in hosts + peers + [lst]:
        sock.close()
    works_afterwards(guest)
    no_crash(caplog)


def _garbage(g: VsockGuest, rnd: random.Random) -> socket.socket:
    s = g.host_socket()
    s.sendall(rnd.choice([b"CONNECT 52", b"\n", b"CONNECT 99999999999\n", bytes(rnd.randrange(256) for _ in range(50))]))
    return s


@pytest.mark.parametrize("seed", range(4))
def test_scrambled_rings(guest, seed, caplog):
    """Garbage descriptors and available rings on every queue."""
    rnd = random.Random(100 + seed)
    guest.start()
    s = guest.host_connect(52)
    guest.pump(lambda: bool(guest.dev.conns))
    for _ in range(30):
        q = rnd.randrange(3)
        d = guest.drivers[q]
        scramble_rings(d, rnd, [d.DESC, guest.rx_addr[0], PER_DESCRIPTOR, 0, 1 << 40], [0, 1, 16, 44, 4140, 1 << 31],
                       guest.qsize)  # fmt: skip
        d.notify(q)
        guest.dev.poll()
        check_bounds(guest)
    no_crash(caplog)
    s.close()
    works_afterwards(guest)


def test_flood_of_connection_requests_and_orphans(guest, tmp_path):
    """Thousands of requests to a listener and packets for no connection:
    the connection cap and the bounded reset queue hold, with no rx buffers
    to drain them."""
    guest.start(rx_buffers=0)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.path}_1024")
    lst.listen(1024)
    for i in range(3000):
        guest.send(40000 + i, 1024 if i % 2 else 4444, vs.OP_REQUEST if i % 3 else vs.OP_RW, b"x" if i % 3 == 0 else b"")
        if i % 500 == 0:
            check_bounds(guest)
    check_bounds(guest)
    assert len(guest.dev.conns) == guest.dev.max_connections
    assert len(guest.dev._orphan_resets) == vs.MAX_ORPHAN_RESETS
    lst.close()


def test_half_open_connections_are_reset_after_the_close_timeout(guest):
    """A guest that closes but whose host program never reads: what it left
    behind is dropped after close_timeout."""
    guest.start()
    guest.dev.close_timeout = 0.05
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.path}_1024")
    lst.listen(1)
    guest.send(50000, 1024, vs.OP_REQUEST)
    guest.wait_packet(vs.OP_RESPONSE)
    peer, _ = lst.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = guest.dev.conns[(50000, 1024)]
    sent = 0
    while sent + 65536 <= vs.BUF_ALLOC:
        guest.send(50000, 1024, vs.OP_RW, b"q" * 65536)
        sent += 65536
    assert conn.to_host
    guest.send(50000, 1024, vs.OP_SHUTDOWN, flags=vs.SHUTDOWN_RCV | vs.SHUTDOWN_SEND)
    guest.wait_packet(vs.OP_RST)
    assert guest.dev.conns == {}
    peer.close()
    lst.close()

"""virtio-vsock driven by a scripted guest, with real Unix sockets on the host side."""

from __future__ import annotations

import select
import socket

import pytest
from vsock_guest import VsockGuest

from pocketvm.devices import virtio_mmio as m
from pocketvm.devices import virtio_vsock as vs
from pocketvm.snapshot.format import dump_state, load_state

GP = 50000  # a guest ephemeral port


@pytest.fixture
def guest(tmp_path):
    g = VsockGuest(tmp_path / "vm.vsock")
    yield g
    g.close()


def closed(s: socket.socket) -> bool:
    """True once the host socket `s` has reached its end (peeked, not consumed)."""
    r, _, _ = select.select([s], [], [], 0)
    try:
        return bool(r) and s.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def accept_host(guest: VsockGuest, port: int = 52) -> tuple[socket.socket, vs.Conn]:
    """A host program connects to guest `port`; the guest accepts."""
    s = guest.host_connect(port)
    req = guest.wait_packet(vs.OP_REQUEST)
    assert (req.src_cid, req.dst_cid, req.dst_port, req.type) == (vs.HOST_CID, guest.cid, port, vs.TYPE_STREAM)
    assert req.src_port >= vs.FIRST_HOST_PORT
    guest.send(port, req.src_port, vs.OP_RESPONSE, src_cid=guest.cid)
    assert s.recv(64) == f"OK {req.src_port}\n".encode()
    conn = guest.dev.conns[(port, req.src_port)]
    return s, conn


def test_identity_config_and_queues(guest):
    assert guest.mmio.read(m.DEVICE_ID, 4) == 19
    assert guest.rx.device_features() & vs.F_STREAM
    assert guest.mmio.read(m.CONFIG, 4) == 3 and guest.mmio.read(m.CONFIG + 4, 4) == 0
    guest.mmio.write(m.CONFIG, 4, 99)  # read-only
    assert guest.mmio.read(m.CONFIG, 8) == 3
    guest.start()
    for q in range(3):
        guest.rx.set(m.QUEUE_SEL, q)
        assert guest.rx.reg(m.QUEUE_NUM_MAX) == 256
    guest.rx.set(m.QUEUE_SEL, 3)
    assert guest.rx.reg(m.QUEUE_NUM_MAX) == 0


def test_guest_cid_is_settable_and_checked(tmp_path):
    g = VsockGuest(tmp_path / "c.vsock", cid=1234)
    try:
        assert g.mmio.read(m.CONFIG, 8) == 1234
    finally:
        g.close()
    for bad in (0, 1, 2, 0xFFFF_FFFF, 1 << 32):
        with pytest.raises(ValueError):
            vs.VirtioVsock(g.host, bad)


def test_host_connects_and_bytes_flow_both_ways(guest):
    guest.start()
    s, conn = accept_host(guest)
    hp = conn.host_port
    s.sendall(b"hello guest")
    pkt = guest.wait_packet(vs.OP_RW)
    assert pkt.payload == b"hello guest" and (pkt.src_port, pkt.dst_port) == (hp, 52)
    assert pkt.buf_alloc == vs.BUF_ALLOC
    guest.send(52, hp, vs.OP_RW, b"hello host")
    assert s.recv(64) == b"hello host"
    assert guest.dev.stats["to_guest_bytes"] == 11 and guest.dev.stats["to_host_bytes"] == 10
    s.close()


def test_bytes_after_the_connect_line_belong_to_the_connection(guest):
    guest.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(guest.path))
    s.sendall(b"CONNECT 52\nearly bytes")
    req = guest.wait_packet(vs.OP_REQUEST)
    guest.send(52, req.src_port, vs.OP_RESPONSE)
    assert s.recv(64) == f"OK {req.src_port}\n".encode()
    assert guest.wait_packet(vs.OP_RW).payload == b"early bytes"
    s.close()


def test_guest_refuses_host_connection(guest):
    guest.start()
    s = guest.host_connect(1234)
    req = guest.wait_packet(vs.OP_REQUEST)
    guest.send(1234, req.src_port, vs.OP_RST)
    guest.pump()
    assert s.recv(64) == b""  # closed, no OK
    assert guest.dev.conns == {}


def test_guest_that_never_answers_is_given_up(guest):
    guest.start()
    guest.dev.connect_timeout = 0.05
    s = guest.host_connect(7)
    guest.wait_packet(vs.OP_REQUEST)
    rst = guest.wait_packet(vs.OP_RST)
    assert rst.dst_port == 7
    assert s.recv(64) == b""
    assert guest.dev.conns == {}


@pytest.mark.parametrize(
    "line", [b"CONNECT\n", b"CONNECT -1\n", b"CONNECT 4294967296\n", b"HELLO 52\n", b"CONNECT 52 53\n", b"x" * 40]
)
def test_bad_connect_lines_close_the_stream(guest, line):
    guest.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(guest.path))
    s.sendall(line)
    guest.pump(lambda: closed(s))
    assert not any(p.op == vs.OP_REQUEST for p in guest.received)


def test_silent_host_connection_times_out(guest):
    guest.start()
    guest.host.handshake_timeout = 0.05
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(guest.path))
    s.sendall(b"CONN")
    guest.pump(lambda: closed(s))
    assert s.recv(64) == b""


def test_host_connection_before_driver_is_ready_is_closed(guest):
    s = guest.host_connect(52)
    guest.pump(lambda: closed(s))
    assert s.recv(64) == b""


def test_guest_connects_to_a_host_listener(guest, tmp_path):
    guest.start()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.path}_1024")
    lst.listen(1)
    guest.send(GP, 1024, vs.OP_REQUEST)
    resp = guest.wait_packet(vs.OP_RESPONSE)
    assert (resp.src_port, resp.dst_port, resp.src_cid, resp.dst_cid) == (1024, GP, 2, 3)
    peer, _ = lst.accept()
    peer.settimeout(10)
    guest.send(GP, 1024, vs.OP_RW, b"ping")
    assert peer.recv(16) == b"ping"
    peer.sendall(b"pong")
    assert guest.wait_packet(vs.OP_RW).payload == b"pong"
    # The guest closes: the host sees the end, the device answers with a reset.
    guest.send(GP, 1024, vs.OP_SHUTDOWN, flags=vs.SHUTDOWN_RCV | vs.SHUTDOWN_SEND)
    assert guest.wait_packet(vs.OP_RST).dst_port == GP
    assert peer.recv(16) == b""
    assert guest.dev.conns == {}
    lst.close()
    peer.close()


def test_guest_connect_to_nobody_is_reset(guest):
    guest.start()
    guest.send(GP, 9999, vs.OP_REQUEST)
    rst = guest.wait_packet(vs.OP_RST)
    assert (rst.src_port, rst.dst_port) == (9999, GP)
    assert guest.dev.stats["refused"] == 1


def test_host_half_close_and_guest_half_close(guest):
    guest.start()
    s, conn = accept_host(guest)
    s.sendall(b"request")
    s.shutdown(socket.SHUT_WR)
    assert guest.wait_packet(vs.OP_RW).payload == b"request"
    sd = guest.wait_packet(vs.OP_SHUTDOWN)
    assert sd.flags == vs.SHUTDOWN_SEND
    # The host still reads the answer after its end of sending.
    guest.send(52, conn.host_port, vs.OP_RW, b"answer")
    assert s.recv(64) == b"answer"
    guest.send(52, conn.host_port, vs.OP_SHUTDOWN, flags=vs.SHUTDOWN_SEND)
    guest.wait_packet(vs.OP_RST)
    assert s.recv(64) == b""
    assert guest.dev.conns == {}


def test_host_closing_sends_shutdown_and_guest_reset_ends_it(guest):
    """A host program that closes (not only half-closes) its stream reads
    nothing more: the guest hears both flags."""
    guest.start()
    s, conn = accept_host(guest)
    s.close()
    assert guest.wait_packet(vs.OP_SHUTDOWN).flags == vs.SHUTDOWN_SEND | vs.SHUTDOWN_RCV
    guest.send(52, conn.host_port, vs.OP_RST)
    guest.pump()
    assert guest.dev.conns == {}


def test_a_host_gone_mid_transfer_is_announced_ahead_of_its_last_bytes(guest):
    """The host sends more than the guest has room for and closes. The guest
    hears SHUTDOWN(RCV) before the bytes still held back for it, so an echo
    of them fails in the guest instead of going nowhere unnoticed; the end
    of the stream comes after the bytes, as always."""
    guest.start()
    s, conn = accept_host(guest)
    small = 8192
    guest.send(52, conn.host_port, vs.OP_CREDIT_UPDATE, buf_alloc=small, fwd_cnt=0)
    payload = bytes(i % 251 for i in range(3 * small))
    s.sendall(payload)
    guest.pump(lambda: conn.tx_cnt == small, timeout=10)  # the first buffer-full, then no credit
    s.close()
    got = bytearray()
    order = []
    fwd = 0
    while not order or order[-1] != "end":
        guest.send(52, conn.host_port, vs.OP_CREDIT_UPDATE, buf_alloc=small, fwd_cnt=fwd)
        guest.pump(lambda: bool(guest.received), timeout=10)
        for p in guest.received:
            if p.op == vs.OP_RW:
                got += p.payload
                order.append("data")
            elif p.op == vs.OP_SHUTDOWN:
                order.append({vs.SHUTDOWN_RCV: "no-rcv", vs.SHUTDOWN_RCV | vs.SHUTDOWN_SEND: "end"}[p.flags])
            else:
                assert p.op == vs.OP_CREDIT_UPDATE, p
        guest.received.clear()
        fwd = len(got)
    assert bytes(got) == payload
    assert order.count("no-rcv") == 1 and order.index("no-rcv") < len(order) - 2  # data came after it


def test_guest_writing_to_a_closed_host_is_reset(guest):
    guest.start()
    s, conn = accept_host(guest)
    s.close()
    guest.wait_packet(vs.OP_SHUTDOWN)
    guest.send(52, conn.host_port, vs.OP_RW, b"x" * 1000)
    guest.wait_packet(vs.OP_RST)
    assert guest.dev.conns == {}


def test_slow_host_reader_gets_flow_control(guest):
    """The host does not read: the device holds at most its advertised buffer,
    and a guest that ignores the credit gets the connection reset."""
    guest.start()
    s, conn = accept_host(guest)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hp = conn.host_port
    sent = 0
    chunk = b"g" * 65536
    # Fill the host socket and then our buffer, as a guest honouring credit would.
    for _ in range(200):
        if sent + len(chunk) > vs.BUF_ALLOC + conn.fwd_cnt:
            break
        guest.send(52, hp, vs.OP_RW, chunk)
        sent += len(chunk)
    guest.pump()
    assert len(conn.to_host) <= vs.BUF_ALLOC
    held = sent - conn.fwd_cnt
    assert held == len(conn.to_host) > 0
    # One more byte than the credit: the connection is reset.
    guest.send(52, hp, vs.OP_RW, b"z" * (vs.BUF_ALLOC - held + 1))
    guest.wait_packet(vs.OP_RST)
    assert guest.dev.conns == {}


def test_credit_updates_let_a_guest_stream_through_a_slow_reader(guest):
    """A guest that waits for credit moves 4 MiB through a host reading in
    small bites; the device's buffer never exceeds what it advertised."""
    guest.start()
    s, conn = accept_host(guest)
    s.setblocking(False)
    hp = conn.host_port
    total = 4 << 20
    sent = 0
    got = bytearray()
    peer_fwd = 0
    peak = 0
    while len(got) < total:
        for p in guest.collect():
            if p.op in (vs.OP_CREDIT_UPDATE, vs.OP_RW):
                peer_fwd = p.fwd_cnt
            assert p.op != vs.OP_RST
        credit = vs.BUF_ALLOC - (sent - peer_fwd)
        if credit > 0 and sent < total:
            n = min(credit, 65536, total - sent)
            guest.send(52, hp, vs.OP_RW, bytes([sent // 65536 % 251]) * n)
            sent += n
        guest.dev.poll()
        peak = max(peak, len(conn.to_host))
        try:
            got += s.recv(3000)  # a slow reader: small bites
        except BlockingIOError:
            pass
        if not (credit > 0 and sent < total):
            guest.woken.wait(0.001)
    assert peak <= vs.BUF_ALLOC
    assert len(got) == total
    assert got[:65536] == bytes([0]) * 65536 and got[-1] == (total - 1) // 65536 % 251


def test_slow_guest_reader_gets_flow_control(guest):
    """The host sends 2 MiB to a guest with a small receive buffer that reads
    slowly: the device never sends beyond the guest's credit and reads the
    host only as far as it can pass on."""
    guest.start()
    s, conn = accept_host(guest)
    hp = conn.host_port
    small = 16384
    guest.send(52, hp, vs.OP_CREDIT_UPDATE, buf_alloc=small, fwd_cnt=0)
    total = 2 << 20
    payload = bytes(i % 253 for i in range(total))
    sender = _Sender(s, payload)
    got = bytearray()
    fwd = 0
    while len(got) < total:
        guest.pump(lambda: any(p.op == vs.OP_RW for p in guest.received), timeout=10)
        rws = [p for p in guest.received if p.op == vs.OP_RW]
        guest.received = [p for p in guest.received if p.op != vs.OP_RW]
        for p in rws:
            got += p.payload
        # Never more outstanding than the guest's buffer.
        assert conn.tx_cnt - fwd <= small
        assert len(conn.to_guest) <= vs.TO_GUEST_MAX
        fwd = len(got)  # the guest application read it all: tell the device
        guest.send(52, hp, vs.OP_CREDIT_UPDATE, buf_alloc=small, fwd_cnt=fwd & 0xFFFF_FFFF)
    sender.join()
    assert bytes(got) == payload


def test_packets_end_at_4_kib_steps_of_the_stream(guest):
    """After a packet cut short (the host had sent only 10 bytes), the next
    ends at the next 4 KiB step of the stream and the ones after it start on
    steps: what lets a guest reader get word-aligned kernel copies (the guest
    agent's RX_SKEW)."""
    guest.start()
    s, conn = accept_host(guest)
    s.sendall(b"x" * 10)
    assert len(guest.wait_packet(vs.OP_RW).payload) == 10
    guest.received.clear()
    total = 10 + 3 * vs.PACKET_STEP + 100
    s.sendall(b"y" * (total - 10))
    ends = []
    guest.pump(lambda: conn.tx_cnt == total, timeout=10)
    at = 10
    for p in guest.collect() + guest.received:
        if p.op == vs.OP_RW:
            at += len(p.payload)
            ends.append(at)
    assert at == total and ends[:-1] == [vs.PACKET_STEP * k for k in range(1, len(ends))]
    s.close()


class _Sender:
    def __init__(self, sock: socket.socket, data: bytes):
        import threading

        self.t = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        self.t.start()

    def join(self) -> None:
        self.t.join(10)
        assert not self.t.is_alive()


def test_credit_request_is_answered(guest):
    guest.start()
    s, conn = accept_host(guest)
    guest.send(52, conn.host_port, vs.OP_CREDIT_REQUEST)
    upd = guest.wait_packet(vs.OP_CREDIT_UPDATE)
    assert upd.buf_alloc == vs.BUF_ALLOC and upd.fwd_cnt == 0
    s.close()


def test_packets_for_unknown_connections_get_a_reset_but_resets_do_not(guest):
    guest.start()
    for op in (vs.OP_RW, vs.OP_SHUTDOWN, vs.OP_CREDIT_UPDATE, vs.OP_RESPONSE):
        guest.send(GP, 777, op, b"x" if op == vs.OP_RW else b"")
    guest.send(GP, 777, vs.OP_RST)
    guest.pump(lambda: len(guest.received) >= 4)
    guest.pump()
    assert [p.op for p in guest.received] == [vs.OP_RST] * 4


def test_spoofed_and_misaddressed_packets(guest):
    guest.start()
    guest.send(GP, 1024, vs.OP_REQUEST, src_cid=7)  # not the guest's CID: dropped silently
    guest.send(GP, 1024, vs.OP_REQUEST, dst_cid=5)  # another VM: refused
    guest.send(GP, 1024, vs.OP_REQUEST, typ=2)  # seqpacket: not offered
    guest.pump(lambda: len(guest.received) >= 2)
    assert [p.op for p in guest.received] == [vs.OP_RST, vs.OP_RST]
    assert guest.received[0].src_cid == 5
    assert guest.dev.stats["dropped_packets"] == 1


def test_connection_cap(guest, tmp_path):
    guest.start()
    guest.dev.max_connections = 3
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.path}_80")
    lst.listen(16)
    for i in range(5):
        guest.send(GP + i, 80, vs.OP_REQUEST)
    guest.pump(lambda: len(guest.received) >= 5)
    assert sorted(p.op for p in guest.received) == [vs.OP_RESPONSE] * 3 + [vs.OP_RST] * 2
    assert len(guest.dev.conns) == 3
    s = guest.host_connect(52)  # host side counts too
    guest.pump(lambda: closed(s))
    assert s.recv(16) == b""
    lst.close()


def test_repeated_request_resets_the_connection(guest):
    guest.start()
    s, conn = accept_host(guest)
    guest.send(52, conn.host_port, vs.OP_REQUEST)
    guest.wait_packet(vs.OP_RST)
    assert s.recv(16) == b""
    assert guest.dev.conns == {}


def test_oversized_or_lying_lengths(guest):
    guest.start()
    s, conn = accept_host(guest)
    # Header says 100 bytes of payload, the chain carries 10.
    guest.send_raw(guest.header(52, conn.host_port, vs.OP_RW, length=100), b"x" * 10)
    guest.wait_packet(vs.OP_RST)
    assert s.recv(16) == b""
    # A chain shorter than a header; a header claiming more than 64 KiB.
    guest.send_raw(b"\x03" * 20)
    guest.send_raw(guest.header(GP, 1, vs.OP_RW, length=1 << 20))
    guest.pump()
    assert guest.dev.stats["dropped_packets"] == 3
    assert guest.dev.conns == {}


def test_driver_reset_ends_every_connection(guest):
    guest.start()
    s, _ = accept_host(guest)
    guest.rx.set(m.STATUS, 0)
    assert guest.dev.conns == {}
    assert s.recv(16) == b""


def test_snapshot_restore_sends_transport_reset_and_new_connections_work(guest, tmp_path):
    guest.start()
    s, conn = accept_host(guest)
    state = load_state(dump_state({"vsock": guest.mmio.save()}))["vsock"]
    ram = bytes(guest.ram.read(guest.ram.base, guest.ram.size))
    s.sendall(b"after the snapshot")  # lost with the old VM
    restored = VsockGuest(tmp_path / "restored.vsock")
    try:
        restored.ram.write(restored.ram.base, ram)
        restored.mmio.load(state)
        restored.rx.last_used, restored.ev.last_used = guest.rx.last_used, guest.ev.last_used
        restored.rx.avail_idx, restored.rx.next_desc = guest.rx.avail_idx, guest.rx.next_desc
        restored.tx.avail_idx, restored.tx_free = guest.tx.avail_idx, list(guest.tx_free)
        restored.tx.last_used = guest.tx.last_used
        restored.pump(lambda: restored.events == [vs.EVENT_TRANSPORT_RESET])
        assert restored.dev.conns == {}
        # The guest still has the old connection: its packets get a reset.
        restored.send(52, conn.host_port, vs.OP_RW, b"stale")
        assert restored.wait_packet(vs.OP_RST).dst_port == 52
        # A new connection works.
        s2, _ = accept_host(restored)
        s2.sendall(b"fresh")
        assert restored.wait_packet(vs.OP_RW).payload == b"fresh"
        s2.close()
    finally:
        restored.close()
    s.close()


def test_snapshot_with_other_cid_is_refused(guest, tmp_path):
    state = guest.mmio.save()
    other = VsockGuest(tmp_path / "o.vsock", cid=9)
    try:
        with pytest.raises(ValueError):
            other.mmio.load(state)
    finally:
        other.close()


def test_restore_without_connections_sends_no_reset(guest):
    """A snapshot taken with no connection (a template) restores without the
    reset event, and a host connection goes to the guest at once."""
    guest.start()
    guest.repost_events = False
    state = guest.dev.save()
    assert state["connections"] == 0
    guest.dev.load(state)
    s = guest.host_connect(52)
    assert guest.wait_packet(vs.OP_REQUEST).dst_port == 52
    assert guest.events == []
    s.close()
    # A state from before the count was saved: the reset is sent.
    del state["connections"]
    guest.dev.load(state)
    guest.pump(lambda: guest.events == [vs.EVENT_TRANSPORT_RESET])


def _snapshot_with_a_connection(guest) -> dict:
    s, _ = accept_host(guest)
    state = guest.dev.save()
    s.close()
    return state


def test_reset_event_waits_for_an_event_buffer(guest, tmp_path):
    guest.start(event_buffers=0)
    guest.dev.load(_snapshot_with_a_connection(guest))
    guest.pump()
    assert guest.events == []
    guest.post_event(0)
    guest.pump(lambda: guest.events == [0])


def _restored_without_acknowledging(guest) -> None:
    """The device restored; the guest got the transport-reset event and has
    not re-posted its event buffer (its handler has not run yet)."""
    guest.start()
    guest.repost_events = False
    guest.dev.load(_snapshot_with_a_connection(guest))
    guest.pump(lambda: guest.events == [vs.EVENT_TRANSPORT_RESET])


def _held_host_connection(guest):
    """A host connection to guest port 52, accepted by the device and held back."""
    s = guest.host_connect(52)
    guest.pump(lambda: guest.dev.host.open_streams == 1 and not guest.dev.host._handshakes)
    return s


def test_host_connections_wait_until_the_guest_handled_the_reset(guest):
    """Linux handles the reset event and incoming packets in any order and
    its handler resets every connected socket, also one accepted a moment
    before: a host connection made just after a restore waits until the
    guest has re-posted its event buffer (its handler ran)."""
    _restored_without_acknowledging(guest)
    s = _held_host_connection(guest)
    for _ in range(5):
        guest.pump()
    assert not any(p.op == vs.OP_REQUEST for p in guest.received) and guest.dev.conns == {}
    guest.post_event(0)  # the handler ran
    assert guest.wait_packet(vs.OP_REQUEST).dst_port == 52
    s.close()


def test_a_guest_that_never_acknowledges_the_reset_gets_connections_later(guest):
    guest.dev.reset_ack_timeout = 0.2
    _restored_without_acknowledging(guest)
    s = guest.host_connect(52)
    assert guest.wait_packet(vs.OP_REQUEST, timeout=5).dst_port == 52
    s.close()


def test_a_driver_reset_drops_connections_held_for_the_reset(guest):
    _restored_without_acknowledging(guest)
    s = _held_host_connection(guest)
    guest.rx.set(m.STATUS, 0)
    assert s.recv(16) == b""
    assert guest.dev.host.open_streams == 0


def test_unusable_rx_buffers_are_returned_empty(guest):
    guest.start(rx_buffers=0)
    s = guest.host_connect(52)
    guest.pump(lambda: bool(guest.dev.conns))
    guest.rx.write_desc(0, guest.rx_addr[0], 10, 2, 0)  # too small for a header
    guest.rx.make_available(0)
    guest.rx.notify(vs.RX)
    assert guest.rx.used() == [(0, 0)]
    guest.rx.next_desc = 1
    guest.post_rx(1)
    req = guest.wait_packet(vs.OP_REQUEST)
    assert req.dst_port == 52
    s.close()


def test_host_path_cleanup_and_stale_socket(tmp_path):
    from pocketvm.backends.vsock_unix import VsockHostError, VsockUnixHost

    path = tmp_path / "x.vsock"
    h = VsockUnixHost(path)
    with pytest.raises(VsockHostError, match="in use"):
        VsockUnixHost(path)
    h.close()
    assert not path.exists()
    # A socket left by a VM that died is taken over.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    h = VsockUnixHost(path)
    h.close()
    path.write_text("not a socket")
    with pytest.raises(VsockHostError, match="not a socket"):
        VsockUnixHost(path)
    with pytest.raises(VsockHostError, match="too long"):
        VsockUnixHost(tmp_path / ("y" * 120))


def test_buffers_posted_before_driver_ok_and_interrupts(guest):
    guest.start()
    s, _ = accept_host(guest)
    guest.rx.ack_interrupt()
    s.sendall(b"a")
    guest.pump(lambda: guest.mmio.irq.level)
    assert guest.rx.ack_interrupt() & m.INT_USED_BUFFER
    s.close()


def test_data_waits_when_rx_buffers_hold_only_a_header(guest):
    """Found by the fuzz: receive buffers with no room past the header while
    there is data to send once made the device loop forever."""
    guest.start(rx_buffers=0)
    guest.repost = False
    s = guest.host_connect(52)
    guest.pump(lambda: bool(guest.dev.conns))
    conn = next(iter(guest.dev.conns.values()))
    guest.post_rx(1)
    req = guest.wait_packet(vs.OP_REQUEST)
    guest.send(52, req.src_port, vs.OP_RESPONSE)
    assert s.recv(64).startswith(b"OK")
    s.sendall(b"data")
    guest.pump(lambda: bool(conn.to_guest))
    for i in range(4):  # header-sized buffers only
        idx = guest.rx.next_desc
        guest.rx.next_desc = (idx + 1) % guest.qsize
        guest.rx.write_desc(idx, guest.rx_addr[idx], vs.HDR.size, 2, 0)
        guest.rx.make_available(idx)
    guest.rx.notify(vs.RX)
    guest.dev.poll()
    assert bytes(conn.to_guest) == b"data"
    guest.post_rx(1)
    assert guest.wait_packet(vs.OP_RW).payload == b"data"
    s.close()

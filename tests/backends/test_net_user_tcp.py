"""User-mode network: TCP NAT, with a scripted guest TCP on one side and host sockets on the other."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
from net_user_guest import ACK, FIN, GUEST_IP, GW_IP, PSH, RST, SYN, Guest, GuestTcp, tcp_frame

from pocketvm.backends.net_user import UserNet

MiB = 1 << 20


class HostPeer:
    """The host's end: a listener on 127.0.0.1 whose first connection runs script in a thread."""

    def __init__(self, script: Callable[[socket.socket], object]):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(10.0)
        self.port = self.listener.getsockname()[1]
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10.0)
            with conn:
                self.result = script(conn)
        except BaseException as e:  # noqa: BLE001 - handed to the test by join()
            self.error = e

    def join(self) -> object:
        self.thread.join(15.0)
        self.listener.close()
        assert not self.thread.is_alive(), "host peer did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def recv_all(conn: socket.socket, n: int | None = None) -> bytes:
    """Read n bytes, or up to EOF when n is None."""
    data = bytearray()
    while n is None or len(data) < n:
        chunk = conn.recv(65536 if n is None else min(65536, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.fixture
def net():
    n = UserNet(dns="127.0.0.1:9")
    n.tcp_time_wait = 0.05
    yield n
    n.close()


@pytest.fixture
def guest(net):
    return Guest(net)


def wait_no_conns(net: UserNet) -> None:
    deadline = time.monotonic() + 5.0
    while net.counts()["tcp_conns"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert net.counts()["tcp_conns"] == 0


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("first", ["guest", "host"])
def test_one_mib_each_way_then_close(net, guest, first):
    to_host, to_guest = payload(1, MiB), payload(2, MiB)

    def script(conn: socket.socket) -> bytes:
        sender = threading.Thread(target=conn.sendall, args=(to_guest,))
        sender.start()
        got = recv_all(conn, None if first == "guest" else len(to_host))
        sender.join()
        return got  # leaving the with-block closes the host end

    host = HostPeer(script)
    tcp = GuestTcp(guest, GW_IP, host.port, 50000)
    assert tcp.connect()
    assert tcp.peer_mss == 1460
    tcp.exchange(to_host, len(to_guest))
    if first == "guest":
        tcp.close()
        tcp.pump_until(lambda: tcp.fin)
        assert host.join() == to_host
    else:
        assert host.join() == to_host
        tcp.pump_until(lambda: tcp.fin)
        tcp.close()
        tcp.pump_until(lambda: tcp.snd_una == tcp.snd_nxt)
    assert bytes(tcp.received) == to_guest
    assert tcp.beyond_window == 0
    wait_no_conns(net)


def test_closed_port_is_refused_with_a_reset(net, guest):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listening: nothing accepts on it
    tcp = GuestTcp(guest, GW_IP, port, 50001)
    assert not tcp.connect()
    guest.sentinel()
    assert net.counts()["tcp_conns"] == 0


def test_guest_mss_is_honoured(net, guest):
    data = payload(3, 20000)
    host = HostPeer(lambda conn: conn.sendall(data))
    tcp = GuestTcp(guest, GW_IP, host.port, 50002, mss=536)
    assert tcp.connect()
    tcp.pump_until(lambda: tcp.fin)
    host.join()
    assert bytes(tcp.received) == data
    assert max(length for _, length in tcp.data_segments) == 536


def test_zero_window_then_opening(net, guest):
    net.tcp_rto = 0.05
    data = payload(4, 20000)
    host = HostPeer(lambda conn: conn.sendall(data))
    tcp = GuestTcp(guest, GW_IP, host.port, 50003, window=0)
    assert tcp.connect()
    # With the window shut, the backend only probes: a segment without data.
    rx = guest.expect(tcp.match)
    assert rx.tcp.payload == b"" and rx.tcp.seq == (tcp.rcv_nxt - 1) & 0xFFFFFFFF
    tcp.handle(rx.tcp)
    tcp.window = 1000  # a small window: never more than 1000 bytes beyond the last ACK
    tcp.tx(ACK)
    tcp.pump_until(lambda: len(tcp.received) >= 5000)
    tcp.window = 65535
    tcp.tx(ACK)
    tcp.pump_until(lambda: tcp.fin)
    host.join()
    assert bytes(tcp.received) == data
    assert tcp.beyond_window == 0


def test_a_dropped_frame_is_sent_again(net, guest):
    net.tcp_rto = 0.05
    data = payload(5, 30000)
    host = HostPeer(lambda conn: conn.sendall(data))
    tcp = GuestTcp(guest, GW_IP, host.port, 50004)
    assert tcp.connect()
    tcp.drop = 1  # the first data segment is lost; the later ones arrive out of order
    tcp.pump_until(lambda: tcp.fin)
    host.join()
    assert bytes(tcp.received) == data
    first = tcp.data_segments[0]
    assert tcp.data_segments.count(first) >= 2


def test_a_lost_fin_is_sent_again(net, guest):
    net.tcp_rto = 0.05
    host = HostPeer(lambda conn: conn.sendall(b"bye"))
    tcp = GuestTcp(guest, GW_IP, host.port, 50005)
    assert tcp.connect()
    tcp.drop_fin = 1
    tcp.pump_until(lambda: tcp.fin)
    assert tcp.received == b"bye"
    assert len(tcp.fin_segments) >= 2 and len(set(tcp.fin_segments)) == 1
    host.join()


def test_repeated_and_overlapping_guest_segments(net, guest):
    host = HostPeer(lambda conn: recv_all(conn))
    tcp = GuestTcp(guest, GW_IP, host.port, 50006)
    assert tcp.connect()
    base = tcp.snd_nxt
    tcp.tx(ACK | PSH, b"hello", seq=base)
    tcp.tx(ACK | PSH, b"hello", seq=base)  # a retransmission
    tcp.tx(ACK | PSH, b"lo world", seq=(base + 3) & 0xFFFFFFFF)  # overlaps what came
    tcp.tx(ACK | PSH, b"zzz", seq=(base + 100) & 0xFFFFFFFF)  # beyond a gap: not kept
    tcp.snd_nxt = (base + 11) & 0xFFFFFFFF
    tcp.pump_until(lambda: tcp.snd_una == tcp.snd_nxt)
    tcp.tx(ACK | PSH, b"!")
    tcp.snd_nxt = (tcp.snd_nxt + 1) & 0xFFFFFFFF
    tcp.close()
    tcp.pump_until(lambda: tcp.fin and tcp.snd_una == tcp.snd_nxt)
    assert host.join() == b"hello world!"


def test_repeated_syn_gets_the_same_syn_ack(net, guest):
    host = HostPeer(lambda conn: recv_all(conn))
    tcp = GuestTcp(guest, GW_IP, host.port, 50007)
    tcp.snd_una = tcp.snd_nxt = tcp.iss
    tcp.tx(SYN, mss=1460)
    first = guest.expect(tcp.match).tcp
    tcp.tx(SYN, mss=1460)  # as if the SYN-ACK was lost
    again = guest.expect(tcp.match).tcp
    assert first.flags == again.flags == SYN | ACK and first.seq == again.seq
    tcp.rcv_nxt = (first.seq + 1) & 0xFFFFFFFF
    tcp.snd_una = tcp.snd_nxt = (tcp.iss + 1) & 0xFFFFFFFF
    tcp.peer_wnd, tcp.peer_mss = first.window, first.mss
    tcp.tx(ACK)
    tcp.tx(ACK | PSH, b"ok")
    tcp.snd_nxt = (tcp.snd_nxt + 2) & 0xFFFFFFFF
    tcp.close()
    tcp.pump_until(lambda: tcp.fin)
    assert host.join() == b"ok"


def test_guest_reset_resets_the_host_side(net, guest):
    def script(conn: socket.socket) -> str:
        try:
            conn.recv(10)
        except ConnectionResetError:
            return "reset"
        return "no reset"

    host = HostPeer(script)
    tcp = GuestTcp(guest, GW_IP, host.port, 50008)
    assert tcp.connect()
    tcp.tx(RST | ACK)
    assert host.join() == "reset"
    guest.sentinel()
    assert net.counts()["tcp_conns"] == 0


def test_host_reset_resets_the_guest_side(net, guest):
    def script(conn: socket.socket) -> None:
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    host = HostPeer(script)
    tcp = GuestTcp(guest, GW_IP, host.port, 50009)
    assert tcp.connect()
    tcp.tx(ACK | PSH, b"x")
    tcp.snd_nxt += 1
    rst = guest.expect(lambda rx: tcp.match(rx) and rx.tcp.flags & RST)
    assert rst.tcp.seq == tcp.rcv_nxt
    host.join()
    wait_no_conns(net)


def test_segment_for_no_connection_gets_a_reset(net, guest):
    guest.send(tcp_frame(GW_IP, 50010, 9, 1234, 5678, ACK))
    rx = guest.expect(lambda rx: rx.tcp is not None)
    assert rx.tcp.flags == RST and rx.tcp.seq == 5678
    guest.send(tcp_frame(GW_IP, 50010, 9, 1234, 0, FIN, payload=b"abc"))
    rx = guest.expect(lambda rx: rx.tcp is not None)
    assert rx.tcp.flags == RST | ACK and rx.tcp.ack == 1234 + 3 + 1
    guest.send(tcp_frame(GW_IP, 50010, 9, 1234, 0, RST))  # never answered
    guest.send(tcp_frame("10.0.2.77", 50010, 9, 1, 0, SYN))  # nobody there
    rx = guest.expect(lambda rx: rx.tcp is not None)
    assert rx.tcp.flags == RST | ACK and rx.ip_src == "10.0.2.77"
    guest.sentinel()
    assert guest.other_frames() == [] and net.counts()["tcp_conns"] == 0


def test_host_forward_to_a_guest_port():
    net = UserNet(host_forwards=[("tcp", 0, 2222)], dns="127.0.0.1:9")
    try:
        guest = Guest(net)
        port = net.forwarded_ports[0]
        assert port != 0
        result: dict[str, object] = {}

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10.0) as s:
                s.sendall(b"ping")
                result["reply"] = recv_all(s)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        tcp = GuestTcp(guest, "", 0, 2222)
        tcp.accept()
        assert tcp.dst == GW_IP and tcp.peer_mss == 1460
        tcp.pump_until(lambda: tcp.received == b"ping")
        tcp.tx(ACK | PSH, b"pong")
        tcp.snd_nxt = (tcp.snd_nxt + 4) & 0xFFFFFFFF
        tcp.close()
        tcp.pump_until(lambda: tcp.fin and tcp.snd_una == tcp.snd_nxt)
        thread.join(10.0)
        assert result["reply"] == b"pong"
    finally:
        net.close()


def test_host_forward_to_a_closed_guest_port_resets_the_client():
    net = UserNet(host_forwards=[("tcp", 0, 2223)], dns="127.0.0.1:9")
    try:
        guest = Guest(net)
        client = socket.create_connection(("127.0.0.1", net.forwarded_ports[0]), timeout=10.0)
        with client:
            syn = guest.expect(lambda rx: rx.tcp is not None and rx.tcp.flags == SYN)
            assert syn.ip_dst == GUEST_IP and syn.tcp.dport == 2223
            guest.send(tcp_frame(GW_IP, 2223, syn.tcp.sport, 0, syn.tcp.seq + 1, RST | ACK, window=0))
            with pytest.raises(ConnectionResetError):
                client.recv(1)
    finally:
        net.close()

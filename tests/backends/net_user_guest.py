"""A scripted guest for the user-mode network tests.

It builds and reads frames with struct, on its own: nothing here comes from
pocketvm.backends.netstack, so a bug there cannot hide behind the same bug
here. Every frame the backend sends is checked (checksums, lengths) as it
is read.
"""

from __future__ import annotations

import array
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
BCAST_MAC = b"\xff" * 6
GUEST_IP = "10.0.2.15"
GW_IP = "10.0.2.2"
DNS_IP = "10.0.2.3"

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
TIMEOUT = 5.0  # a safety net only: every wait ends as soon as its frame is there


def aton(addr: str) -> bytes:
    return socket.inet_aton(addr)


def csum(*parts: bytes) -> int:
    data = b"".join(parts)
    if len(data) % 2:
        data += b"\0"
    words = array.array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return aton(src) + aton(dst) + struct.pack("!BBH", 0, proto, length)


# --- building ---------------------------------------------------------------------------


def eth(payload: bytes, ethertype: int = 0x0800, dst: bytes = GW_MAC, src: bytes = GUEST_MAC) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ip_packet(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, aton(src), aton(dst))
    return header[:10] + struct.pack("!H", csum(header)) + header[12:] + payload


def udp_segment(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    c = csum(pseudo(src, dst, 17, 8 + len(payload)), header, payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), c) + payload


def udp_frame(dst: str, sport: int, dport: int, payload: bytes, src: str = GUEST_IP, dst_mac: bytes = GW_MAC) -> bytes:
    return eth(ip_packet(src, dst, 17, udp_segment(src, dst, sport, dport, payload)), dst=dst_mac)


def tcp_segment(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    payload: bytes = b"", mss: int | None = None,
) -> bytes:
    options = b"" if mss is None else struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03\x07"  # MSS, NOP, wscale 7
    hlen = 20 + len(options)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (hlen // 4) << 4, flags, window, 0, 0)
    header += options
    c = csum(pseudo(src, dst, 6, hlen + len(payload)), header, payload)
    return header[:16] + struct.pack("!H", c) + header[18:] + payload


def tcp_frame(dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, window: int = 65535,
              payload: bytes = b"", mss: int | None = None, src: str = GUEST_IP) -> bytes:
    return eth(ip_packet(src, dst, 6, tcp_segment(src, dst, sport, dport, seq, ack, flags, window, payload, mss)))


def icmp_echo(dst: str, ident: int, seq: int, payload: bytes, src: str = GUEST_IP) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return eth(ip_packet(src, dst, 1, body))


def arp_request(target: str, sender: str = GUEST_IP, sender_mac: bytes = GUEST_MAC) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, aton(sender), bytes(6), aton(target))
    return eth(body, 0x0806, dst=BCAST_MAC, src=sender_mac)


def dhcp_frame(msg_type: int, xid: int, options: bytes = b"", flags: int = 0, ciaddr: str = "0.0.0.0",
               src: str = "0.0.0.0", dst: str = "255.255.255.255", end: bool = True) -> bytes:
    bootp = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, xid, 0, flags, aton(ciaddr), bytes(4), bytes(4), bytes(4),
        GUEST_MAC + bytes(10), bytes(64), bytes(128), 0x63825363,
    ) + bytes((53, 1, msg_type)) + options + (b"\xff" if end else b"")
    dst_mac = BCAST_MAC if dst == "255.255.255.255" else GW_MAC
    return udp_frame(dst, 68, 67, bootp, src=src, dst_mac=dst_mac)


# --- reading ----------------------------------------------------------------------------


@dataclass
class Seg:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    mss: int | None


@dataclass
class Rx:
    frame: bytes
    dst_mac: bytes
    src_mac: bytes
    ethertype: int
    arp: tuple | None = None  # (op, sha, spa, tha, tpa)
    ip_src: str | None = None
    ip_dst: str | None = None
    proto: int | None = None
    ip_id: int = 0
    frag: int = 0
    ip_payload: bytes = b""
    udp: tuple[int, int, bytes] | None = None
    tcp: Seg | None = None
    icmp: bytes | None = None


def parse(frame: bytes) -> Rx:
    """Read a frame from the backend, asserting that it is well formed."""
    assert len(frame) >= 60, f"runt frame of {len(frame)} bytes"
    rx = Rx(frame, frame[0:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0])
    body = frame[14:]
    if rx.ethertype == 0x0806:
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", body)
        assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4)
        rx.arp = (op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa))
        return rx
    assert rx.ethertype == 0x0800, hex(rx.ethertype)
    vihl, _tos, total, ident, frag, _ttl, proto, _c, src, dst = struct.unpack_from("!BBHHHBBH4s4s", body)
    assert vihl == 0x45 and 20 <= total <= len(body)
    assert csum(body[:20]) == 0, "bad IPv4 header checksum"
    rx.ip_src, rx.ip_dst, rx.proto, rx.ip_id, rx.frag = socket.inet_ntoa(src), socket.inet_ntoa(dst), proto, ident, frag
    rx.ip_payload = payload = body[20:total]
    if frag & 0x3FFF:
        return rx  # a fragment: the test reassembles it
    parse_l4(rx, payload)
    return rx


def parse_l4(rx: Rx, payload: bytes) -> None:
    assert rx.ip_src is not None and rx.ip_dst is not None
    if rx.proto == 17:
        sport, dport, length, c = struct.unpack_from("!HHHH", payload)
        assert length == len(payload) and c != 0
        assert csum(pseudo(rx.ip_src, rx.ip_dst, 17, length), payload) == 0, "bad UDP checksum"
        rx.udp = (sport, dport, payload[8:])
    elif rx.proto == 6:
        assert csum(pseudo(rx.ip_src, rx.ip_dst, 6, len(payload)), payload) == 0, "bad TCP checksum"
        sport, dport, seq, ack, off, flags, window, _c, _u = struct.unpack_from("!HHIIBBHHH", payload)
        hlen = (off >> 4) * 4
        options, mss = payload[20:hlen], None
        i = 0
        while i < len(options) and options[i] != 0:
            if options[i] == 1:
                i += 1
                continue
            assert options[i] != 3 and options[i] != 4 and options[i] != 8, "unexpected TCP option"
            if options[i] == 2:
                mss = struct.unpack_from("!H", options, i + 2)[0]
            i += options[i + 1]
        rx.tcp = Seg(sport, dport, seq, ack, flags, window, payload[hlen:], mss)
    elif rx.proto == 1:
        assert csum(payload) == 0, "bad ICMP checksum"
        rx.icmp = payload


def dhcp_options(bootp: bytes) -> dict[int, bytes]:
    options, i = {}, 240
    assert struct.unpack_from("!I", bootp, 236)[0] == 0x63825363
    while i < len(bootp) and bootp[i] != 255:
        if bootp[i] == 0:
            i += 1
            continue
        options[bootp[i]] = bootp[i + 2 : i + 2 + bootp[i + 1]]
        i += 2 + bootp[i + 1]
    return options


class NoFrame(AssertionError):
    """The frame a test waited for did not come."""


# --- the guest --------------------------------------------------------------------------


class Guest:
    """The guest's side of a UserNet: sends frames, waits for the ones it expects."""

    def __init__(self, net):
        self.net = net
        self.ready = threading.Event()
        self.backlog: deque[Rx] = deque()
        net.attach(self.ready.set)

    def send(self, frame: bytes) -> None:
        self.net.send(frame)

    def pull(self, timeout: float) -> bool:
        """Move the backend's frames into the backlog; wait up to timeout for one. True if any came."""
        self.ready.clear()
        got = self._drain()
        if not got and self.ready.wait(timeout):
            got = self._drain()
        return got

    def _drain(self) -> bool:
        got = False
        while (frame := self.net.receive()) is not None:
            self.backlog.append(parse(frame))
            got = True
        return got

    def expect(self, match: Callable[[Rx], bool], timeout: float = TIMEOUT) -> Rx:
        deadline = time.monotonic() + timeout
        while True:
            for rx in self.backlog:
                if match(rx):
                    self.backlog.remove(rx)
                    return rx
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoFrame(f"no matching frame in {timeout} s; backlog: {list(self.backlog)[:5]}")
            self.pull(remaining)

    def sentinel(self) -> None:
        """Ping the gateway and wait for the answer: the backend handles frames in order,
        so every frame sent before has been dealt with when this returns."""
        ident = 0x5E5E
        self.send(icmp_echo(GW_IP, ident, 1, b"sentinel"))
        self.expect(lambda rx: rx.icmp is not None and rx.icmp[4:6] == struct.pack("!H", ident))

    def other_frames(self) -> list[Rx]:
        self._drain()
        frames = list(self.backlog)
        self.backlog.clear()
        return frames


def seq_lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & 0xFFFFFFFF) < 0x80000000


@dataclass
class GuestTcp:
    """A minimal TCP endpoint in the guest, enough to drive the backend's TCP through its paces."""

    guest: Guest
    dst: str
    dport: int
    sport: int
    mss: int = 1460
    window: int = 65535  # what this end advertises
    iss: int = 0xFFFFF000  # near the wrap, so sequence arithmetic gets tested
    snd_una: int = 0
    snd_nxt: int = 0
    rcv_nxt: int = 0
    peer_wnd: int = 0
    peer_mss: int | None = None
    received: bytearray = field(default_factory=bytearray)
    fin: bool = False
    rst: bool = False
    drop: int = 0  # incoming data segments to lose, as a full receive ring would
    drop_fin: int = 0  # incoming FIN segments to lose
    fin_segments: list[int] = field(default_factory=list)  # seq of every FIN seen
    data_segments: list[tuple[int, int]] = field(default_factory=list)  # (seq, length) of every one seen
    beyond_window: int = 0  # data the backend sent past the window this end advertised
    right_edge: int = 0
    need_ack: bool = False

    def match(self, rx: Rx) -> bool:
        return (
            rx.tcp is not None and rx.ip_src == self.dst and rx.ip_dst == GUEST_IP
            and rx.tcp.sport == self.dport and rx.tcp.dport == self.sport
        )

    def tx(self, flags: int, payload: bytes = b"", seq: int | None = None, mss: int | None = None) -> None:
        seq = self.snd_nxt if seq is None else seq
        ack = self.rcv_nxt if flags & ACK else 0
        if flags & ACK:
            self.right_edge = (self.rcv_nxt + self.window) & 0xFFFFFFFF
            self.need_ack = False
        self.guest.send(tcp_frame(self.dst, self.sport, self.dport, seq, ack, flags, self.window, payload, mss))

    def connect(self) -> bool:
        """Three-way handshake; False if the backend answers with a reset."""
        self.snd_una = self.snd_nxt = self.iss
        self.tx(SYN, mss=self.mss)
        rx = self.guest.expect(self.match)
        seg = rx.tcp
        if seg.flags & RST:
            assert seg.flags & ACK and seg.ack == (self.iss + 1) & 0xFFFFFFFF
            self.rst = True
            return False
        assert seg.flags & (SYN | ACK) == SYN | ACK and seg.ack == (self.iss + 1) & 0xFFFFFFFF
        self.peer_mss = seg.mss
        self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF
        self.peer_wnd = seg.window
        self.tx(ACK)
        return True

    def accept(self, timeout: float = TIMEOUT) -> None:
        """Answer the backend's SYN (a host forward) with a SYN-ACK and wait for its ACK."""
        rx = self.guest.expect(lambda r: r.tcp is not None and r.tcp.dport == self.sport and r.tcp.flags == SYN, timeout)
        self.dst, self.dport = rx.ip_src, rx.tcp.sport
        self.peer_mss = rx.tcp.mss
        self.rcv_nxt = (rx.tcp.seq + 1) & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = self.iss
        self.tx(SYN | ACK, mss=self.mss)
        self.snd_nxt = self.snd_una = (self.iss + 1) & 0xFFFFFFFF
        rx = self.guest.expect(self.match)
        assert rx.tcp.flags & ACK and rx.tcp.ack == self.snd_nxt
        self.peer_wnd = rx.tcp.window

    def handle(self, seg: Seg) -> None:
        if seg.flags & RST:
            self.rst = True
            return
        if seg.flags & ACK:
            if seq_lt(self.snd_una, seg.ack):
                self.snd_una = seg.ack
            self.peer_wnd = seg.window
        length = len(seg.payload) + (1 if seg.flags & FIN else 0)
        if seg.flags & FIN:
            self.fin_segments.append(seg.seq)
            if self.drop_fin:
                self.drop_fin -= 1
                return
        if seg.payload:
            self.data_segments.append((seg.seq, len(seg.payload)))
            end = (seg.seq + len(seg.payload)) & 0xFFFFFFFF
            if seq_lt(self.right_edge, end):
                self.beyond_window += 1
            if self.drop:
                self.drop -= 1
                return
        if length == 0:
            if seg.seq != self.rcv_nxt:
                self.need_ack = True  # a window probe
            return
        if seg.seq != self.rcv_nxt:
            self.need_ack = True  # out of order or a repeat: duplicate ACK
            return
        self.received += seg.payload
        self.rcv_nxt = (self.rcv_nxt + length) & 0xFFFFFFFF
        if seg.flags & FIN:
            self.fin = True
        self.need_ack = True

    def pump(self, timeout: float = TIMEOUT) -> None:
        """Handle this connection's frames: wait for at least one, then take all that are there."""
        self.handle(self.guest.expect(self.match, timeout).tcp)
        self.guest._drain()
        for rx in [rx for rx in self.guest.backlog if self.match(rx)]:
            self.guest.backlog.remove(rx)
            self.handle(rx.tcp)
        if self.need_ack:
            self.tx(ACK)

    def pump_until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert not self.rst, "connection reset"
            self.pump(max(0.01, deadline - time.monotonic()))

    def send_window(self, data: bytes, sent_base: int) -> int:
        """Send what the backend's window allows of data (whose byte 0 is sequence sent_base)."""
        sent = 0
        while True:
            offset = (self.snd_nxt - sent_base) & 0xFFFFFFFF
            in_flight = (self.snd_nxt - self.snd_una) & 0xFFFFFFFF
            n = min(len(data) - offset, self.peer_wnd - in_flight, self.peer_mss or 536)
            if n <= 0:
                return sent
            self.tx(ACK | PSH, data[offset : offset + n])
            self.snd_nxt = (self.snd_nxt + n) & 0xFFFFFFFF
            sent += n

    def exchange(self, out: bytes, expect_in: int, timeout: float = 20.0) -> None:
        """Send out and receive expect_in bytes at the same time."""
        base = self.snd_nxt
        end = (base + len(out)) & 0xFFFFFFFF
        deadline = time.monotonic() + timeout
        while self.snd_una != end or len(self.received) < expect_in:
            assert time.monotonic() < deadline, f"stuck: {len(self.received)} of {expect_in} in"
            assert not self.rst, "connection reset"
            self.send_window(out, base)
            try:
                self.pump(1.0)
            except NoFrame:
                self.snd_nxt = self.snd_una  # nothing came: go back and send again

    def close(self) -> None:
        self.tx(FIN | ACK)
        self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF

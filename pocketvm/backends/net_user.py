"""User-mode NAT networking: a guest network without root, like QEMU's `-nic user`.

The guest sees a small Ethernet network with QEMU's default layout:

    10.0.2.0/24   the network
    10.0.2.2      the gateway (the host; MAC 52:55:0a:00:02:02)
    10.0.2.3      the DNS server (relayed to the host's resolver)
    10.0.2.15     the address the DHCP server offers

Nothing of that network exists on the host. One backend thread plays every
other station on it: it answers ARP, DHCP and pings to the gateway itself,
and carries the guest's UDP and TCP over ordinary unprivileged host sockets,
one per flow. Traffic to 10.0.2.2 goes to the host's 127.0.0.1.

The guest is not trusted: nothing it sends raises out of this module, and
everything it can make the host hold is capped (queued frames, flows,
connections, buffered bytes); idle flows expire.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pocketvm.backends.netstack import arp, dhcp, ethernet, icmp, ipv4, tcp, udp
from pocketvm.backends.netstack.tcp_conn import Key, State, TcpConn

log = logging.getLogger(__name__)

GATEWAY_IP = bytes((10, 0, 2, 2))
DNS_IP = bytes((10, 0, 2, 3))
GUEST_IP = bytes((10, 0, 2, 15))
NETMASK = bytes((255, 255, 255, 0))
BROADCAST_IP = bytes((10, 0, 2, 255))
LIMITED_BROADCAST = b"\xff" * 4
ZERO_IP = bytes(4)
GATEWAY_MAC = bytes.fromhex("52550a000202")
LEASE_SECONDS = 86400
MTU = 1500
# The largest IPv4 packet behind an Ethernet header; anything longer is no frame a NIC sends.
MAX_FRAME = 14 + 65535

_NET_PREFIX = GATEWAY_IP[:3]
_SERVICES = (GATEWAY_IP, DNS_IP)
_DHCP = dhcp.Config(GATEWAY_IP, GUEST_IP, NETMASK, GATEWAY_IP, DNS_IP, BROADCAST_IP, LEASE_SECONDS)

Address = tuple[int, tuple[Any, ...]]  # socket family, socket address


def _service_mac(ip: bytes) -> bytes:
    # As QEMU's slirp: 52:55 followed by the station's IPv4 address.
    return b"\x52\x55" + ip


_OUR_MACS = frozenset(_service_mac(ip) for ip in _SERVICES)


class UserNet:
    """A user-mode NAT network backend for one virtio-net device."""

    # Limits and timers. Instance attributes may be changed before attach()
    # (tests shorten the timers).
    max_queued_frames = 1024  # each direction; beyond that frames are dropped
    max_udp_flows = 128  # the least recently used flow goes when a new one needs room
    max_tcp_conns = 256  # a SYN beyond this is refused with a reset
    udp_idle_timeout = 60.0
    tcp_buffer = 65536  # per connection and direction
    tcp_rto = 0.4
    tcp_rto_max = 6.0
    tcp_max_retries = 10
    tcp_connect_timeout = 30.0
    tcp_idle_timeout = 86400.0
    tcp_closing_timeout = 120.0  # idle after one side has closed
    tcp_time_wait = 5.0
    max_forward_accepts = 16  # per listener wake-up

    def __init__(self, host_forwards: Iterable[tuple[str, int, int]] = (), dns: str | None = None,
                 allow: Iterable[str] | None = None):
        """host_forwards: ("tcp", host_port, guest_port): connections to 127.0.0.1:host_port
        go to the guest's guest_port (host_port 0 picks a free port; see forwarded_ports).
        dns: the resolver that 10.0.2.3:53 relays to, "ADDR", "ADDR:PORT" or "[V6ADDR]:PORT";
        default the first nameserver in /etc/resolv.conf, else 127.0.0.1.
        allow: when given, the only destinations the guest may reach, as it
        addresses them: "A.B.C.D" (any port) or "A.B.C.D:PORT" ("10.0.2.2:8000"
        is the host's 127.0.0.1:8000, "10.0.2.3:53" its DNS relay). TCP to
        anything else is refused (RST), UDP dropped."""
        self._dns: Address = parse_dns(dns) if dns is not None else _system_dns()
        self._allow = None if allow is None else [parse_allow(a) for a in allow]
        forwards = [_check_forward(f) for f in host_forwards]

        self._inbox: deque[bytes] = deque()
        self._outbox: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wake: Callable[[], None] | None = None
        self._kicked = False

        # Backend-thread state from here on (set before anything can fail, for _release).
        self.now = time.monotonic()
        self._next_timer = self.now
        self._guest_mac = ethernet.BROADCAST
        self._guest_ip = GUEST_IP
        self._ident = 0
        self._emitted = False
        self._udp: dict[Key, _UdpFlow] = {}
        self._tcp: dict[Key, TcpConn] = {}
        self._flush: dict[TcpConn, None] = {}
        self._next_forward_port = 1024
        self._dropped_in = 0
        self._dropped_out = 0
        self._last_warning = -1e9

        self._selector = selectors.DefaultSelector()
        self._kick_r, self._kick_w = socket.socketpair()
        self._listeners: list[tuple[socket.socket, int]] = []
        try:
            for host_port, guest_port in forwards:
                self._listeners.append((_listen(host_port), guest_port))
        except BaseException:
            self._release()
            raise
        self._kick_r.setblocking(False)
        self._kick_w.setblocking(False)
        self._selector.register(self._kick_r, selectors.EVENT_READ, ("kick", None))
        for listener, guest_port in self._listeners:
            self._selector.register(listener, selectors.EVENT_READ, ("listen", guest_port))


    # --- the backend protocol (run-loop thread) --------------------------------------

    def attach(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("user network is closed")
            if self._thread is not None:
                raise RuntimeError("user network is already attached")
            self._wake = wake
            self._thread = threading.Thread(target=self._run, name="pocketvm-net-user", daemon=True)
            self._thread.start()

    def send(self, frame: bytes) -> None:
        if self._closed:
            return
        if len(self._inbox) >= self.max_queued_frames or len(frame) > MAX_FRAME:
            self._dropped_in += 1
            return
        self._inbox.append(bytes(frame))
        if not self._kicked:
            self._kick()

    def receive(self) -> bytes | None:
        try:
            return self._outbox.popleft()
        except IndexError:
            return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            thread = self._thread
        self._kick()
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():
                log.warning("user network: backend thread did not stop; closing its sockets anyway")
        self._release()

    # --- inspection ------------------------------------------------------------------

    @property
    def forwarded_ports(self) -> list[int]:
        """The host ports of the host forwards, in the order given."""
        return [listener.getsockname()[1] for listener, _ in self._listeners]

    def counts(self) -> dict[str, int]:
        """How much the network holds now: flows, connections, queued frames, drops."""
        return {
            "udp_flows": len(self._udp),
            "tcp_conns": len(self._tcp),
            "inbox": len(self._inbox),
            "outbox": len(self._outbox),
            "dropped_in": self._dropped_in,
            "dropped_out": self._dropped_out,
        }

    # --- the backend thread ----------------------------------------------------------

    def _kick(self) -> None:
        self._kicked = True
        try:
            self._kick_w.send(b"\0")
        except OSError:
            pass  # full: the thread has a wake-up pending anyway; closed: it is stopping

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._loop_once()
            except Exception:
                self._warn("user network: internal error")

    def _loop_once(self) -> None:
        now = time.monotonic()
        timeout = 0.0 if self._inbox else min(max(self._next_timer - now, 0.0), 5.0)
        events = self._selector.select(timeout)
        self.now = time.monotonic()
        for key, mask in events:
            kind, obj = key.data
            try:
                if kind == "kick":
                    self._drain_kicks()
                elif kind == "udp":
                    self._on_flow_readable(obj)
                elif kind == "tcp":
                    self._guarded(obj, obj.on_socket, mask)
                elif kind == "listen":
                    self._accept(key.fileobj, obj)
            except Exception:
                self._warn(f"user network: internal error on a {kind} socket")
        for _ in range(256):  # a bounded batch, so host sockets get their turn
            try:
                frame = self._inbox.popleft()
            except IndexError:
                break
            try:
                self._on_frame(frame)
            except Exception:
                self._warn("user network: frame from the guest dropped after an internal error")
        if self.now >= self._next_timer:
            self._run_timers()
        flush, self._flush = self._flush, {}
        for conn in flush:
            self._guarded(conn, conn.flush)
        if self._emitted:
            self._emitted = False
            if self._wake is not None:
                try:
                    self._wake()
                except Exception:
                    self._warn("user network: wake callback failed")

    def _drain_kicks(self) -> None:
        try:
            while self._kick_r.recv(4096):
                pass
        except OSError:
            pass
        # Only now, with no wake-up byte left, may the next send() write one;
        # frames queued before this point are drained from the inbox next.
        self._kicked = False

    def _run_timers(self) -> None:
        now = self.now
        nxt = now + 5.0
        for conn in list(self._tcp.values()):
            if conn.deadline() <= now:
                self._guarded(conn, conn.on_timer, now)
            if conn.state is not State.CLOSED:
                nxt = min(nxt, conn.deadline())
        for flow in list(self._udp.values()):
            expires = flow.last + self.udp_idle_timeout
            if expires <= now:
                self._drop_flow(flow)
            else:
                nxt = min(nxt, expires)
        self._next_timer = nxt

    def _guarded(self, conn: TcpConn, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._warn(f"user network: tcp connection {conn.state.value} dropped after an internal error")
            try:
                conn.abort(rst=True)
            except Exception:
                self._tcp.pop(conn.key, None)
                conn.close_socket()

    def _warn(self, message: str) -> None:
        # A guest can provoke this at will: warn at most every 10 s.
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning(message, exc_info=True)
        else:
            log.debug(message, exc_info=True)

    def _release(self) -> None:
        for conn in self._tcp.values():
            conn.close_socket()
        for flow in self._udp.values():
            flow.sock.close()
        self._tcp.clear()
        self._udp.clear()
        for listener, _ in self._listeners:
            listener.close()
        self._selector.close()
        self._kick_r.close()
        self._kick_w.close()
        self._inbox.clear()
        self._outbox.clear()

    # --- what the TCP connections use (tcp_conn.Stack) -----------------------------------

    def ip_to_guest(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> None:
        self._ident = (self._ident + 1) & 0xFFFF
        mac = _service_mac(src) if src in _SERVICES else GATEWAY_MAC
        for packet in ipv4.fragments(src, dst, proto, payload, self._ident, MTU):
            self._emit(ethernet.build(self._guest_mac, mac, ethernet.TYPE_IPV4, packet))

    def watch(self, conn: TcpConn, events: int) -> None:
        sock = conn.sock
        if sock is None:
            return
        if events == 0:
            if conn.watched:
                self._selector.unregister(sock)
        elif conn.watched:
            self._selector.modify(sock, events, ("tcp", conn))
        else:
            self._selector.register(sock, events, ("tcp", conn))

    def schedule(self, deadline: float) -> None:
        if deadline < self._next_timer:
            self._next_timer = deadline

    def want_flush(self, conn: TcpConn) -> None:
        self._flush[conn] = None

    def forget(self, conn: TcpConn) -> None:
        if self._tcp.get(conn.key) is conn:
            del self._tcp[conn.key]
        self._flush.pop(conn, None)

    def _emit(self, frame: bytes) -> None:
        if len(self._outbox) >= self.max_queued_frames:
            self._dropped_out += 1
            return
        self._outbox.append(frame)
        self._emitted = True

    # --- frames from the guest ---------------------------------------------------------

    def _on_frame(self, data: bytes) -> None:
        frame = ethernet.parse(data)
        if frame is None or ethernet.is_multicast(frame.src):
            return
        if frame.dst != ethernet.BROADCAST and frame.dst not in _OUR_MACS:
            return
        if frame.ethertype == ethernet.TYPE_ARP:
            self._on_arp(frame)
        elif frame.ethertype == ethernet.TYPE_IPV4:
            self._on_ipv4(frame)

    def _on_arp(self, frame: ethernet.Frame) -> None:
        msg = arp.parse(frame.payload)
        if msg is None or ethernet.is_multicast(msg.sender_mac):
            return
        self._guest_mac = frame.src
        if _is_guest_ip(msg.sender_ip):
            self._guest_ip = msg.sender_ip
        if msg.op == arp.REQUEST and msg.target_ip in _SERVICES:
            mac = _service_mac(msg.target_ip)
            reply = arp.build(arp.REPLY, mac, msg.target_ip, msg.sender_mac, msg.sender_ip)
            self._emit(ethernet.build(msg.sender_mac, mac, ethernet.TYPE_ARP, reply))

    def _on_ipv4(self, frame: ethernet.Frame) -> None:
        packet = ipv4.parse(frame.payload)
        if packet is None:
            return
        src, dst = packet.src, packet.dst
        if src == ZERO_IP:
            # Only a DHCP client without an address yet speaks from 0.0.0.0.
            if packet.proto == ipv4.PROTO_UDP:
                self._guest_mac = frame.src
                self._on_udp(packet)
            return
        if not _is_guest_ip(src):
            return
        self._guest_mac = frame.src
        self._guest_ip = src
        if packet.proto == ipv4.PROTO_TCP:
            self._on_tcp(packet)
        elif packet.proto == ipv4.PROTO_UDP:
            self._on_udp(packet)
        elif packet.proto == ipv4.PROTO_ICMP and dst in _SERVICES:
            reply = icmp.echo_reply(packet.payload)
            if reply is not None:
                self.ip_to_guest(dst, src, ipv4.PROTO_ICMP, reply)

    # --- UDP -------------------------------------------------------------------------

    def _on_udp(self, packet: ipv4.Packet) -> None:
        datagram = udp.parse(packet.src, packet.dst, packet.payload)
        if datagram is None:
            return
        if datagram.dst_port == dhcp.SERVER_PORT and packet.dst in (LIMITED_BROADCAST, BROADCAST_IP, GATEWAY_IP):
            self._on_dhcp(datagram)
            return
        if packet.src == ZERO_IP:
            return
        addr = self._outside(packet.dst, datagram.dst_port)
        if addr is None:
            return
        key = (packet.src, datagram.src_port, packet.dst, datagram.dst_port)
        flow = self._udp.pop(key, None)
        if flow is None:
            flow = self._open_flow(key, addr)
            if flow is None:
                return
        self._udp[key] = flow  # (re)inserted last: the dict's order is least recently used first
        flow.last = self.now
        try:
            flow.sock.send(datagram.payload)
        except OSError as e:
            log.debug("udp %s: send: %s", _flow_name(key), e)  # UDP may drop; so do we

    def _open_flow(self, key: Key, addr: Address) -> _UdpFlow | None:
        while len(self._udp) >= self.max_udp_flows:
            self._drop_flow(next(iter(self._udp.values())))
        family, sockaddr = addr
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Connected: the kernel then only passes up replies from the
            # address the guest talked to.
            sock.connect(sockaddr)
        except OSError as e:
            log.debug("udp %s: %s", _flow_name(key), e)
            sock.close()
            return None
        flow = _UdpFlow(key, sock, self.now)
        self._selector.register(sock, selectors.EVENT_READ, ("udp", flow))
        self.schedule(self.now + self.udp_idle_timeout)
        return flow

    def _drop_flow(self, flow: _UdpFlow) -> None:
        if self._udp.get(flow.key) is flow:
            del self._udp[flow.key]
        try:
            self._selector.unregister(flow.sock)
        except (KeyError, ValueError):
            pass
        flow.sock.close()

    def _on_flow_readable(self, flow: _UdpFlow) -> None:
        guest_ip, guest_port, remote_ip, remote_port = flow.key
        for _ in range(32):  # a bounded batch per wake-up, for fairness
            try:
                data = flow.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Typically ECONNREFUSED: an ICMP error for an earlier datagram.
                log.debug("udp %s: recv: %s", _flow_name(flow.key), e)
                continue
            flow.last = self.now
            self.ip_to_guest(
                remote_ip, guest_ip, ipv4.PROTO_UDP, udp.build(remote_ip, guest_ip, remote_port, guest_port, data)
            )

    def _on_dhcp(self, datagram: udp.Datagram) -> None:
        reply = dhcp.handle(_DHCP, datagram.payload)
        if reply is None:
            return
        payload = udp.build(GATEWAY_IP, reply.dst_ip, dhcp.SERVER_PORT, dhcp.CLIENT_PORT, reply.payload)
        self._ident = (self._ident + 1) & 0xFFFF
        packet = ipv4.build(GATEWAY_IP, reply.dst_ip, ipv4.PROTO_UDP, payload, self._ident)
        self._emit(ethernet.build(reply.dst_mac, GATEWAY_MAC, ethernet.TYPE_IPV4, packet))

    # --- TCP -------------------------------------------------------------------------

    def _on_tcp(self, packet: ipv4.Packet) -> None:
        seg = tcp.parse(packet.src, packet.dst, packet.payload)
        if seg is None:
            return
        key = (packet.src, seg.src_port, packet.dst, seg.dst_port)
        conn = self._tcp.get(key)
        is_syn = seg.flags & (tcp.SYN | tcp.ACK | tcp.RST) == tcp.SYN
        if conn is not None and conn.state is State.TIME_WAIT and is_syn:
            conn.abort(rst=False)  # the guest reuses the port for a new connection
            conn = None
        if conn is not None:
            self._guarded(conn, conn.on_segment, seg)
            return
        if seg.flags & tcp.RST:
            return
        if not is_syn:
            self._reset(packet, seg)
            return
        addr = self._outside(packet.dst, seg.dst_port)
        if addr is None or not self._room_for_conn():
            self._reset(packet, seg)
            return
        family, sockaddr = addr
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
        except OSError as e:
            err = e.errno or errno.EINVAL
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            log.debug("tcp %s: connect: %s", _flow_name(key), errno.errorcode.get(err, err))
            sock.close()
            self._reset(packet, seg)
            return
        self._tcp[key] = TcpConn.from_guest_syn(self, key, sock, seg)

    def _room_for_conn(self) -> bool:
        if len(self._tcp) < self.max_tcp_conns:
            return True
        for conn in self._tcp.values():
            if conn.state is State.TIME_WAIT:
                conn.abort(rst=False)
                return True
        return False

    def _reset(self, packet: ipv4.Packet, seg: tcp.Segment) -> None:
        """Answer a segment that belongs to no connection (RFC 9293 3.10.7.1)."""
        if seg.flags & tcp.ACK:
            seq, ack, flags = seg.ack, 0, tcp.RST
        else:
            seq, ack, flags = 0, tcp.seq_add(seg.seq, seg.seq_len), tcp.RST | tcp.ACK
        reply = tcp.build(packet.dst, packet.src, seg.dst_port, seg.src_port, seq, ack, flags, 0)
        self.ip_to_guest(packet.dst, packet.src, ipv4.PROTO_TCP, reply)

    def _accept(self, listener: socket.socket, guest_port: int) -> None:
        for _ in range(self.max_forward_accepts):
            try:
                sock, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("host forward to guest port %d: accept: %s", guest_port, e)
                return
            key = self._forward_key(guest_port)
            if key is None or not self._room_for_conn():
                sock.close()
                continue
            sock.setblocking(False)
            conn = TcpConn.to_guest(self, key, sock)
            self._tcp[key] = conn

    def _forward_key(self, guest_port: int) -> Key | None:
        # The guest sees forwarded connections come from the gateway, each
        # from its own port.
        for _ in range(65536 - 1024):
            port = self._next_forward_port
            self._next_forward_port = port + 1 if port < 65535 else 1024
            key = (self._guest_ip, guest_port, GATEWAY_IP, port)
            if key not in self._tcp:
                return key
        return None

    # --- where traffic goes ------------------------------------------------------------

    def _outside(self, dst: bytes, port: int) -> Address | None:
        """The host socket address for the guest's destination, or None if it has none
        (or the allow-list does not name it)."""
        if port == 0:
            return None
        if self._allow is not None and not any(ip in (None, dst) and p in (None, port) for ip, p in self._allow):
            return None
        if dst == GATEWAY_IP:
            return socket.AF_INET, ("127.0.0.1", port)
        if dst == DNS_IP:
            return self._dns if port == 53 else None
        first = dst[0]
        if first in (0, 127) or first >= 224 or dst[:3] == _NET_PREFIX:
            return None
        return socket.AF_INET, (socket.inet_ntoa(dst), port)


class _UdpFlow:
    __slots__ = ("key", "sock", "last")

    def __init__(self, key: Key, sock: socket.socket, last: float):
        self.key = key
        self.sock = sock
        self.last = last


def _is_guest_ip(ip: bytes) -> bool:
    return ip[:3] == _NET_PREFIX and ip[3] not in (0, 2, 3, 255)


def _flow_name(key: Key) -> str:
    guest_ip, guest_port, remote_ip, remote_port = key
    return f"{socket.inet_ntoa(guest_ip)}:{guest_port}->{socket.inet_ntoa(remote_ip)}:{remote_port}"


def _check_forward(forward: tuple[str, int, int]) -> tuple[int, int]:
    try:
        proto, host_port, guest_port = forward
    except (TypeError, ValueError):
        raise ValueError(f"host forward {forward!r}: expected (proto, host_port, guest_port)") from None
    if proto != "tcp":
        raise ValueError(f"host forward {forward!r}: only tcp is supported")
    if not (isinstance(host_port, int) and 0 <= host_port <= 65535):
        raise ValueError(f"host forward {forward!r}: bad host port")
    if not (isinstance(guest_port, int) and 1 <= guest_port <= 65535):
        raise ValueError(f"host forward {forward!r}: bad guest port")
    return host_port, guest_port


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"host forward: cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
    return sock


def parse_allow(entry: str) -> tuple[bytes | None, int | None]:
    """"A.B.C.D[:PORT]" or "*:PORT" -> (address or None for any, port or None for any)."""
    host, sep, port_text = entry.partition(":")
    try:
        ip = None if host == "*" else socket.inet_aton(host)
        if host != "*" and socket.inet_ntoa(ip) != host:  # type: ignore[arg-type]
            raise OSError
        port = int(port_text) if sep else None
    except (OSError, ValueError):
        raise ValueError(f"bad allowed destination {entry!r} (use A.B.C.D or A.B.C.D:PORT)") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in allowed destination {entry!r}")
    return ip, port


def parse_dns(spec: str) -> Address:
    """A resolver address: "ADDR", "ADDR:PORT", "[V6ADDR]" or "[V6ADDR]:PORT" (port 53 if none)."""
    host, port = spec, "53"
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"dns {spec!r}: expected [ADDR]:PORT")
        port = rest[1:] or "53"
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
        number = int(port)
    except ValueError:
        raise ValueError(f"dns {spec!r}: not an IP address with an optional port") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"dns {spec!r}: bad port")
    if ip.version == 4:
        return socket.AF_INET, (host, number)
    return socket.AF_INET6, (host, number, 0, 0)


def _system_dns(path: Path = Path("/etc/resolv.conf")) -> Address:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                return parse_dns(f"[{words[1]}]" if ":" in words[1] else words[1])
            except ValueError:
                continue
    return socket.AF_INET, ("127.0.0.1", 53)

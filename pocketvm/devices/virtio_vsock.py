"""virtio-vsock (VIRTIO 1.2 section 5.10): stream sockets between guest and host.

Three queues: the guest posts receive buffers on rx, sends packets on tx,
and posts buffers on event for the one event there is, the transport reset
(sent after a snapshot restore, so the guest drops the connections that
ended with the old VM). Every packet starts with a 44-byte header; a
connection is the pair (guest port, host port), the guest is `guest_cid`
and the host CID 2. Only stream sockets are offered.

The host ends of the connections are Unix streams (`VsockUnixHost`,
Firecracker's convention: a host program connects to the VM's socket and
writes `CONNECT <port>`; a guest connecting to host port P reaches
`PATH_P`). This module moves bytes between those streams and the guest's
queues, all on the run-loop thread, never blocking.

Flow control, both ways, as the specification's credit scheme has it:
every packet tells the peer its receive buffer size (buf_alloc) and how
many bytes it has taken out of it (fwd_cnt). We send the guest no more
than its credit allows, and read a host stream only as far as we can
send; the guest gets a credit of `buf_alloc` bytes per connection, which
is the most we ever hold for a host stream that is slow to read. A guest
that sends beyond its credit gets the connection reset.

The guest is hostile: headers are checked before anything is copied,
packets with a CID other than its own are dropped, packets for unknown
connections are answered with a reset from a bounded queue, connections
are capped (`max_connections`), and connections stuck half-open or
half-closed are reset after a deadline. Nothing here holds more than
about `max_connections * (buf_alloc + TO_GUEST_MAX)` bytes.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pocketvm.backends.vsock_unix import HostStream, VsockUnixHost
from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain, VirtQueue
from pocketvm.memory import GuestMemoryError

log = logging.getLogger(__name__)

ID_VSOCK = 19

RX, TX, EVENT = 0, 1, 2
QUEUE_SIZE = 256

F_STREAM = 1 << 0  # VIRTIO_VSOCK_F_STREAM (drivers that predate it assume streams)

HOST_CID = 2
MIN_GUEST_CID = 3
MAX_GUEST_CID = 0xFFFF_FFFE  # 0xFFFFFFFF is VMADDR_CID_ANY
DEFAULT_GUEST_CID = 3

TYPE_STREAM = 1

OP_REQUEST = 1
OP_RESPONSE = 2
OP_RST = 3
OP_SHUTDOWN = 4
OP_RW = 5
OP_CREDIT_UPDATE = 6
OP_CREDIT_REQUEST = 7

SHUTDOWN_RCV = 1  # the sender will receive no more
SHUTDOWN_SEND = 2  # the sender will send no more

EVENT_TRANSPORT_RESET = 0

# src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt
HDR = struct.Struct("<QQIIIHHIII")
MAX_PAYLOAD = 64 * 1024  # the largest packet Linux sends (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE)
BUF_ALLOC = 256 * 1024  # our receive buffer per connection: the guest's credit
TO_GUEST_MAX = 64 * 1024  # host bytes read ahead of the guest's rx buffers, per connection
READ_CHUNK = 64 * 1024
# A packet to the guest that passes a multiple of this in the stream ends
# at the last such multiple: after a packet cut short (the host had sent no
# more yet) the next one ends at a multiple, so packets go back to starting
# at the same offset modulo 8 as their stream position, and a guest reader
# can have its kernel copy their data 8 bytes at a time (the guest agent
# relies on it, see RX_SKEW there).
PACKET_STEP = 4096
MAX_ORPHAN_RESETS = 64  # resets owed for packets of unknown connections
FIRST_HOST_PORT = 1 << 30  # local ports for host-initiated connections, as Firecracker numbers them
U32 = 0xFFFF_FFFF

_EVENT = struct.Struct("<I")


@dataclass(eq=False)
class Conn:
    """One stream connection between a guest port and a host port."""

    guest_port: int
    host_port: int
    stream: HostStream
    host_initiated: bool
    state: str = "open"  # "connecting" (REQUEST to the guest, no answer yet) or "open"
    deadline: float | None = None  # when a connecting/closing connection is given up
    # host -> guest
    to_guest: bytearray = field(default_factory=bytearray)
    tx_cnt: int = 0  # bytes given to the guest (mod 2^32)
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    host_eof: bool = False  # the host stream ended: SHUTDOWN(SEND) owed once to_guest is out
    # The host program closed its end, not just its sending side: it reads
    # nothing more, and the guest is told so (SHUTDOWN(RCV)) ahead of the
    # bytes still on their way to it, so that it cannot answer them as if
    # somebody were listening.
    host_gone: bool = False
    sent_rcv_shutdown: bool = False
    sent_shutdown: bool = False
    # guest -> host
    to_host: bytearray = field(default_factory=bytearray)
    rx_cnt: int = 0  # bytes taken from the guest (mod 2^32)
    fwd_cnt: int = 0  # of those, bytes written to the host stream (mod 2^32)
    announced_fwd: int = 0  # fwd_cnt as last told to the guest
    guest_no_send: bool = False  # the guest said SHUTDOWN(SEND)
    guest_no_rcv: bool = False  # the guest said SHUTDOWN(RCV)
    host_write_shut: bool = False
    # control packets owed to the guest
    owe_request: bool = False
    owe_response: bool = False
    owe_credit: bool = False
    owe_rst: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.guest_port, self.host_port)

    def guest_credit(self) -> int:
        """Bytes the guest can take now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32
        return max(0, self.peer_buf_alloc - in_flight)

    def can_send_data(self) -> bool:
        return self.state == "open" and bool(self.to_guest) and self.guest_credit() > 0

    def owes_shutdown(self) -> bool:
        return self.host_eof and not self.sent_shutdown and not self.to_guest and self.state == "open"

    def owes_rcv_shutdown(self) -> bool:
        return self.host_gone and not self.sent_rcv_shutdown and not self.sent_shutdown and self.state == "open"

    def has_output(self) -> bool:
        return (
            self.owe_rst or self.owe_request or self.owe_response or self.owe_credit
            or self.can_send_data() or self.owes_shutdown() or self.owes_rcv_shutdown()
        )  # fmt: skip


class VirtioVsock(v.VirtioDevice):
    device_id = ID_VSOCK
    num_queues = 3
    queue_num_max = QUEUE_SIZE

    # Limits and timers; instance attributes may be changed before use (tests do).
    max_connections = 128
    connect_timeout = 10.0  # for the guest to answer a host's CONNECT
    close_timeout = 10.0  # for a half-closed connection to finish
    # How long host connections wait for the guest to handle a transport reset
    # before they go to it anyway (a driver that never re-posts its event buffer).
    reset_ack_timeout = 2.0
    buf_alloc = BUF_ALLOC

    def __init__(self, host: VsockUnixHost, guest_cid: int = DEFAULT_GUEST_CID):
        super().__init__()
        if not MIN_GUEST_CID <= guest_cid <= MAX_GUEST_CID:
            raise ValueError(f"vsock guest CID must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}")
        self.host = host
        self.guest_cid = guest_cid
        self.conns: dict[tuple[int, int], Conn] = {}
        # Connections with a packet for the guest, in turn (a dict as an ordered set).
        self._ready: dict[Conn, None] = {}
        self._orphan_resets: deque[bytes] = deque()
        self._next_host_port = FIRST_HOST_PORT
        self._reset_event_pending = False
        # After a restore the guest is sent the transport reset event; until
        # its driver has handled it (it then re-posts the event buffer), a
        # new connection would be reset along with the old ones: Linux
        # handles event and rx work in any order, and its reset handler
        # ends every connected socket, also one accepted a moment ago. So
        # host connections made meanwhile wait (see _reset_acknowledged).
        self._reset_delivered_at: float | None = None
        self._event_avail_at_reset = 0
        self._held_connects: list[tuple[HostStream, int]] = []  # (stream, guest port)
        self._next_deadline: float | None = None
        self.stats: dict[str, int] = {
            "to_guest_bytes": 0, "to_host_bytes": 0, "connections": 0, "resets_sent": 0,
            "dropped_packets": 0, "refused": 0,
        }  # fmt: skip

    # --- virtio hooks --------------------------------------------------------------------

    def device_features(self) -> int:
        return F_STREAM

    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def config_write(self, offset: int, data: bytes) -> None:
        guest_error(log, "virtio-vsock: ignored config write at %#x", offset, level=logging.DEBUG)

    def queue_notify(self, q: int) -> None:
        if q == TX:
            self.serve_queue(TX, self._transmit)
            self._send_to_guest()
        elif q == RX:
            self._send_to_guest()
        else:
            self._deliver_reset_event()
            if self._reset_delivered_at is not None:
                self._release_held(time.monotonic())
                self._send_to_guest()

    def reset(self) -> None:
        """The driver reset the device: every connection ends."""
        for conn in list(self.conns.values()):
            self._drop(conn)
        self._ready.clear()
        self._orphan_resets.clear()
        self._reset_event_pending = False
        self._reset_delivered_at = None
        for stream, _ in self._held_connects:
            stream.close()
        self._held_connects.clear()
        self._next_deadline = None

    def close(self) -> None:
        self.reset()
        self.host.close()

    def save(self) -> dict[str, Any]:
        # Connections are not saved: their host ends belong to this process.
        # A restored guest is told so by the transport reset event, if it
        # had any: every connected (or connecting) guest socket has a
        # connection here, from its first packet on, until the guest has
        # been sent its reset.
        live = len(self.conns) + len(self._held_connects) + len(self._orphan_resets)
        return {"guest_cid": self.guest_cid, "stats": dict(self.stats), "connections": live}

    def load(self, state: dict[str, Any]) -> None:
        self.reset()
        cid = int(state.get("guest_cid", self.guest_cid))
        if cid != self.guest_cid:
            raise ValueError(f"vsock guest CID {cid} differs from the VM's {self.guest_cid}")
        for name, count in state.get("stats", {}).items():
            if name in self.stats:
                self.stats[name] = int(count)
        # Without connections at the snapshot (a template taken idle) the
        # reset would change nothing in the guest, and host connections
        # would wait for its handler to run: the first connection after
        # every restore would pay for it. A state without the count says
        # nothing: the reset is sent.
        self._reset_event_pending = state.get("connections", 1) != 0

    # --- the run loop's side -----------------------------------------------------------------

    def poll(self) -> None:
        """Serve the host sockets: new connections, bytes to move, deadlines.
        Called by the run loop (cheap when nothing happened)."""
        now = time.monotonic()
        if self._reset_event_pending:
            self._deliver_reset_event()
        for stream, port in self.host.poll(now):
            if self._reset_delivered_at is not None and len(self._held_connects) < self.max_connections:
                self._held_connects.append((stream, port))
            else:
                self._host_connect(stream, port, now)
        if self._reset_delivered_at is not None:
            self._release_held(now)
        if self._next_deadline is not None and now >= self._next_deadline:
            self._expire(now)
        for conn in list(self.conns.values()):
            if conn.stream.writable and conn.to_host:
                self._flush_to_host(conn)
            if conn.stream.readable:
                self._read_host(conn)
        self._send_to_guest()

    def wants_attention(self) -> bool:
        """True when poll() has work it could do now, so the VM should not sleep."""
        if self.host.pending():
            return True
        if not self._rx_ready():
            return False
        if self._orphan_resets or any(c.has_output() for c in self._ready):
            return _has_available(self.transport.queues[RX])  # type: ignore[union-attr]
        return False

    # --- guest -> host ---------------------------------------------------------------------------

    def _transmit(self, chain: Chain) -> int:
        assert self.transport is not None
        if chain.error or chain.writable:
            if chain.writable:
                guest_error(log, "virtio-vsock: tx chain with device-writable buffers dropped")
            self.stats["dropped_packets"] += 1
            return 0
        total = chain.readable_len
        if total < HDR.size:
            guest_error(log, "virtio-vsock: tx packet of %d bytes is shorter than a header", total)
            self.stats["dropped_packets"] += 1
            return 0
        src_cid, dst_cid, src_port, dst_port, length, typ, op, flags, buf_alloc, fwd_cnt = HDR.unpack(
            chain.read(self.transport.ram, 0, HDR.size)
        )
        if src_cid != self.guest_cid:
            guest_error(log, "virtio-vsock: packet from CID %d (the guest is %d) dropped", src_cid, self.guest_cid)
            self.stats["dropped_packets"] += 1
            return 0
        key = (src_port, dst_port)
        conn = self.conns.get(key) if dst_cid == HOST_CID and typ == TYPE_STREAM else None
        if length > MAX_PAYLOAD or HDR.size + length > total:
            guest_error(log, "virtio-vsock: packet claims %d payload bytes in a %d-byte chain", length, total)
            self.stats["dropped_packets"] += 1
            if conn is not None:
                self._reset(conn)
            return 0
        if conn is None:
            if op == OP_REQUEST and dst_cid == HOST_CID and typ == TYPE_STREAM:
                self._guest_connect(src_port, dst_port, buf_alloc, fwd_cnt)
            elif op != OP_RST:
                # As Linux does for a packet that matches no socket.
                self._orphan_reset(src_port, dst_port, dst_cid)
            return 0
        if conn.owe_rst:  # being reset: only the guest's own reset still matters
            if op == OP_RST:
                self._drop(conn)
            return 0
        conn.peer_buf_alloc = buf_alloc
        conn.peer_fwd_cnt = fwd_cnt
        if op == OP_RW:
            self._guest_data(conn, chain, length)
        elif op == OP_RESPONSE:
            self._guest_accepted(conn)
        elif op == OP_RST:
            self._drop(conn)
            return 0
        elif op == OP_SHUTDOWN:
            self._guest_shutdown(conn, flags)
        elif op == OP_CREDIT_REQUEST:
            conn.owe_credit = True
        elif op == OP_REQUEST:
            guest_error(log, "virtio-vsock: connection request for a connection that exists; reset")
            self._reset(conn)
            return 0
        elif op != OP_CREDIT_UPDATE:
            guest_error(log, "virtio-vsock: packet with unknown op %d dropped", op)
            self.stats["dropped_packets"] += 1
        self._mark(conn)
        return 0

    def _guest_connect(self, guest_port: int, host_port: int, buf_alloc: int, fwd_cnt: int) -> None:
        if len(self.conns) >= self.max_connections:
            guest_error(log, "virtio-vsock: connection to host port %d refused: %d connections open",
                        host_port, len(self.conns))  # fmt: skip
            stream = None
        else:
            stream = self.host.connect(host_port)
        if stream is None:
            self.stats["refused"] += 1
            self._orphan_reset(guest_port, host_port, HOST_CID)
            return
        conn = Conn(guest_port, host_port, stream, host_initiated=False, peer_buf_alloc=buf_alloc, peer_fwd_cnt=fwd_cnt)
        conn.owe_response = True
        self.conns[conn.key] = conn
        self.stats["connections"] += 1
        self._mark(conn)

    def _guest_accepted(self, conn: Conn) -> None:
        if conn.state != "connecting" or conn.owe_request:
            guest_error(log, "virtio-vsock: unexpected connection response; reset")
            self._reset(conn)
            return
        # The stream is fresh and has had nothing written: the line always fits.
        try:
            ok = conn.stream.send(f"OK {conn.host_port}\n".encode())
        except OSError:
            ok = 0
        if not ok:
            self._reset(conn)
            return
        conn.state = "open"
        conn.deadline = None

    def _guest_data(self, conn: Conn, chain: Chain, length: int) -> None:
        assert self.transport is not None
        if conn.state != "open" or conn.guest_no_send:
            guest_error(log, "virtio-vsock: data on a connection that is not open for it; reset")
            self._reset(conn)
            return
        held = (conn.rx_cnt - conn.fwd_cnt) & U32
        if held + length > self.buf_alloc:
            guest_error(log, "virtio-vsock: guest sent %d bytes beyond its credit; connection reset",
                        held + length - self.buf_alloc)  # fmt: skip
            self._reset(conn)
            return
        if length == 0:
            return
        conn.to_host += chain.read(self.transport.ram, HDR.size, length)
        conn.rx_cnt = (conn.rx_cnt + length) & U32
        self._flush_to_host(conn)

    def _guest_shutdown(self, conn: Conn, flags: int) -> None:
        if flags & SHUTDOWN_RCV:
            conn.guest_no_rcv = True
            conn.to_guest.clear()
        if flags & SHUTDOWN_SEND:
            conn.guest_no_send = True
        if conn.guest_no_send and conn.guest_no_rcv:
            # Closed: what is left for the host gets this long to go out.
            self._set_deadline(conn, time.monotonic() + self.close_timeout)
        self._after_host_progress(conn)

    def _flush_to_host(self, conn: Conn) -> None:
        """Write what the guest sent to the host stream, as far as it takes it."""
        if conn.owe_rst:
            return
        wrote = 0
        while conn.to_host:
            try:
                # Views released before the buffer changes size.
                with memoryview(conn.to_host) as view, view[: 4 * READ_CHUNK] as part:
                    n = conn.stream.send(part)
            except OSError:
                self._reset(conn)  # the host program went away
                return
            if n == 0:
                conn.stream.want(read=False, write=True)
                break
            del conn.to_host[:n]
            wrote += n
        if wrote:
            conn.fwd_cnt = (conn.fwd_cnt + wrote) & U32
            self.stats["to_host_bytes"] += wrote
            # Tell the guest about the room made, not after every write:
            # once a quarter of its credit is back (or at once when it may
            # be waiting for it).
            unannounced = (conn.fwd_cnt - conn.announced_fwd) & U32
            if unannounced >= self.buf_alloc // 4:
                conn.owe_credit = True
                self._mark(conn)
        self._after_host_progress(conn)

    def _after_host_progress(self, conn: Conn) -> None:
        """Finish a half-close or close once everything owed has gone out."""
        if conn.owe_rst or conn.to_host:
            return
        if conn.guest_no_send and not conn.host_write_shut:
            conn.stream.shutdown_write()
            conn.host_write_shut = True
        # Both ways done: the guest closed (SHUTDOWN with both flags), or
        # each side has said it sends no more. Linux waits for our reset.
        if conn.guest_no_send and (conn.guest_no_rcv or (conn.host_eof and conn.sent_shutdown)):
            self._reset(conn)

    # --- host -> guest -------------------------------------------------------------------------

    def _host_connect(self, stream: HostStream, guest_port: int, now: float) -> None:
        if not self._rx_ready() or len(self.conns) >= self.max_connections:
            self.stats["refused"] += 1
            stream.close()
            return
        port = self._free_host_port(guest_port)
        conn = Conn(guest_port, port, stream, host_initiated=True, state="connecting")
        conn.owe_request = True
        self.conns[conn.key] = conn
        self.stats["connections"] += 1
        self._set_deadline(conn, now + self.connect_timeout)
        self._mark(conn)

    def _free_host_port(self, guest_port: int) -> int:
        while True:
            port = self._next_host_port
            self._next_host_port = port + 1 if port < U32 else FIRST_HOST_PORT
            if (guest_port, port) not in self.conns:
                return port

    def _read_host(self, conn: Conn) -> None:
        """Read from the host stream as far as the guest can take it."""
        if conn.state != "open" or conn.host_eof or conn.guest_no_rcv or conn.owe_rst:
            return
        self._read_host_bytes(conn)
        if not conn.host_gone and not conn.owe_rst and conn.stream.hung_up():
            conn.host_gone = True
            self._mark(conn)

    def _read_host_bytes(self, conn: Conn) -> None:
        while True:
            room = min(conn.guest_credit(), TO_GUEST_MAX) - len(conn.to_guest)
            if room <= 0:
                return  # asked again when the guest gives credit or takes bytes
            try:
                data = conn.stream.recv(min(room, READ_CHUNK))
            except OSError:
                self._reset(conn)
                return
            if data is None:
                conn.stream.want(read=True, write=bool(conn.to_host))
                return
            if not data:
                conn.host_eof = True
                self._mark(conn)
                return
            conn.to_guest += data
            self._mark(conn)

    def _send_to_guest(self) -> None:
        """Fill the guest's receive buffers with the packets owed to it."""
        if not self._rx_ready():
            return
        assert self.transport is not None
        queue = self.transport.queues[RX]
        # Connections marked earlier may have nothing left to send (the
        # guest took back its credit): they must not cost it a buffer.
        for conn in [c for c in self._ready if not (self.conns.get(c.key) is c and c.has_output())]:
            del self._ready[conn]
        pushed = False
        for _ in range(queue.num):
            if not self._orphan_resets and not self._ready:
                break
            chain = queue.pop()
            if chain is None:
                break
            queue.push(chain.head, self._receive_into(chain))
            pushed = True
        if pushed:
            self.transport.notify_used(RX)
        if queue.broken:
            self.transport.needs_reset(f"queue {RX}: {queue.broken}")
        # Streams the guest has room for again: ask to hear when they have bytes.
        for conn in self.conns.values():
            if conn.stream.readable and conn.state == "open":
                self._read_host(conn)
            elif (conn.state == "open" and not conn.host_eof and not conn.guest_no_rcv
                  and min(conn.guest_credit(), TO_GUEST_MAX) > len(conn.to_guest)):  # fmt: skip
                conn.stream.want(read=True, write=bool(conn.to_host))

    def _receive_into(self, chain: Chain) -> int:
        """Write the next owed packet into `chain`; returns the used length."""
        assert self.transport is not None
        if chain.error:
            return 0
        room = chain.writable_len - HDR.size
        if chain.readable or room < 0:
            guest_error(log, "virtio-vsock: unusable rx buffer (%d writable bytes) returned empty", chain.writable_len)
            return 0
        packet = self._next_packet(room)
        if packet is None:
            return 0
        return chain.write(self.transport.ram, 0, packet)

    def _next_packet(self, room: int) -> bytes | None:
        if self._orphan_resets:
            self.stats["resets_sent"] += 1
            return self._orphan_resets.popleft()
        # Each connection gets one look: one whose data does not fit this
        # buffer (a guest may post buffers with no room past the header)
        # waits for the next.
        for _ in range(len(self._ready)):
            conn = next(iter(self._ready))
            del self._ready[conn]
            packet = self._conn_packet(conn, room)
            if self.conns.get(conn.key) is conn and conn.has_output():
                self._ready[conn] = None  # its turn again after the others
            if packet is not None:
                return packet
        return None

    def _conn_packet(self, conn: Conn, room: int) -> bytes | None:
        if conn.owe_rst:
            self.stats["resets_sent"] += 1
            self._drop(conn)
            return self._header(conn, OP_RST)
        if conn.owe_request:
            conn.owe_request = False
            return self._header(conn, OP_REQUEST)
        if conn.owe_response:
            conn.owe_response = False
            return self._header(conn, OP_RESPONSE)
        if conn.owes_rcv_shutdown() and not conn.owes_shutdown():
            conn.sent_rcv_shutdown = True
            return self._header(conn, OP_SHUTDOWN, flags=SHUTDOWN_RCV)
        if conn.can_send_data() and room > 0:
            n = min(room, conn.guest_credit(), len(conn.to_guest), MAX_PAYLOAD)
            end = conn.tx_cnt + n
            if end - end % PACKET_STEP > conn.tx_cnt:  # a step boundary on the way: end there
                n -= end % PACKET_STEP
            data = bytes(conn.to_guest[:n])
            del conn.to_guest[:n]
            conn.tx_cnt = (conn.tx_cnt + n) & U32
            self.stats["to_guest_bytes"] += n
            return self._header(conn, OP_RW, n) + data
        if conn.owes_shutdown():
            conn.sent_shutdown = True
            flags = SHUTDOWN_SEND | (SHUTDOWN_RCV if conn.host_gone else 0)
            packet = self._header(conn, OP_SHUTDOWN, flags=flags)
            self._after_host_progress(conn)
            return packet
        if conn.owe_credit:
            return self._header(conn, OP_CREDIT_UPDATE)
        return None

    def _header(self, conn: Conn, op: int, length: int = 0, flags: int = 0) -> bytes:
        # Every packet carries our credit, so none is owed separately after it.
        conn.owe_credit = False
        conn.announced_fwd = conn.fwd_cnt
        return HDR.pack(
            HOST_CID, self.guest_cid, conn.host_port, conn.guest_port, length, TYPE_STREAM, op, flags,
            self.buf_alloc, conn.fwd_cnt,
        )  # fmt: skip

    # --- connection bookkeeping -------------------------------------------------------------------

    def _mark(self, conn: Conn) -> None:
        if self.conns.get(conn.key) is conn and conn.has_output():
            self._ready.setdefault(conn, None)

    def _reset(self, conn: Conn) -> None:
        """End `conn`: its host stream closes now, the guest gets a reset."""
        if conn.owe_rst:
            return
        conn.owe_rst = True
        conn.to_guest.clear()
        conn.to_host.clear()
        conn.stream.close()
        self._ready[conn] = None

    def _drop(self, conn: Conn) -> None:
        """Forget `conn` without telling the guest."""
        self.conns.pop(conn.key, None)
        self._ready.pop(conn, None)
        conn.stream.close()

    def _orphan_reset(self, guest_port: int, host_port: int, cid: int) -> None:
        if len(self._orphan_resets) >= MAX_ORPHAN_RESETS:
            self.stats["dropped_packets"] += 1
            return
        src_cid = cid if cid <= U32 else HOST_CID
        self._orphan_resets.append(
            HDR.pack(src_cid, self.guest_cid, host_port, guest_port, 0, TYPE_STREAM, OP_RST, 0, 0, 0)
        )

    def _set_deadline(self, conn: Conn, when: float) -> None:
        if conn.deadline is None or when < conn.deadline:
            conn.deadline = when
        if self._next_deadline is None or when < self._next_deadline:
            self._next_deadline = when

    def _expire(self, now: float) -> None:
        nxt: float | None = None
        for conn in list(self.conns.values()):
            if conn.deadline is None or conn.owe_rst:
                continue
            if now >= conn.deadline:
                why = "did not answer a connection request" if conn.state == "connecting" else "did not finish closing"
                log.info("virtio-vsock: guest port %d %s in time; reset", conn.guest_port, why)
                self._reset(conn)
            elif nxt is None or conn.deadline < nxt:
                nxt = conn.deadline
        self._next_deadline = nxt

    def next_deadline(self) -> float | None:
        """When poll() next has a timer to serve (monotonic seconds), if any."""
        reset_wait = None if self._reset_delivered_at is None else self._reset_delivered_at + self.reset_ack_timeout
        times = [t for t in (self._next_deadline, self.host.next_deadline(), reset_wait) if t is not None]
        return min(times, default=None)

    # --- events ---------------------------------------------------------------------------------

    def _deliver_reset_event(self) -> None:
        """Tell the guest that every connection it had is gone (after a restore)."""
        if not self._reset_event_pending or not self._queue_ready(EVENT):
            return
        assert self.transport is not None
        queue = self.transport.queues[EVENT]
        while True:
            chain = queue.pop()
            if chain is None:
                return  # told when the driver posts an event buffer
            if chain.error or chain.readable or chain.writable_len < _EVENT.size:
                guest_error(log, "virtio-vsock: unusable event buffer returned empty")
                queue.push(chain.head, 0)
                continue
            queue.push(chain.head, chain.write(self.transport.ram, 0, _EVENT.pack(EVENT_TRANSPORT_RESET)))
            self._reset_event_pending = False
            self._reset_delivered_at = time.monotonic()
            self._event_avail_at_reset = _avail_idx(queue)
            self.transport.notify_used(EVENT)
            return

    def _reset_acknowledged(self, now: float) -> bool:
        """Whether the guest has handled the transport reset: Linux re-posts
        the event buffer (and notifies) only after its handler ran. A guest
        that never does is given `reset_ack_timeout`."""
        assert self._reset_delivered_at is not None
        if now >= self._reset_delivered_at + self.reset_ack_timeout or not self._queue_ready(EVENT):
            return True
        return _avail_idx(self.transport.queues[EVENT]) != self._event_avail_at_reset  # type: ignore[union-attr]

    def _release_held(self, now: float) -> None:
        """Once the reset is handled, the host connections made meanwhile go to the guest."""
        if not self._reset_acknowledged(now):
            return
        self._reset_delivered_at = None
        held, self._held_connects = self._held_connects, []
        for stream, port in held:
            self._host_connect(stream, port, now)

    # --- helpers ------------------------------------------------------------------------------------

    def _queue_ready(self, q: int) -> bool:
        t = self.transport
        if t is None or not t.status & v.STATUS_DRIVER_OK or t.status & v.STATUS_DEVICE_NEEDS_RESET:
            return False
        queue = t.queues[q]
        return queue.ready and not queue.broken

    def _rx_ready(self) -> bool:
        return self._queue_ready(RX)


def _avail_idx(queue: VirtQueue) -> int:
    """The driver's index into its available ring (-1 when unreadable)."""
    try:
        return queue.ram.read_int(queue.driver_addr + 2, 2)
    except GuestMemoryError:
        return -1


def _has_available(queue: VirtQueue) -> bool:
    """Whether the driver has made a chain available that is not yet popped."""
    if not queue.ready or queue.broken:
        return False
    try:
        return queue.ram.read_int(queue.driver_addr + 2, 2) != queue.last_avail
    except GuestMemoryError:
        return False  # pop() finds this out and stops the queue

"""One NATed TCP connection: a TCP endpoint facing the guest, a host socket behind it.

The guest talks TCP over frames to this endpoint; the host kernel does the
real TCP with the outside on an ordinary socket; bytes are relayed between
the two through two bounded buffers:

- to_host: data the guest sent that the host socket has not taken yet. Our
  advertised window is the room left in it, so a slow host reader slows the
  guest down instead of growing the buffer.
- to_guest: data read from the host socket that the guest has not yet
  acknowledged, from snd_una on. Unacknowledged bytes stay in it so they can
  be sent again; when it is full the host socket is no longer read.

The link to the guest is lossless but for one thing: a frame is dropped when
the guest's receive ring is full. Go-back-N retransmission after a timeout
is enough for that, so there is no SACK, no congestion control, no window
scaling and no timestamps (none of these options is sent back, so the guest
uses none of them either).
"""

from __future__ import annotations

import enum
import logging
import random
import selectors
import socket
import struct
from typing import Protocol

from pocketvm.backends.netstack import tcp
from pocketvm.backends.netstack.ipv4 import PROTO_TCP
from pocketvm.backends.netstack.tcp import ACK, FIN, PSH, RST, SYN, seq_add, seq_diff

log = logging.getLogger(__name__)

# The guest's link is Ethernet with a 1500-byte MTU.
MSS = 1460
# A guest announcing a tiny MSS would make us cut its window into a flood of frames.
MIN_MSS = 88
# Without an MSS option, RFC 9293 says 536.
DEFAULT_MSS = 536
MAX_WINDOW = 0xFFFF


class State(enum.Enum):
    CONNECTING = "connecting"  # the guest's SYN is in; the host connect() is in progress
    SYN_SENT = "syn-sent"  # a host forward: our SYN to the guest waits for its SYN-ACK
    SYN_RCVD = "syn-rcvd"  # our SYN-ACK to the guest waits for its ACK
    ESTABLISHED = "established"  # data flows; either direction may have ended already
    TIME_WAIT = "time-wait"  # both directions ended; lingers to re-ACK a repeated FIN
    CLOSED = "closed"


class Stack(Protocol):
    """What a connection needs from the network it lives in."""

    now: float
    tcp_buffer: int
    tcp_rto: float
    tcp_rto_max: float
    tcp_max_retries: int
    tcp_connect_timeout: float
    tcp_idle_timeout: float
    tcp_closing_timeout: float
    tcp_time_wait: float

    def ip_to_guest(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> None: ...
    def watch(self, conn: TcpConn, events: int) -> None: ...
    def schedule(self, deadline: float) -> None: ...
    def want_flush(self, conn: TcpConn) -> None: ...
    def forget(self, conn: TcpConn) -> None: ...


Key = tuple[bytes, int, bytes, int]  # guest ip, guest port, remote ip (as the guest sees it), remote port


class TcpConn:
    def __init__(self, stack: Stack, key: Key, sock: socket.socket, state: State):
        self.stack = stack
        self.key = key
        self.guest_ip, self.guest_port, self.remote_ip, self.remote_port = key
        self.sock: socket.socket | None = sock
        self.state = state
        self.watched = 0  # selector events registered for sock

        # guest -> host
        self.irs = 0
        self.rcv_nxt = 0
        self.to_host = bytearray()
        self.adv_wnd = 0  # the window we last told the guest
        self.guest_fin = False
        self.host_shut = False  # shutdown(SHUT_WR) done after the guest's FIN
        self.ack_pending = False

        # host -> guest
        self.iss = random.getrandbits(32)
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss  # highest sequence sent; snd_nxt goes back below it to retransmit
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.mss = DEFAULT_MSS
        self.to_guest = bytearray()
        self.host_eof = False
        self.fin_seq: int | None = None
        self.fin_acked = False

        self.rto = stack.tcp_rto
        self.retries = 0
        self.timer: float | None = None  # retransmission, zero-window probe, or end of TIME_WAIT
        self.idle_deadline = 0.0
        self._touch()

    # --- opening -------------------------------------------------------------------

    @classmethod
    def from_guest_syn(cls, stack: Stack, key: Key, sock: socket.socket, seg: tcp.Segment) -> TcpConn:
        """A connection for the guest's SYN; sock is connecting (non-blocking) to the destination."""
        conn = cls(stack, key, sock, State.CONNECTING)
        conn._take_syn(seg)
        conn._update_watch()
        return conn

    @classmethod
    def to_guest(cls, stack: Stack, key: Key, sock: socket.socket) -> TcpConn:
        """A connection the host opens (a host forward): sends the guest a SYN."""
        conn = cls(stack, key, sock, State.SYN_SENT)
        conn._send(conn.iss, SYN, mss=MSS)
        conn.snd_nxt = conn.snd_max = seq_add(conn.iss, 1)
        conn._arm(stack.now + conn.rto)
        return conn

    def _take_syn(self, seg: tcp.Segment) -> None:
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self.snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self.mss = max(MIN_MSS, min(MSS, seg.mss if seg.mss is not None else DEFAULT_MSS))

    # --- events ----------------------------------------------------------------------

    def deadline(self) -> float:
        return self.idle_deadline if self.timer is None else min(self.timer, self.idle_deadline)

    def on_segment(self, seg: tcp.Segment) -> None:
        """A segment from the guest for this connection."""
        self._touch()
        state = self.state
        if seg.flags & RST:
            self._on_rst(seg)
            return
        if state is State.CONNECTING:
            return  # a repeated SYN: the SYN-ACK follows when the host connect() completes
        if state is State.SYN_SENT:
            self._on_syn_ack(seg)
            return
        if seg.flags & SYN:
            if state is State.SYN_RCVD and seg.seq == self.irs:
                self._send(self.iss, SYN | ACK, mss=MSS)  # our SYN-ACK was lost
            else:
                self._want_ack()  # RFC 5961 challenge ACK
            return
        if not seg.flags & ACK:
            return
        if state is State.TIME_WAIT:
            if seg.seq_len:
                self._want_ack()
            return
        if state is State.SYN_RCVD:
            if seg.ack != seq_add(self.iss, 1):
                self._send_rst(seg.ack)
                return
            self.snd_una = seg.ack
            self._established()
        if not self._on_ack(seg):
            return
        self._on_data(seg)
        self._flush_to_host()
        self._output()
        self._maybe_finish()

    def on_socket(self, events: int) -> None:
        """The host socket is ready for the registered events."""
        if self.sock is None:
            return
        self._touch()
        if self.state is State.CONNECTING:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                log.debug("tcp %s: host connect failed: %s", self._name(), error)
                self.abort(rst=True)
                return
            self.state = State.SYN_RCVD
            self._send(self.iss, SYN | ACK, mss=MSS)
            self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
            self._arm(self.stack.now + self.rto)
            self._update_watch()
            return
        if events & selectors.EVENT_WRITE:
            self._flush_to_host()
        if events & selectors.EVENT_READ and self.state is State.ESTABLISHED:
            self._read_host()
        self._output()
        self._maybe_finish()

    def on_timer(self, now: float) -> None:
        if now >= self.idle_deadline:
            log.debug("tcp %s: idle in %s; dropped", self._name(), self.state.value)
            self.abort(rst=self.state is not State.TIME_WAIT)
            return
        if self.timer is None or now < self.timer:
            return
        self.timer = None
        state = self.state
        if state is State.TIME_WAIT:
            self._close(State.CLOSED)
            return
        if state in (State.SYN_RCVD, State.SYN_SENT):
            if not self._backoff():
                return
            flags = SYN | ACK if state is State.SYN_RCVD else SYN
            self._send(self.iss, flags, mss=MSS)
            self._arm(now + self.rto)
            return
        if state is not State.ESTABLISHED:
            return
        if self.snd_una != self.snd_max:
            if not self._backoff():
                return
            self.snd_nxt = self.snd_una  # go back N
            if not self._output():
                self._probe()
        elif self.to_guest and self.snd_wnd == 0:
            # Data waits for a window: ask for it again in case the guest's
            # window update was lost. A guest may keep its window shut for
            # as long as it likes, so this never gives up.
            self.rto = min(self.rto * 2, self.stack.tcp_rto_max)
            self._probe()
        else:
            return
        if self.timer is None:
            self._arm(now + self.rto)

    def flush(self) -> None:
        """End of a batch: send the ACK that the batch's segments asked for, if none went yet."""
        if self.ack_pending and self.state is not State.CLOSED:
            self._send(self.snd_nxt, ACK)

    def abort(self, rst: bool) -> None:
        """Drop the connection now; rst tells the guest (the host peer always gets a reset)."""
        if self.state is State.CLOSED:
            return
        if rst:
            self._send(self.snd_nxt, RST | ACK)
        self._close(State.CLOSED, reset_host=True)

    def close_socket(self) -> None:
        """The network is shutting down: let go of the host socket."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- guest side -------------------------------------------------------------------

    def _on_rst(self, seg: tcp.Segment) -> None:
        state = self.state
        if state is State.SYN_SENT:
            if seg.flags & ACK and seg.ack == seq_add(self.iss, 1):
                self._close(State.CLOSED, reset_host=True)  # nothing listens on the guest's port
            return
        if state is State.TIME_WAIT:
            self._close(State.CLOSED)
            return
        # RFC 5961 would only take an exact match; the guest can only reset its
        # own connections, so any in-window RST will do.
        offset = seq_diff(seg.seq, self.rcv_nxt)
        if 0 <= offset <= max(self._window(), 1):
            self._close(State.CLOSED, reset_host=True)

    def _on_syn_ack(self, seg: tcp.Segment) -> None:
        if seg.flags & (SYN | ACK) != SYN | ACK:
            return
        if seg.ack != seq_add(self.iss, 1):
            self._send_rst(seg.ack)
            return
        self._take_syn(seg)
        self.snd_una = seg.ack
        self._established()
        self._want_ack()

    def _established(self) -> None:
        self.state = State.ESTABLISHED
        self.retries = 0
        self.rto = self.stack.tcp_rto
        self.timer = None
        self._update_watch()

    def _on_ack(self, seg: tcp.Segment) -> bool:
        """Take the segment's acknowledgment and window; False if the segment is to be dropped."""
        ack = seg.ack
        if seq_diff(ack, self.snd_max) > 0:
            self._want_ack()  # it acknowledges what was never sent
            return False
        if seq_diff(ack, self.snd_una) > 0:
            acked = seq_diff(ack, self.snd_una)
            del self.to_guest[: min(acked, len(self.to_guest))]
            self.snd_una = ack
            if seq_diff(self.snd_nxt, ack) < 0:
                self.snd_nxt = ack
            if self.fin_seq is not None and ack == seq_add(self.fin_seq, 1):
                self.fin_acked = True
            self.retries = 0
            self.rto = self.stack.tcp_rto
            self.timer = None
            if self.snd_una != self.snd_max:
                self._arm(self.stack.now + self.rto)
            self._update_watch()
        # RFC 9293 3.10.7.4: only a segment newer than the last window update may change the window.
        if seq_diff(seg.seq, self.snd_wl1) > 0 or (seg.seq == self.snd_wl1 and seq_diff(ack, self.snd_wl2) >= 0):
            self.snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self.snd_wl2 = ack
        return True

    def _on_data(self, seg: tcp.Segment) -> None:
        payload = seg.payload
        fin = bool(seg.flags & FIN)
        length = len(payload) + fin
        offset = seq_diff(self.rcv_nxt, seg.seq)  # bytes of it we already have
        if length == 0:
            if offset != 0:
                # A window probe, or the guest is ahead of what we took
                # (RFC 9293: an unacceptable segment is answered with an ACK).
                self._want_ack()
            return
        if self.guest_fin or offset < 0 or offset >= length:
            # A repeat, or beyond a gap (out-of-order segments are not kept):
            # a duplicate ACK tells the guest where we are.
            self._want_ack()
            return
        payload = payload[offset:]
        room = self.stack.tcp_buffer - len(self.to_host)
        if len(payload) > room:
            payload = payload[:room]
            fin = False
        self.to_host += payload
        self.rcv_nxt = seq_add(self.rcv_nxt, len(payload) + fin)
        self.guest_fin = self.guest_fin or fin
        self._want_ack()

    def _window(self) -> int:
        return max(0, min(MAX_WINDOW, self.stack.tcp_buffer - len(self.to_host)))

    def _output(self) -> bool:
        """Send what the guest's window allows; True if anything went."""
        if self.state is not State.ESTABLISHED:
            return False
        sent = False
        while True:
            in_flight = seq_diff(self.snd_nxt, self.snd_una)
            unsent = len(self.to_guest) - in_flight
            room = self.snd_wnd - in_flight
            if unsent > 0 and room > 0:
                n = min(unsent, room, self.mss)
                payload = bytes(self.to_guest[in_flight : in_flight + n])
                self._send(self.snd_nxt, ACK | (PSH if n == unsent else 0), payload)
                self._advance(n)
                sent = True
                continue
            if unsent == 0 and self.host_eof and not self.fin_acked and in_flight == len(self.to_guest):
                # The FIN goes even into a zero window: it carries no data, and
                # receivers take it (and it is retransmitted if not).
                self.fin_seq = self.snd_nxt
                self._send(self.snd_nxt, FIN | ACK)
                self._advance(1)
                sent = True
            break
        if self.to_guest and self.snd_wnd == 0 and self.snd_una == self.snd_max and self.timer is None:
            self._arm(self.stack.now + self.rto)  # zero-window probe
        return sent

    def _advance(self, n: int) -> None:
        self.snd_nxt = seq_add(self.snd_nxt, n)
        if seq_diff(self.snd_nxt, self.snd_max) > 0:
            self.snd_max = self.snd_nxt
        if self.timer is None:
            self._arm(self.stack.now + self.rto)

    def _probe(self) -> None:
        # An already acknowledged sequence number with no data: the guest
        # answers with an ACK carrying its current window (as Linux probes).
        self._send(seq_add(self.snd_una, -1), ACK)

    def _backoff(self) -> bool:
        self.retries += 1
        if self.retries > self.stack.tcp_max_retries:
            log.debug("tcp %s: no answer from the guest; reset", self._name())
            self.abort(rst=True)
            return False
        self.rto = min(self.rto * 2, self.stack.tcp_rto_max)
        return True

    def _want_ack(self) -> None:
        if not self.ack_pending:
            self.ack_pending = True
            self.stack.want_flush(self)

    def _send(self, seq: int, flags: int, payload: bytes = b"", mss: int | None = None) -> None:
        window = self._window()
        if flags & ACK:
            self.ack_pending = False
            self.adv_wnd = window
        segment = tcp.build(
            self.remote_ip, self.guest_ip, self.remote_port, self.guest_port,
            seq, self.rcv_nxt if flags & ACK else 0, flags, window, payload, mss,
        )
        self.stack.ip_to_guest(self.remote_ip, self.guest_ip, PROTO_TCP, segment)

    def _send_rst(self, seq: int) -> None:
        segment = tcp.build(self.remote_ip, self.guest_ip, self.remote_port, self.guest_port, seq, 0, RST, 0)
        self.stack.ip_to_guest(self.remote_ip, self.guest_ip, PROTO_TCP, segment)

    # --- host side --------------------------------------------------------------------

    def _read_host(self) -> None:
        room = self.stack.tcp_buffer - len(self.to_guest)
        if room <= 0 or self.host_eof or self.sock is None:
            return
        try:
            data = self.sock.recv(min(room, 65536))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("tcp %s: host recv: %s", self._name(), e)
            self.abort(rst=True)
            return
        if data:
            self.to_guest += data
        else:
            self.host_eof = True
        self._update_watch()

    def _flush_to_host(self) -> None:
        if self.sock is None or self.state is not State.ESTABLISHED:
            return
        while self.to_host:
            try:
                n = self.sock.send(self.to_host)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.debug("tcp %s: host send: %s", self._name(), e)
                self.abort(rst=True)
                return
            del self.to_host[:n]
        if self.guest_fin and not self.to_host and not self.host_shut:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the host side is gone already; its EOF or reset comes through recv
            self.host_shut = True
        # Tell a guest that was held back that there is room again, once there is a useful amount.
        if self._window() >= self.adv_wnd + min(self.stack.tcp_buffer // 2, 2 * MSS):
            self._want_ack()
        self._update_watch()

    def _maybe_finish(self) -> None:
        if self.state is State.ESTABLISHED and self.guest_fin and self.host_shut and self.fin_acked:
            self._release_socket(reset_host=False)
            self.state = State.TIME_WAIT
            self.timer = None
            self._arm(self.stack.now + self.stack.tcp_time_wait)

    def _update_watch(self) -> None:
        if self.sock is None:
            return
        events = 0
        if self.state is State.CONNECTING or self.to_host:
            events |= selectors.EVENT_WRITE
        if self.state is State.ESTABLISHED and not self.host_eof and len(self.to_guest) < self.stack.tcp_buffer:
            events |= selectors.EVENT_READ
        if events != self.watched:
            self.stack.watch(self, events)
            self.watched = events

    def _release_socket(self, reset_host: bool) -> None:
        if self.sock is None:
            return
        if self.watched:
            self.stack.watch(self, 0)
            self.watched = 0
        if reset_host:
            try:
                # Linger 0: close() sends the host peer a reset, not a FIN.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close_socket()

    def _close(self, state: State, reset_host: bool = False) -> None:
        self._release_socket(reset_host)
        self.state = state
        self.timer = None
        self.stack.forget(self)

    # --- timers ---------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        self.timer = deadline
        self.stack.schedule(deadline)

    def _touch(self) -> None:
        stack = self.stack
        if self.state is State.CONNECTING:
            timeout = stack.tcp_connect_timeout
        elif self.state is State.ESTABLISHED and (self.guest_fin or self.host_eof):
            timeout = stack.tcp_closing_timeout
        else:
            timeout = stack.tcp_idle_timeout
        self.idle_deadline = stack.now + timeout
        stack.schedule(self.idle_deadline)

    def _name(self) -> str:
        return f"{socket.inet_ntoa(self.guest_ip)}:{self.guest_port}->{socket.inet_ntoa(self.remote_ip)}:{self.remote_port}"

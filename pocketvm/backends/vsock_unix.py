"""The host side of a VM's vsock, by Firecracker's convention: Unix sockets.

The VM listens on a Unix socket PATH (by default `NAME.vsock` beside its
control socket). A host program connects to it and writes one line,
`CONNECT <port>\\n`; the vsock device then opens a connection to that port
of the guest and, once the guest accepts, answers `OK <host port>\\n` on the
same stream, which from then on carries the connection's bytes both ways.
If the guest refuses (nothing listens on the port), the stream is closed.
A guest that connects to the host (CID 2) port P reaches the Unix socket
`PATH_P`, if a program listens there.

This module owns those sockets and nothing of the vsock protocol (that is
`pocketvm.devices.virtio_vsock`). All of it runs on the VM's run-loop
thread and never blocks, except a small waker thread that sleeps in epoll
until a socket becomes ready and then wakes the run loop. Every socket is
registered one-shot: once it has fired it stays quiet until the run loop
has serviced it and asks again (`HostStream.want`), so a socket the device
cannot serve yet (the guest has no room for more) does not keep the waker
spinning.

Limits: at most `max_handshakes` streams may be waiting to send their
CONNECT line, which must come within `handshake_timeout` seconds and fit
in `MAX_LINE` bytes; anything else closes the stream.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LINE = 32  # "CONNECT 4294967295\n" is 19 bytes
_CONNECT_RE = re.compile(rb"CONNECT ([0-9]{1,10})\r?\n")
_SUN_PATH_MAX = 107
_MAX_PORT = 0xFFFF_FFFF
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_FIRED = _IN | _OUT | select.EPOLLERR | select.EPOLLHUP


class VsockHostError(Exception):
    """The host socket cannot be set up (one-line message)."""


class HostStream:
    """One connected host Unix stream, non-blocking.

    `readable`/`writable` say whether the last readiness report or attempt
    suggests the call would make progress; they are cleared when a call
    would block, and set again when epoll reports the socket ready.
    """

    def __init__(self, host: VsockUnixHost, sock: socket.socket):
        self._host = host
        self.sock = sock
        self.fd = sock.fileno()
        self.readable = True  # try once: data may already be there
        self.writable = True
        self.armed = 0  # epoll mask currently registered (0 after it fired)
        self.closed = False
        self._poll: select.poll | None = None

    def recv(self, n: int) -> bytes | None:
        """Up to `n` bytes; b"" at end of stream; None when nothing is there now.
        OSError when the stream broke."""
        try:
            data = self.sock.recv(n)
        except (BlockingIOError, InterruptedError):
            self.readable = False
            return None
        return data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes accepted (0 when the socket is full). OSError when the peer is gone."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.writable = False
            return 0

    def hung_up(self) -> bool:
        """The peer closed its end for good, not only its sending side: it
        will read nothing more. (A Unix stream reports that as POLLHUP at
        once, even with bytes still queued for us to read.)"""
        if self.closed:
            return True
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, 0)  # POLLHUP is reported whatever the mask
        return any(ev & select.POLLHUP for _, ev in self._poll.poll(0))

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def want(self, read: bool, write: bool) -> None:
        """Ask to be told (through the run loop's wake-up) when reading or
        writing would make progress again."""
        if self.closed:
            return
        mask = (_IN if read and not self.readable else 0) | (_OUT if write and not self.writable else 0)
        if mask & ~self.armed:
            self._host._arm(self, mask | self.armed)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._host._forget(self)


class _Handshake:
    __slots__ = ("deadline", "line", "stream")

    def __init__(self, stream: HostStream, deadline: float):
        self.stream = stream
        self.deadline = deadline
        self.line = bytearray()


class VsockUnixHost:
    """The listening socket PATH, streams in their CONNECT handshake, and
    connections to `PATH_<port>`."""

    max_handshakes = 16
    handshake_timeout = 10.0
    accepts_per_poll = 16

    def __init__(self, path: Path):
        self.path = Path(path)
        if len(os.fsencode(self.path)) + 11 > _SUN_PATH_MAX:  # room for "_<port>"
            raise VsockHostError(f"vsock socket path {self.path} is too long for a Unix socket")
        self._epoll = select.epoll()
        self._streams: dict[int, HostStream] = {}
        self._handshakes: dict[int, _Handshake] = {}
        self._fired: deque[tuple[int, int]] = deque()  # (fd, events) from the waker thread
        self._wake: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self._closed = False
        try:
            self._bind()
            self._ino = os.stat(self.path).st_ino
            self._listener.listen(16)
            self._epoll.register(self._stop_r, _IN)
            self._epoll.register(self._listener.fileno(), _IN | select.EPOLLONESHOT)
        except BaseException:
            self._release()
            raise
        self._listener_armed = True

    def _bind(self) -> None:
        try:
            self._listener.bind(str(self.path))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise VsockHostError(f"cannot create vsock socket {self.path}: {e.strerror}") from None
            try:
                is_socket = stat.S_ISSOCK(os.lstat(self.path).st_mode)
            except OSError:
                is_socket = True  # gone meanwhile: try again below
            if not is_socket:
                raise VsockHostError(f"vsock socket {self.path}: a file that is not a socket is in the way") from None
            if not _stale_socket(self.path):
                raise VsockHostError(f"vsock socket {self.path} is in use by another program") from None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            try:
                self._listener.bind(str(self.path))
            except OSError as e2:
                raise VsockHostError(f"cannot create vsock socket {self.path}: {e2.strerror}") from None
        os.chmod(self.path, 0o600)

    # --- run-loop side ------------------------------------------------------------

    def attach(self, wake: Callable[[], None]) -> None:
        """Start the waker thread; `wake()` is called (from it) when a socket is ready."""
        if self._thread is not None or self._closed:
            return
        self._wake = wake
        self._thread = threading.Thread(target=self._wait_loop, name="pocketvm-vsock", daemon=True)
        self._thread.start()

    def pending(self) -> bool:
        """Readiness reports not yet taken by poll()."""
        return bool(self._fired)

    def poll(self, now: float | None = None) -> list[tuple[HostStream, int]]:
        """Take the readiness reports; returns the streams that completed their
        CONNECT line (with the guest port asked for). The caller owns those."""
        if self._closed:
            return []
        now = time.monotonic() if now is None else now
        requests: list[tuple[HostStream, int]] = []
        listener_fired = False
        while self._fired:
            fd, events = self._fired.popleft()
            if fd == self._listener.fileno():
                listener_fired = True
                continue
            stream = self._streams.get(fd)
            if stream is None:
                continue  # closed since
            stream.armed = 0
            if events & (_IN | select.EPOLLERR | select.EPOLLHUP):
                stream.readable = True
            if events & (_OUT | select.EPOLLERR | select.EPOLLHUP):
                stream.writable = True
        if listener_fired:
            self._listener_armed = False
            self._accept(now)
        for fd, hs in list(self._handshakes.items()):
            if hs.stream.readable:
                port = self._read_line(hs)
                if port is not None:
                    del self._handshakes[fd]
                    requests.append((hs.stream, port))
            elif now >= hs.deadline:
                log.info("vsock: a host connection sent no CONNECT line in time; closed")
                del self._handshakes[fd]
                hs.stream.close()
        if not self._listener_armed and len(self._handshakes) < self.max_handshakes:
            self._rearm_listener()
        return requests

    def next_deadline(self) -> float | None:
        return min((hs.deadline for hs in self._handshakes.values()), default=None)

    def connect(self, port: int) -> HostStream | None:
        """A new stream to the host program listening on `PATH_<port>`, or None."""
        if self._closed:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            # A Unix connect completes or fails at once; EAGAIN means its backlog is full.
            sock.connect(f"{self.path}_{port}")
        except OSError:
            sock.close()
            return None
        return self._add(sock)

    def close(self) -> None:
        """Stop the waker, close every socket, remove PATH. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
            self._thread.join(timeout=5)
        for stream in list(self._streams.values()):
            stream.close()
        self._release()
        try:
            if os.stat(self.path).st_ino == self._ino:
                self.path.unlink()
        except (OSError, AttributeError):  # gone, or a VM that dropped root (--user): reaped later
            pass

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # --- internals -------------------------------------------------------------------

    def _release(self) -> None:
        self._listener.close()
        self._epoll.close()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _add(self, sock: socket.socket) -> HostStream:
        stream = HostStream(self, sock)
        self._streams[stream.fd] = stream
        self._epoll.register(stream.fd, select.EPOLLONESHOT)  # armed on demand
        return stream

    def _arm(self, stream: HostStream, mask: int) -> None:
        try:
            self._epoll.modify(stream.fd, mask | select.EPOLLONESHOT)
            stream.armed = mask
        except OSError:
            stream.readable = stream.writable = True  # the next call finds out what is wrong

    def _forget(self, stream: HostStream) -> None:
        self._streams.pop(stream.fd, None)
        self._handshakes.pop(stream.fd, None)
        try:
            self._epoll.unregister(stream.fd)
        except (OSError, ValueError):
            pass
        stream.sock.close()

    def _rearm_listener(self) -> None:
        try:
            self._epoll.modify(self._listener.fileno(), _IN | select.EPOLLONESHOT)
            self._listener_armed = True
        except (OSError, ValueError):
            pass

    def _accept(self, now: float) -> None:
        for _ in range(self.accepts_per_poll):
            if len(self._handshakes) >= self.max_handshakes:
                return  # the rest wait in the listen backlog
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.info("vsock: accept failed: %s", e)
                return
            sock.setblocking(False)
            stream = self._add(sock)
            self._handshakes[stream.fd] = _Handshake(stream, now + self.handshake_timeout)

    def _read_line(self, hs: _Handshake) -> int | None:
        """The port of a complete CONNECT line; None while incomplete (or
        when the stream was closed for a bad one).

        Read a byte at a time so that nothing after the line, which belongs
        to the connection, is taken (a line is a few bytes, once per stream).
        """
        stream = hs.stream
        while True:
            try:
                byte = stream.sock.recv(1)
            except (BlockingIOError, InterruptedError):
                stream.readable = False
                stream.want(read=True, write=False)
                return None
            except OSError:
                byte = b""
            if not byte:
                log.info("vsock: a host connection closed before its CONNECT line")
                stream.close()
                return None
            hs.line += byte
            if byte == b"\n":
                break
            if len(hs.line) >= MAX_LINE:
                log.info("vsock: a host connection sent an over-long line instead of CONNECT <port>; closed")
                stream.close()
                return None
        m = _CONNECT_RE.fullmatch(bytes(hs.line))
        if m is None or int(m.group(1)) > _MAX_PORT:
            log.info("vsock: a host connection sent %r instead of CONNECT <port>; closed", bytes(hs.line))
            stream.close()
            return None
        return int(m.group(1))

    def _wait_loop(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):  # closed under us
                return
            fired = False
            for fd, ev in events:
                if fd == self._stop_r:
                    return
                if ev & _FIRED:
                    self._fired.append((fd, ev))
                    fired = True
            if fired and self._wake is not None:
                self._wake()


def _stale_socket(path: Path) -> bool:
    """True when `path` is a Unix socket nobody listens on (left by a VM that died)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return True
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return False
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        s.close()

#!/usr/bin/env python3
"""pocketvm guest agent: runs commands and moves files for the host.

This file runs *inside* the guest, on the guest's own python3 (3.9 or
later, standard library only), started at boot (see pocketvm-agent.service).
It listens on a vsock port (52 by default) or, for tests on the host, on a
Unix socket. It is self-contained so an image builder can copy it alone.

Protocol (docs/agent-protocol.md has the full text): one request per
connection. Every message is a frame: one type byte, a 4-byte big-endian
length, then that many bytes. The first frame from the client is a JSON
request; the agent answers with frames and ends with a JSON frame holding
"ok". Frame sizes are bounded both ways.

    J  JSON object (UTF-8)               at most MAX_JSON bytes
    D  file data                         at most MAX_DATA bytes; empty = end of file
    O  command stdout   E  command stderr
    I  command stdin (client -> agent); empty = end of stdin
    K  keep-alive (empty), sent while a command runs silently; from the
       client also padding (up to 7 bytes, ignored) that aligns file data
    W  upload window slot (offset, length: two big-endian u64): file data
       the host left in the upload window disk; the agent answers each with
       the same W frame once it has read the slot
"""

from __future__ import annotations

import argparse
import errno
import grp
import hashlib
import json
import mmap
import os
import pwd
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

VERSION = "5.0"
# 3: checksum "none" (sizes only; a download then goes by sendfile)
# 4: K frames from the client are padding anywhere; "ready" says how to align file data
# 5: uploads through the upload window ("window" in the request and in "ready", W frames)
PROTOCOL = 5
DEFAULT_PORT = 52

FRAME = struct.Struct(">cI")  # type, length
MAX_JSON = 64 * 1024
MAX_DATA = 1024 * 1024
CHUNK = 1024 * 1024  # what the agent puts in one D frame
OUTPUT_CHUNK = 64 * 1024  # ... and in one O/E frame (what a pipe holds)
RECV_BUFFER = 2 * (MAX_DATA + 4096)  # holds any frame, and what arrives behind it
# A connection starts with this much and grows to RECV_BUFFER at its first
# big frame: most connections only ever carry JSON, and every page of a
# fresh buffer costs the emulated guest a fault and a clearing (a 2 MiB
# buffer was most of the agent's work for the first command after a restore).
FIRST_BUFFER = 64 * 1024
# The guest's receive buffer per vsock connection (the host's credit): the
# kernel's 256 KiB default makes a host sending a file wait for a credit
# update every 256 KiB.
VSOCK_BUFFER = 2 * 1024 * 1024
KEEPALIVE = 2.0  # seconds between K frames while a command is silent
LIST_BATCH = 512  # directory entries per JSON frame
MAX_CONNECTIONS = 64
# How long a client may keep the agent waiting for its first request, or
# for file data (a running command waits for its client as long as it runs).
request_timeout = 60.0
# How long a connection may stay idle between two requests (the host keeps
# a few connections open to reuse; it drops them itself well before this).
IDLE_TIMEOUT = 600.0
EXIT_DRAIN = 1.0  # after a command exits, how long its output may still come (background children)

T_JSON, T_DATA, T_STDOUT, T_STDERR, T_STDIN, T_KEEPALIVE = b"J", b"D", b"O", b"E", b"I", b"K"
T_WINDOW = b"W"
WINDOW_SLOT = struct.Struct(">QQ")  # offset, length in the upload window
MAX_PAD = 7  # a client's K frame: padding, ignored
_MAX = {T_JSON: MAX_JSON, T_DATA: MAX_DATA, T_STDOUT: MAX_DATA, T_STDERR: MAX_DATA, T_STDIN: MAX_DATA,
        T_KEEPALIVE: MAX_PAD, T_WINDOW: WINDOW_SLOT.size}
# The upload window: a read-only virtio-blk disk with this serial, filled
# by the host (pocketvm/backends/upload_window.py). Read with O_DIRECT, so
# the guest's page cache never holds (stale) window data.
WINDOW_SERIAL = "pocketvm-upload"
WINDOW_SLOTS = 2  # the host fills one slot while the agent reads the other
WINDOW_MAX_SLOT = 4 * 1024 * 1024
# Where the guest kernel's virtio-vsock driver has the bytes of a received
# packet: 44 bytes (its header) into an 8-aligned buffer, so 4 past a
# multiple of 8 (Linux 6.2 and later; the host's device cuts packets at
# 4 KiB steps of the stream). The kernel copies 8 bytes at a time only
# between addresses that agree modulo 8, one byte-shifting word at a time
# otherwise (three times the instructions); so stream byte s lands at an
# address = s + RX_SKEW (mod 8) in the receive buffer, and the client
# places file data so that it then agrees with its file offset too.
RX_SKEW = 4
ALIGN = 8

_started = time.monotonic()


class ProtocolError(Exception):
    """The peer broke the framing: the connection is dropped."""


class RequestError(Exception):
    """A request that cannot be served: answered with ok=false."""

    def __init__(self, message: str, code: str = "EINVAL"):
        super().__init__(message)
        self.code = code


# --- framing ---------------------------------------------------------------------------


class Channel:
    """Frames over one connected socket, read through one fixed buffer (no
    allocation per frame: on an emulated CPU every fresh page costs a fault
    and a clearing).

    A received payload is a memoryview into that buffer, valid until the next
    read from the channel: use it, or copy it, before reading again. Only
    the connection's own thread sends and receives."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        # Anonymous mappings: page-aligned (see RX_SKEW), and their pages
        # are only made when first touched.
        self._buf = mmap.mmap(-1, FIRST_BUFFER)
        self._view = memoryview(self._buf)
        self._lo = RX_SKEW  # buffered, not yet taken: _buf[_lo:_hi]; stream byte s at s + RX_SKEW (mod 8)
        self._hi = RX_SKEW
        self._output: memoryview | None = None

    def output_buffer(self) -> memoryview:
        """A buffer for reading a command's output, made once per connection."""
        if self._output is None:
            self._output = memoryview(bytearray(OUTPUT_CHUNK))
        return self._output

    def send(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        head = FRAME.pack(kind, len(payload))
        if len(payload) < 16384:
            self.sock.sendall(head + payload)  # one write for small frames
            return
        # Large: header and payload in one system call, without joining them.
        parts = [memoryview(head), memoryview(payload)]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = parts[0][sent:]

    def send_json(self, obj: dict) -> None:
        self.send(T_JSON, json.dumps(obj, separators=(",", ":")).encode())

    def fill(self, nonblocking: bool = False) -> int:
        """Read what the socket has into the buffer: the bytes read, 0 at
        its end. With `nonblocking`, BlockingIOError when it has nothing."""
        if self._hi == len(self._buf):
            self._compact()
        n = self.sock.recv_into(self._view[self._hi:], 0, socket.MSG_DONTWAIT if nonblocking else 0)
        self._hi += n
        return n

    def _grow(self) -> None:
        """The full-size buffer (payloads handed out earlier keep the old one)."""
        held = self._hi - self._lo
        at = self._lo % ALIGN  # moved by a multiple of ALIGN: see RX_SKEW
        buf = mmap.mmap(-1, RECV_BUFFER)
        buf[at:at + held] = self._view[self._lo:self._hi]
        self._buf, self._view, self._lo, self._hi = buf, memoryview(buf), at, at + held

    def _compact(self) -> None:
        held = self._hi - self._lo
        at = self._lo % ALIGN
        self._buf.move(at, self._lo, held)
        self._lo, self._hi = at, at + held

    def buffered(self) -> tuple[bytes, memoryview] | None:
        """The next complete frame already in the buffer, or None."""
        if self._hi - self._lo < FRAME.size:
            return None
        kind, length = FRAME.unpack_from(self._buf, self._lo)
        limit = _MAX.get(kind)
        if limit is None:
            raise ProtocolError(f"unknown frame type {kind!r}")
        if length > limit:
            raise ProtocolError(f"{kind.decode(errors='replace')} frame of {length} bytes (limit {limit})")
        start = self._lo + FRAME.size
        if self._hi - start < length:
            if start + length > len(self._buf):
                self._compact()  # make room for the rest of this frame
                if self._lo + FRAME.size + length > len(self._buf):
                    self._grow()
            return None
        self._lo = start + length
        return kind, self._view[start:self._lo]

    def recv(self) -> tuple[bytes, memoryview]:
        """The next frame (type, payload) that is not padding. EOFError at a clean end between frames."""
        while True:
            frame = self.buffered()
            if frame is not None:
                if frame[0] == T_KEEPALIVE:
                    continue
                return frame
            if not self.fill():
                if self._hi != self._lo:
                    raise ProtocolError("connection closed inside a frame")
                raise EOFError

    def recv_json(self) -> dict:
        kind, payload = self.recv()
        if kind != T_JSON:
            raise ProtocolError(f"expected a JSON frame, got {kind!r}")
        return decode_json(payload)


def decode_json(payload: bytes | memoryview) -> dict:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("a JSON frame that is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a JSON frame that is not an object")
    return obj


# --- request helpers ---------------------------------------------------------------------


def _str(req: dict, key: str, default: str | None = None) -> str:
    value = req.get(key, default)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{key!r} must be a non-empty string")
    if "\0" in value:
        raise RequestError(f"{key!r} contains a NUL byte")
    return value


def _opt_num(req: dict, key: str) -> float | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise RequestError(f"{key!r} must be a positive number")
    return float(value)


def _os_error(e: OSError, what: str) -> RequestError:
    code = errno.errorcode.get(e.errno or 0, "EIO")
    return RequestError(f"{what}: {e.strerror or e}", code)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _stat_dict(st: os.stat_result) -> dict:
    return {"type": _kind(st.st_mode), "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
            "mtime": st.st_mtime, "uid": st.st_uid, "gid": st.st_gid}


class Checksum:
    """A transfer's checksum, to catch data damaged or cut on the way.
    Adler-32, CRC-32 (the default of a request that names none), SHA-256,
    or "none": sizes only, what the host's sandbox layers ask for. On the
    emulated CPU, without crypto or carry-less multiply instructions, the
    checksum costs as much as moving the bytes through vsock: measured in
    pocketvm's guest, Adler-32 runs at 34-67 MiB/s, CRC-32 at 16, SHA-256 at
    1; without one, a download needs no pass over the data in this process
    at all (sendfile)."""

    ALGORITHMS = ("adler32", "crc32", "sha256", "none")

    def __init__(self, algorithm: object = "crc32"):
        if algorithm not in self.ALGORITHMS:
            raise RequestError(f"unknown checksum {algorithm!r} (use adler32, crc32, sha256 or none)")
        self.algorithm = str(algorithm)
        self.none = algorithm == "none"  # sizes only: the transfer may skip reading the data here
        self._sha = hashlib.sha256() if algorithm == "sha256" else None
        self._fn = zlib.adler32 if algorithm == "adler32" else zlib.crc32
        self._value = 1 if algorithm == "adler32" else 0

    def update(self, data: bytes | memoryview) -> None:
        if self.none:
            return
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._value = self._fn(data, self._value)

    def hexdigest(self) -> str:
        if self.none:
            return ""
        return self._sha.hexdigest() if self._sha is not None else f"{self._value:08x}"


# --- operations ------------------------------------------------------------------------------


def op_health(ch: Channel, req: dict) -> dict:
    return {"ok": True, "agent": VERSION, "protocol": PROTOCOL, "pid": os.getpid(),
            "uptime": round(time.monotonic() - _started, 3), "python": sys.version.split()[0],
            "hostname": socket.gethostname()}


def op_stat(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    try:
        st = os.lstat(path) if req.get("follow") is False else os.stat(path)
    except OSError as e:
        raise _os_error(e, path) from None
    return {"ok": True, "stat": _stat_dict(st)}


def op_list(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    batch: list[dict] = []
    count = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                    info = {"name": entry.name, **_stat_dict(st)}
                except OSError:
                    info = {"name": entry.name, "type": "other"}
                batch.append(info)
                count += 1
                if len(batch) >= LIST_BATCH:
                    ch.send_json({"event": "entries", "entries": batch})
                    batch = []
    except OSError as e:
        raise _os_error(e, path) from None
    if batch:
        ch.send_json({"event": "entries", "entries": batch})
    return {"ok": True, "count": count}


def op_mkdir(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    mode = int(req.get("mode", 0o755)) & 0o7777
    try:
        if req.get("parents"):
            os.makedirs(path, mode=mode, exist_ok=True)
        else:
            os.mkdir(path, mode)
    except OSError as e:
        raise _os_error(e, path) from None
    return {"ok": True}


def op_remove(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            if req.get("recursive"):
                import shutil

                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        raise _os_error(e, path) from None
    return {"ok": True}


class UploadWindow:
    """The upload window disk, if the VM has one: lent to one upload at a
    time (another upload meanwhile streams its data through vsock)."""

    _lock = threading.Lock()
    _found: "tuple[str, int] | None | bool" = False  # False: not looked for yet

    def __init__(self, device: str, size: int):
        self.fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        self.size = size
        self.slot = min(WINDOW_MAX_SLOT, size // WINDOW_SLOTS) // 4096 * 4096
        self._buf = mmap.mmap(-1, self.slot)  # page-aligned, as O_DIRECT wants
        self._view = memoryview(self._buf)

    @classmethod
    def find(cls) -> "tuple[str, int] | None":
        """(/dev/vdX, size in bytes) of the disk whose serial says it is the window."""
        if cls._found is False:
            cls._found = None
            try:
                names = sorted(os.listdir("/sys/block"))
            except OSError:
                names = []
            for name in names:
                try:
                    with open(f"/sys/block/{name}/serial") as f:
                        if f.read().strip() != WINDOW_SERIAL:
                            continue
                    with open(f"/sys/block/{name}/size") as f:
                        size = int(f.read()) * 512
                except (OSError, ValueError):
                    continue
                if os.path.exists(f"/dev/{name}"):
                    cls._found = (f"/dev/{name}", size)
                    break
        return cls._found  # type: ignore[return-value]

    @classmethod
    def lend(cls) -> "UploadWindow | None":
        """The window for one upload, or None (no window, or in use)."""
        found = cls.find()
        if found is None or not cls._lock.acquire(blocking=False):
            return None
        try:
            return cls(*found)
        except (OSError, ValueError):
            cls._lock.release()
            return None

    def read(self, payload: memoryview) -> memoryview:
        """The bytes of the slot a W frame names (checked: inside the window, one slot at most)."""
        offset, length = WINDOW_SLOT.unpack(payload)
        if offset % 4096 or length > self.slot or offset + length > self.size:
            raise ProtocolError(f"window slot {offset}+{length} is outside the {self.size}-byte window")
        want = -(-length // 512) * 512  # O_DIRECT reads whole sectors
        done = 0
        while done < want:
            n = os.preadv(self.fd, [self._view[done:want]], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "short read from the upload window")
            done += n
        return self._view[:length]

    def close(self) -> None:
        os.close(self.fd)
        self._view.release()
        self._buf.close()
        UploadWindow._lock.release()


def op_upload(ch: Channel, req: dict) -> dict:
    """D frames until an empty one: written to a temporary file beside the
    target, checked against size and checksum, then renamed into place."""
    path = _str(req, "path")
    size = req.get("size")
    digest = Checksum(req.get("checksum", "crc32"))
    want = req.get("digest")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise RequestError("'size' must be a non-negative integer")
    mode = req.get("mode")
    directory = os.path.dirname(os.path.abspath(path))
    if req.get("parents"):
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise _os_error(e, directory) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pocketvm-upload-", dir=directory)
    except OSError as e:
        raise _os_error(e, path) from None
    ok = False
    try:
        try:
            if size:
                # The final size up front: tmpfs mounted huge=within_size (the
                # guest's /tmp) then backs the file with 2 MiB pages from the
                # first write, a quarter of the kernel's work per byte of 4 KiB ones.
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass  # the writes will say what is wrong
            window = UploadWindow.lend() if req.get("window") else None
            try:
                ready = {"event": "ready", "protocol": PROTOCOL, "align": [ALIGN, -RX_SKEW % ALIGN]}
                if window is not None:
                    ready["window"] = {"slot": window.slot, "slots": WINDOW_SLOTS}
                ch.send_json(ready)
                written, error = _receive(ch, fd, size, digest, path, window)
            finally:
                if window is not None:
                    window.close()
            if error is not None:
                raise error
            if size is not None and written != size:
                raise RequestError(f"{written} bytes received, {size} announced")
            if want is not None and digest.hexdigest() != want:
                raise RequestError("checksum mismatch: the file was corrupted on the way", "EBADMSG")
            os.fsync(fd)
            os.fchmod(fd, int(mode) & 0o7777 if mode is not None else 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        ok = True
    except OSError as e:
        raise _os_error(e, path) from None
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return {"ok": True, "size": written, "checksum": digest.algorithm, "digest": digest.hexdigest()}


def _receive(ch: Channel, fd: int, size: int | None, digest: Checksum, path: str,
             window: UploadWindow | None = None) -> tuple[int, RequestError | None]:
    """The upload's data, written to `fd` as it comes: in D frames, or in
    upload window slots named by W frames (each answered once read, so the
    host may fill that slot again). (Measured: receiving straight into the
    file's pages through a shared mapping costs the emulated guest more
    than these write()s.)"""
    written = 0
    error: RequestError | None = None
    while True:
        kind, data = ch.recv()
        if kind == T_WINDOW and window is not None:
            slot = bytes(data)  # the channel's buffer is reused by the next recv
            try:
                data = window.read(data)
            except OSError as e:
                error = error or _os_error(e, "the upload window")
                data = memoryview(b"")
            ch.send(T_WINDOW, slot)
            if not data:
                continue
        elif kind != T_DATA:
            raise ProtocolError(f"expected file data, got a {kind!r} frame")
        elif not data:
            return written, error
        written += len(data)
        if error is None:
            if size is not None and written > size:
                error = RequestError(f"more data than the {size} bytes announced")
                continue
            try:
                digest.update(data)
                while data:
                    data = data[os.write(fd, data):]
            except OSError as e:
                error = _os_error(e, path)  # keep reading to the end frame


def op_download(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    digest = Checksum(req.get("checksum", "crc32"))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise _os_error(e, path) from None
    sent = 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(f"{path}: not a regular file", "EISDIR" if stat.S_ISDIR(st.st_mode) else "EINVAL")
        ch.send_json({"event": "file", "size": st.st_size, "mode": stat.S_IMODE(st.st_mode)})
        if digest.none:
            sent = _send_file(ch, fd, st.st_size)
        else:
            buf = memoryview(bytearray(min(CHUNK, max(st.st_size, 4096))))  # reused: no allocation per piece
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    break
                piece = buf[:n]
                digest.update(piece)
                sent += n
                ch.send(T_DATA, piece)
    finally:
        os.close(fd)
    ch.send(T_DATA, b"")
    if sent < st.st_size:
        raise RequestError(f"{path}: the file shrank while it was read ({sent} of {st.st_size} bytes)", "EIO")
    return {"ok": True, "size": sent, "checksum": digest.algorithm, "digest": digest.hexdigest()}


def _send_file(ch: Channel, fd: int, size: int) -> int:
    """The file's first `size` bytes as data frames, by sendfile (the guest
    kernel copies from its page cache to the socket; nothing passes through
    this process). A file that shrinks meanwhile: the frame it was in is
    completed with zeros and the bytes really sent are returned."""
    sent = 0
    with os.fdopen(os.dup(fd), "rb") as f:
        while sent < size:
            n = min(CHUNK, size - sent)
            ch.sock.sendall(FRAME.pack(T_DATA, n))
            k = ch.sock.sendfile(f, sent, n)
            if k < n:
                ch.sock.sendall(bytes(n - k))
                return sent + k
            sent += n
    return sent


# --- commands ---------------------------------------------------------------------------------

_running: set[int] = set()  # pids (= process groups) of the commands that run now
_running_lock = threading.Lock()
_spawn_lock = threading.Lock()  # a spawn that needs another working directory changes the agent's
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_base_env: dict[str, str] = {}  # the agent's environment with its user's HOME, USER, LOGNAME (set in main)
_home = "/"


class ClientGone(Exception):
    """The client closed its connection (or broke the protocol) while a command ran."""


def _signal_number(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value < signal.NSIG:
            return value
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise RequestError(f"unknown signal {value!r}")


def op_signal(ch: Channel, req: dict) -> dict:
    """Signal a command this agent started (by its pid), and its process group."""
    pid = req.get("pid")
    sig = _signal_number(req.get("signal", "TERM"))
    with _running_lock:
        known = isinstance(pid, int) and pid in _running
    if not known:
        raise RequestError(f"no running command with pid {pid!r}", "ESRCH")
    _kill(pid, sig)  # type: ignore[arg-type]
    return {"ok": True}


def _kill(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the command runs in a session of its own
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _base_environment() -> tuple[dict[str, str], str]:
    """The environment commands start from, and the agent user's home.
    Started by init, the agent has no login environment: give commands the
    agent user's (a request's "user" replaces these)."""
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    home = "/"
    try:
        me = pwd.getpwuid(os.getuid())
        env.setdefault("HOME", me.pw_dir)
        env.setdefault("USER", me.pw_name)
        env.setdefault("LOGNAME", me.pw_name)
        home = me.pw_dir if os.path.isdir(me.pw_dir) else "/"
    except KeyError:
        pass
    return env, home


def _command(req: dict) -> tuple[list[str], dict[str, str], str | None]:
    argv = req.get("argv")
    shell = req.get("shell")
    if (argv is None) == (shell is None):
        raise RequestError("give either 'argv' (a list) or 'shell' (a string)")
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise RequestError("'argv' must be a non-empty list of strings")
        args = list(argv)
    else:
        args = ["/bin/sh", "-c", _str(req, "shell")]
    env_in = req.get("env") or {}
    if not isinstance(env_in, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                                              and "\0" not in k + v for k, v in env_in.items()):
        raise RequestError("'env' must map names to strings")
    if req.get("clear_env"):
        env = {k: _base_env[k] for k in ("HOME", "USER", "LOGNAME") if k in _base_env}
        env["PATH"] = DEFAULT_PATH
    else:
        env = dict(_base_env)
    env.update(env_in)
    cwd = req.get("cwd")
    if cwd is not None:
        cwd = _str(req, "cwd")
    return args, env, cwd


def _which(name: str, path: str) -> str:
    """`name` looked up in `path` as execvp would (posix_spawnp would use the agent's own PATH)."""
    if "/" in name:
        return name
    denied = False
    for d in path.split(":"):
        candidate = os.path.join(d or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
        denied = denied or os.path.exists(candidate)
    raise OSError(errno.EACCES if denied else errno.ENOENT, os.strerror(errno.EACCES if denied else errno.ENOENT))


class Child:
    """A started command: its pid (also its process group) and the agent's ends of its stdio."""

    def __init__(self, pid: int, stdin: int | None, outputs: dict[int, bytes], master: int | None,
                 popen: subprocess.Popen | None = None):
        self.pid = pid
        self.stdin = stdin  # write end of its stdin (the terminal with a pty), None: /dev/null
        self.outputs = outputs  # fd -> frame type
        self.master = master
        self.popen = popen
        self.status: int | None = None  # exit code, or -signal
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Python < 3.9 or Linux < 5.3: polled instead
            self.pidfd = None

    def reap(self, block: bool = False) -> bool:
        """Collect its exit status if it has ended (wait for it with `block`)."""
        if self.status is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.status = -signal.SIGKILL
            return True
        if pid == 0:
            return False
        self.status = os.waitstatus_to_exitcode(status)
        if self.popen is not None:
            self.popen.returncode = self.status  # reaped here, not by subprocess
        return True

    def close(self) -> None:
        fds = [self.stdin, self.master, self.pidfd, *self.outputs]
        self.outputs = {}
        self.stdin = self.master = self.pidfd = None
        for fd in dict.fromkeys(f for f in fds if f is not None):
            try:
                os.close(fd)
            except OSError:
                pass


def _spawn(args: list[str], env: dict[str, str], cwd: str, want_stdin: bool) -> Child:
    """A command on pipes, in a session of its own, by posix_spawn (the C
    library's vfork-like spawn: no copy of the agent's page tables, and
    none of subprocess's Python on an emulated CPU)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if want_stdin else (os.open(os.devnull, os.O_RDONLY), None)
    actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    try:
        program = _which(args[0], env.get("PATH", DEFAULT_PATH))
        # The agent ignores SIGPIPE (and Python SIGXFSZ): the command gets the defaults back.
        kwargs = {"file_actions": actions, "setsid": True, "setsigdef": (signal.SIGPIPE, signal.SIGXFSZ)}
        if cwd == _home:
            pid = os.posix_spawn(program, args, env, **kwargs)
        else:
            with _spawn_lock:  # posix_spawn cannot change directory: the agent does, around it
                try:
                    os.chdir(cwd)
                except OSError as e:
                    raise _os_error(e, cwd) from None
                try:
                    pid = os.posix_spawn(program, args, env, **kwargs)
                finally:
                    os.chdir(_home)
    except BaseException:
        for fd in (out_r, err_r, in_w):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, in_r):
            os.close(fd)
    return Child(pid, in_w, {out_r: T_STDOUT, err_r: T_STDERR}, None)


def _popen(args: list[str], env: dict[str, str], cwd: str, want_stdin: bool, use_pty: bool, req: dict,
           user_kwargs: dict) -> Child:
    """A command that needs what posix_spawn cannot do: another user, a terminal."""
    if use_pty:
        import fcntl
        import pty
        import termios

        master, slave = pty.openpty()
        try:
            rows, cols = int(req.get("rows", 24)), int(req.get("cols", 80))
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            env.setdefault("TERM", "xterm-256color")

            def controlling_tty() -> None:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            # preexec_fn in a threaded program: it only makes one ioctl, no locks or allocation.
            proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                    start_new_session=True, preexec_fn=controlling_tty, **user_kwargs)  # noqa: PLW1509
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return Child(proc.pid, master, {master: T_STDOUT}, master, proc)
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True, **user_kwargs)
    fds = []
    for f in (proc.stdin, proc.stdout, proc.stderr):
        fds.append(os.dup(f.fileno()) if f is not None else None)
        if f is not None:
            f.close()
    return Child(proc.pid, fds[0], {fds[1]: T_STDOUT, fds[2]: T_STDERR}, None, proc)


def op_exec(ch: Channel, req: dict) -> dict:
    args, env, cwd = _command(req)
    timeout = _opt_num(req, "timeout")
    use_pty = bool(req.get("pty"))
    want_stdin = bool(req.get("stdin"))
    user = req.get("user")
    user_kwargs: dict = {}
    if user is not None:
        try:
            pw = pwd.getpwnam(_str(req, "user")) if not isinstance(user, int) else pwd.getpwuid(user)
        except KeyError:
            raise RequestError(f"no user {user!r}", "ENOENT") from None
        user_kwargs.update(user=pw.pw_uid, group=pw.pw_gid,
                           extra_groups=[g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem])
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    if cwd is None:  # like a login: the home directory (usually the agent's own: no change)
        home = env.get("HOME", "/")
        cwd = home if home == _home or os.path.isdir(home) else "/"
    try:
        if user is None and not use_pty:
            child = _spawn(args, env, cwd, want_stdin)
        else:
            child = _popen(args, env, cwd, want_stdin, use_pty, req, user_kwargs)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        if isinstance(e, OSError):
            raise _os_error(e, args[0]) from None
        raise RequestError(f"{args[0]}: {e}") from None
    with _running_lock:
        _running.add(child.pid)
    try:
        return _supervise(ch, child, timeout)
    finally:
        if not child.reap():  # the client went away mid-command: so does the command
            _kill(child.pid, signal.SIGKILL)
            _wait_reaped(child, 5.0)
        with _running_lock:
            _running.discard(child.pid)
        child.close()


def _wait_reaped(child: Child, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not child.reap() and time.monotonic() < deadline:
        if child.pidfd is not None:
            select.select([child.pidfd], [], [], max(0.0, deadline - time.monotonic()))
        else:
            time.sleep(0.01)


def _supervise(ch: Channel, child: Child, timeout: float | None) -> dict:
    """Forward the command's output and the client's input and signals, on
    this thread alone (one poll over the socket, the pipes and the
    process's pidfd), until it has ended and its output is out."""
    ch.send_json({"event": "started", "pid": child.pid})
    sock_fd = ch.sock.fileno()
    poller = select.poll()
    IN = select.POLLIN | select.POLLHUP | select.POLLERR
    poller.register(sock_fd, IN)
    for fd in child.outputs:
        poller.register(fd, IN)
    if child.pidfd is not None:
        poller.register(child.pidfd, IN)
    pending_in = bytearray()  # stdin the command has not taken yet
    stdin_eof = False  # the client has ended stdin: close it once pending_in is out
    reading_client = True
    if child.stdin is not None:
        os.set_blocking(child.stdin, False)
    stdin_mask = 0  # what poll watches on child.stdin for writing
    out_buf = ch.output_buffer()
    timed_out = False
    deadline = time.monotonic() + timeout if timeout else None
    last_sent = time.monotonic()
    exited_at: float | None = None
    last_output = 0.0

    def take_client_frames() -> None:
        nonlocal stdin_eof
        while True:
            frame = ch.buffered()
            if frame is None:
                return
            kind, data = frame
            if kind == T_STDIN:
                if child.stdin is None:
                    continue
                if not data:
                    stdin_eof = True
                else:
                    pending_in.extend(data)
            elif kind == T_JSON:
                try:
                    msg = decode_json(data)
                    if msg.get("op") == "signal":
                        _kill(child.pid, _signal_number(msg.get("signal", "TERM")))
                    elif msg.get("op") == "resize" and child.master is not None:
                        import fcntl
                        import termios

                        fcntl.ioctl(child.master, termios.TIOCSWINSZ,
                                    struct.pack("HHHH", int(msg.get("rows", 24)), int(msg.get("cols", 80)), 0, 0))
                except (RequestError, ValueError, TypeError, OSError):
                    pass  # a bad control message changes nothing
            elif kind != T_KEEPALIVE:  # padding is ignored everywhere
                raise ProtocolError(f"unexpected {kind!r} frame while a command runs")

    def feed_stdin() -> None:
        nonlocal stdin_eof
        fd = child.stdin
        if fd is None:
            pending_in.clear()
            return
        try:
            while pending_in:
                n = os.write(fd, pending_in)
                del pending_in[:n]
        except BlockingIOError:
            pass
        except OSError:  # it closed its stdin (EPIPE): what is left is dropped
            pending_in.clear()
            if child.master is None:
                stdin_eof = True
        if stdin_eof and not pending_in:
            if child.master is not None:
                try:
                    os.write(fd, b"\x04")  # end of input on a terminal: ^D
                except OSError:
                    pass
            else:
                if stdin_mask:
                    poller.unregister(fd)
                os.close(fd)
            child.stdin = None
            stdin_eof = False

    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline and child.status is None:
            timed_out = True
            _kill(child.pid, signal.SIGKILL)
            deadline = None
        if child.status is not None or (child.pidfd is None and child.reap()):
            if exited_at is None:
                exited_at = now
            # Done once the output has ended, or soon after the exit when
            # a background child of the command holds it open.
            if not child.outputs or now - max(exited_at, last_output) > EXIT_DRAIN:
                break
        wait = KEEPALIVE - (now - last_sent)
        if deadline is not None:
            wait = min(wait, deadline - now)
        if exited_at is not None:
            wait = min(wait, EXIT_DRAIN - (now - max(exited_at, last_output)))
        if child.pidfd is None and child.status is None:
            wait = min(wait, 0.05)  # no pidfd: the exit is polled for
        want = select.POLLOUT if child.stdin is not None and pending_in else 0
        if want != stdin_mask:
            fd = child.master if child.master is not None else child.stdin
            if fd is not None:
                mask = want | (IN if fd in child.outputs else 0)  # a terminal is both
                if mask:
                    poller.register(fd, mask)
                else:
                    poller.unregister(fd)
            stdin_mask = want
        for fd, ev in poller.poll(max(0, int(wait * 1000) + 1)):
            if ev & select.POLLOUT or (fd == child.stdin and fd not in child.outputs):
                feed_stdin()
                if not ev & IN or fd not in child.outputs:
                    continue
            if fd == sock_fd:
                try:
                    got = ch.fill(nonblocking=True)
                except BlockingIOError:
                    continue
                except OSError:
                    got = 0
                if not got:
                    raise ClientGone
                take_client_frames()
                if len(pending_in) > MAX_DATA and reading_client:
                    poller.unregister(sock_fd)  # the command is slow to read: so are we
                    reading_client = False
            elif fd == child.pidfd:
                poller.unregister(fd)
                child.reap(block=True)
            elif fd in child.outputs:
                try:
                    n = os.readv(fd, [out_buf])
                except BlockingIOError:
                    continue
                except OSError:  # EIO: the terminal's other side closed
                    n = 0
                if not n:
                    del child.outputs[fd]
                    if fd == child.master:  # still the terminal's input
                        poller.register(fd, stdin_mask) if stdin_mask else poller.unregister(fd)
                    else:
                        poller.unregister(fd)
                        os.close(fd)
                    continue
                ch.send(child.outputs[fd], out_buf[:n])
                last_sent = last_output = time.monotonic()
        if pending_in or stdin_eof:
            feed_stdin()
            if not reading_client and len(pending_in) <= MAX_DATA:
                poller.register(sock_fd, IN)
                reading_client = True
        if time.monotonic() - last_sent >= KEEPALIVE:
            ch.send(T_KEEPALIVE)
            last_sent = time.monotonic()
    code = child.status if child.status is not None else -signal.SIGKILL
    result: dict = {"ok": True, "event": "exit", "timed_out": timed_out}
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        result.update(exit_code=None, signal=name)
    else:
        result.update(exit_code=code, signal=None)
    return result


OPS = {"health": op_health, "version": op_health, "stat": op_stat, "list": op_list, "mkdir": op_mkdir,
       "remove": op_remove, "upload": op_upload, "download": op_download, "exec": op_exec, "signal": op_signal}


# --- server --------------------------------------------------------------------------------------


def serve_connection(sock: socket.socket) -> None:
    """Requests on one connection, one after the other, until the client
    closes it (or breaks the protocol, or leaves it idle for IDLE_TIMEOUT)."""
    ch = Channel(sock)
    first = True
    try:
        while True:
            sock.settimeout(request_timeout if first else IDLE_TIMEOUT)
            try:
                kind, payload = ch.recv()
            except (EOFError, ProtocolError, OSError):
                return
            if kind != T_JSON:
                # Standard input sent for a command that has ended meanwhile:
                # nothing to do with it (K padding never gets here: recv skips it).
                if kind == T_STDIN:
                    continue
                return
            sock.settimeout(request_timeout)
            try:
                req = decode_json(payload)
                op = OPS.get(req.get("op"))  # type: ignore[arg-type]
                if op is None:
                    raise RequestError(f"unknown op {req.get('op')!r}", "ENOSYS")
                if op is op_exec:
                    sock.settimeout(None)  # output is sent as long as the command runs
                reply = op(ch, req)
            except RequestError as e:
                reply = {"ok": False, "error": str(e), "code": e.code}
            except (ProtocolError, EOFError, ClientGone):
                return
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 (a bug here must not take the agent down)
                reply = {"ok": False, "error": f"agent error: {type(e).__name__}: {e}", "code": "EIO"}
            reply["keep"] = True  # this connection takes another request
            ch.send_json(reply)
            first = False
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass


class Workers:
    """The threads that serve connections. One that has finished its
    connection waits for the next (up to SPARE_WORKERS wait), and SPARE_WORKERS
    wait from the start: a thread costs the emulated guest milliseconds to
    create, and a template snapshot taken with them waiting hands every
    restored VM's first connection to a thread that is already there."""

    def __init__(self, spare: int):
        self.spare = spare
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._waiting: list[tuple[threading.Event, list]] = []  # idle threads: (wake-up, [socket])
        for _ in range(spare):
            self._start(None)

    def submit(self, sock: socket.socket) -> bool:
        """Serve `sock` on a thread; False when MAX_CONNECTIONS are served already."""
        if not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            if self._waiting:
                wake, box = self._waiting.pop()
                box.append(sock)
                wake.set()
                return True
        self._start(sock)
        return True

    def _start(self, sock: socket.socket | None) -> None:
        threading.Thread(target=self._work, args=(sock,), daemon=True).start()

    def _work(self, sock: socket.socket | None) -> None:
        raise_priority()
        while True:
            if sock is not None:
                try:
                    serve_connection(sock)
                finally:
                    self._slots.release()
            wake, box = threading.Event(), []
            with self._lock:
                if len(self._waiting) >= self.spare:
                    return
                self._waiting.append((wake, box))
            wake.wait()
            sock = box[0]


SPARE_WORKERS = 2
AGENT_NICE = -10  # the agent's threads; the commands it starts run at 0


def raise_priority() -> None:
    """Run this thread at AGENT_NICE, and have whatever it starts (threads,
    commands) begin at nice 0 again (SCHED_RESET_ON_FORK): the host's
    requests are answered ahead of the guest's own CPU-bound work, while the
    commands themselves get no advantage. A modest effect at emulated speed
    (measured: a health request with two busy loops in the guest, 12.5 ms;
    with the loops at the agent's priority, 15 ms; idle, 4.5 ms). Needs
    root (the agent's user); without it, nothing changes."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, AGENT_NICE)  # 0: this thread (Linux nice values are per thread)
    except (AttributeError, OSError):
        pass


def serve(listener: socket.socket) -> None:
    raise_priority()
    workers = Workers(SPARE_WORKERS)
    while True:
        try:
            sock, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
                continue
            raise
        if not workers.submit(sock):
            busy = json.dumps({"ok": False, "error": "agent busy: too many connections at once", "code": "EBUSY"})
            try:
                sock.sendall(FRAME.pack(T_JSON, len(busy)) + busy.encode())
            except OSError:
                pass
            sock.close()


def warm_up() -> None:
    """Serve one command (`true`) over a socket pair before any real request.
    A template is snapshotted after this, so the first command of every
    restored VM finds the code paths run once and /usr/bin/true and the C
    library in the page cache, instead of paying for them itself."""
    mine, theirs = socket.socketpair()
    server = threading.Thread(target=serve_connection, args=(theirs,), daemon=True)
    server.start()
    try:
        mine.settimeout(10)
        ch = Channel(mine)
        ch.send_json({"op": "exec", "argv": ["true"]})
        while True:
            kind, payload = ch.recv()
            if kind == T_JSON and decode_json(payload).get("event") != "started":
                break
    except (OSError, EOFError, ProtocolError):
        pass  # only a warm-up
    finally:
        mine.close()
        server.join(10)


def notify_ready(address: str) -> None:
    """Tell systemd the agent serves (its unit is Type=notify), so that a
    system that has finished booting has its agent warmed up: a template is
    taken then."""
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(b"READY=1")
    except OSError:
        pass


def listen_vsock(port: int) -> socket.socket:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    # Accepted connections inherit the listener's buffer size (the host's
    # credit). Python passes an int option of AF_VSOCK as the kernel's u64.
    for opt in ("SO_VM_SOCKETS_BUFFER_MAX_SIZE", "SO_VM_SOCKETS_BUFFER_SIZE"):
        try:
            s.setsockopt(socket.AF_VSOCK, getattr(socket, opt), VSOCK_BUFFER)
        except (AttributeError, OSError, TypeError, ValueError):
            pass  # the kernel's default then
    s.bind((socket.VMADDR_CID_ANY, port))
    s.listen(64)
    return s


def listen_unix(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(64)
    return s


def main(argv: list[str] | None = None) -> int:
    global request_timeout, _base_env, _home
    parser = argparse.ArgumentParser(description="pocketvm guest agent")
    parser.add_argument("--vsock-port", type=int, default=DEFAULT_PORT, help="vsock port to listen on (default 52)")
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead (for tests)")
    parser.add_argument("--request-timeout", type=float, default=request_timeout, metavar="SECONDS",
                        help="how long a client may take to send its request or file data (default 60)")
    parser.add_argument("--upload-window", metavar="FILE",
                        help="a file standing in for the upload window disk (for tests; default: the disk with "
                        f"serial {WINDOW_SERIAL}, if any)")
    args = parser.parse_args(argv)
    request_timeout = args.request_timeout
    if args.upload_window:
        UploadWindow._found = (args.upload_window, os.path.getsize(args.upload_window))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    notify_socket = os.environ.pop("NOTIFY_SOCKET", "")  # not for the commands
    _base_env, _home = _base_environment()
    os.chdir(_home)  # commands start in HOME unless asked otherwise: no directory change per command
    try:
        listener = listen_unix(args.unix) if args.unix else listen_vsock(args.vsock_port)
    except OSError as e:
        print(f"pocketvm-agent: cannot listen: {e}", file=sys.stderr)
        return 1
    warm_up()  # connections made meanwhile wait in the listen queue
    print(f"pocketvm-agent {VERSION} listening on {args.unix or f'vsock port {args.vsock_port}'}", flush=True)
    notify_ready(notify_socket)
    try:
        serve(listener)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Host side of the guest agent protocol (docs/agent-protocol.md).

Every byte from the agent is untrusted: frames are size-checked before
they are read, JSON is checked for shape, every wait has a timeout, and a
guest whose agent dies or answers garbage gives an `AgentError` subclass
with a one-line message, never a hang of the caller.

Requests from several threads run at once, each on a connection of its
own; a connection whose request ended cleanly is kept (a few per client,
for IDLE_KEEP seconds) and reused by the next request, which saves the
connection set-up in the emulated guest. Connections are made by a
`connect` callable; `AgentClient.for_vm_socket(path)` reaches the agent through a
VM's vsock Unix socket (Firecracker's `CONNECT <port>`), `for_unix(path)`
an agent listening on a plain Unix socket (tests).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from pocketvm.backends.upload_window import WindowWriter, window_path
from pocketvm.guest.agent import (
    DEFAULT_PORT,
    FRAME,
    MAX_DATA,
    MAX_JSON,
    T_DATA,
    T_JSON,
    T_KEEPALIVE,
    T_STDERR,
    T_STDIN,
    T_STDOUT,
    T_WINDOW,
    WINDOW_SLOT,
    Checksum,
)

_LIMITS = {T_JSON: MAX_JSON, T_DATA: MAX_DATA, T_STDOUT: MAX_DATA, T_STDERR: MAX_DATA, T_KEEPALIVE: 0,
           T_WINDOW: WINDOW_SLOT.size}
SEND_CHUNK = MAX_DATA  # file data per frame: fewer, bigger frames for the guest to handle
DEFAULT_CHECKSUM = "adler32"  # the cheapest for the emulated guest (see agent.Checksum)
NO_CHECKSUM = "none"  # sizes only (protocol 3); an older agent is asked for DEFAULT_CHECKSUM instead
MAX_IDLE = 4  # idle connections kept per client
IDLE_KEEP = 30.0  # seconds an idle connection is kept (the agent keeps it far longer)
MAX_LIST_ENTRIES = 1_000_000
_OK_LINE = re.compile(rb"OK ([0-9]{1,10})\n")


class AgentError(Exception):
    """Anything that went wrong talking to the guest agent."""


class AgentUnavailable(AgentError):
    """No agent answers, or the connection to it broke (agent killed, VM gone)."""


class AgentTimeout(AgentError):
    """The agent went silent for longer than the client's timeout."""


class AgentProtocolError(AgentError):
    """The agent sent something that is not the protocol (garbage, oversized frames)."""


class RemoteError(AgentError):
    """The agent refused or failed the request (no such file, bad argument...)."""

    def __init__(self, message: str, code: str = "EIO"):
        super().__init__(message)
        self.code = code


class ChecksumMismatch(AgentError):
    """A transferred file's size or checksum differs from what the other side saw."""


@dataclass
class ExecResult:
    exit_code: int | None  # None when killed by a signal
    signal: str | None  # e.g. "SIGKILL"
    timed_out: bool
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class _Conn:
    sock: socket.socket
    timeout: float
    reused: bool = False  # it served a request before this one
    dirty: bool = False  # frames were sent after the request: not reusable
    sent: int = 0  # bytes sent on this connection: the stream position of the next one

    def send_frame(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        try:
            head = FRAME.pack(kind, len(payload))
            if len(payload) < 65536:
                self.sock.sendall(head + payload)
            else:
                self.sock.sendall(head)
                self.sock.sendall(payload)
            self.sent += FRAME.size + len(payload)
        except TimeoutError:
            raise AgentTimeout(f"the agent took no data for {self.timeout:g} s") from None
        except OSError as e:
            raise AgentUnavailable(f"connection to the agent lost: {e.strerror or e}") from None

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_frame(T_JSON, json.dumps(obj).encode())

    def send_data_at(self, payload: bytes | memoryview, offset: int, align: tuple[int, int] | None) -> None:
        """A D frame holding the file's bytes from `offset`, placed (by a
        padding K frame before it if need be) at a stream position equal to
        offset + align[1] modulo align[0], as the agent asked."""
        if align is not None:
            modulus, rest = align
            off = (self.sent + FRAME.size - offset - rest) % modulus
            if off:  # a K frame of p bytes moves the data on by FRAME.size + p
                self.send_frame(T_KEEPALIVE, bytes((-off - FRAME.size) % modulus))
        self.send_frame(T_DATA, payload)

    def _exact(self, n: int) -> bytes:
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise AgentTimeout(f"no answer from the agent for {self.timeout:g} s") from None
            except OSError as e:
                raise AgentUnavailable(f"connection to the agent lost: {e.strerror or e}") from None
            if not k:
                raise AgentUnavailable("the agent closed the connection mid-reply (killed, or the VM stopped?)")
            got += k
        return bytes(out)

    def recv_frame(self) -> tuple[bytes, bytes]:
        """The next frame that is not a keep-alive."""
        while True:
            kind, length = FRAME.unpack(self._exact(FRAME.size))
            limit = _LIMITS.get(kind)
            if limit is None:
                raise AgentProtocolError(f"the agent sent an unknown frame type {kind!r} (garbage?)")
            if length > limit:
                raise AgentProtocolError(f"the agent sent a {length}-byte {kind!r} frame (limit {limit})")
            payload = self._exact(length)
            if kind != T_KEEPALIVE:
                return kind, payload

    def recv_json(self) -> dict[str, Any]:
        kind, payload = self.recv_frame()
        if kind != T_JSON:
            raise AgentProtocolError(f"expected a JSON frame from the agent, got {kind!r}")
        return _decode(payload)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AgentProtocolError("the agent sent malformed JSON") from None
    if not isinstance(obj, dict):
        raise AgentProtocolError("the agent sent JSON that is not an object")
    return obj


def _final(reply: dict[str, Any]) -> dict[str, Any]:
    """A final reply: its data when ok, RemoteError otherwise."""
    ok = reply.get("ok")
    if ok is True:
        return reply
    if ok is False:
        error = reply.get("error")
        code = reply.get("code")
        raise RemoteError(str(error)[:500] if error else "the agent refused the request",
                          str(code)[:32] if isinstance(code, str) else "EIO")  # fmt: skip
    raise AgentProtocolError(f"the agent sent an unexpected message: {str(reply)[:200]}")


def _int(reply: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 63) -> int:
    value = reply.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise AgentProtocolError(f"the agent sent an invalid {key!r}: {str(value)[:50]}")
    return value


class ExecStream:
    """A running command: iterate for ("stdout"|"stderr", bytes) as it comes;
    `result` is set once the iteration ends."""

    def __init__(self, conn: _Conn, pid: int, client: AgentClient | None = None):
        self._conn = conn
        self._client = client
        self._released = False  # its connection went back to the client for reuse
        self.pid = pid
        self.result: ExecResult | None = None

    def write_stdin(self, data: bytes) -> None:
        # Frames sent after the request may reach the agent after the
        # command ended: such a connection is not reused for the next request.
        self._conn.dirty = True
        view = memoryview(data)
        for i in range(0, len(view), SEND_CHUNK):
            self._conn.send_frame(T_STDIN, view[i : i + SEND_CHUNK])

    def close_stdin(self) -> None:
        self._conn.dirty = True
        self._conn.send_frame(T_STDIN, b"")

    def signal(self, sig: str | int = "TERM") -> None:
        self._conn.dirty = True
        self._conn.send_json({"op": "signal", "signal": sig})

    def resize(self, rows: int, cols: int) -> None:
        self._conn.dirty = True
        self._conn.send_json({"op": "resize", "rows": rows, "cols": cols})

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        try:
            while True:
                kind, payload = self._conn.recv_frame()
                if kind == T_STDOUT:
                    yield "stdout", payload
                elif kind == T_STDERR:
                    yield "stderr", payload
                elif kind == T_JSON:
                    reply = _final(_decode(payload))
                    timed_out = reply.get("timed_out")
                    code = reply.get("exit_code")
                    sig = reply.get("signal")
                    if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < 256):
                        raise AgentProtocolError(f"the agent sent an invalid exit code {str(code)[:20]}")
                    if (code is None) == (sig is None) or not isinstance(timed_out, bool):
                        raise AgentProtocolError("the agent sent an invalid command result")
                    self.result = ExecResult(code, None if sig is None else str(sig)[:32], timed_out, pid=self.pid)
                    if self._client is not None:
                        self._released = True
                        self._client._release(self._conn, reply)
                    return
                else:
                    raise AgentProtocolError(f"unexpected {kind!r} frame while a command runs")
        finally:
            if self.result is None or self._client is None:
                self._conn.close()

    def wait(self, max_output: int | None = None) -> ExecResult:
        """Collect the rest of the output; the result with stdout and stderr."""
        out, err = bytearray(), bytearray()
        for name, data in self:
            (out if name == "stdout" else err).extend(data)
            if max_output is not None and len(out) + len(err) > max_output:
                self._conn.close()
                raise AgentError(f"the command printed more than {max_output} bytes")
        assert self.result is not None
        self.result.stdout, self.result.stderr = bytes(out), bytes(err)
        return self.result

    def close(self) -> None:
        """Stop listening; the agent kills the command if it still runs."""
        if not self._released:
            self._conn.close()


class AgentClient:
    """Requests to one guest agent."""

    def __init__(self, connect: Callable[[float], socket.socket], timeout: float = 30.0,
                 upload_window: Path | None = None):  # fmt: skip
        """`connect(timeout)` returns a socket connected to the agent.
        `timeout`: the longest the agent may stay silent (it sends keep-alives
        while a command runs quietly, so this is not a limit on commands).
        `upload_window`: the VM's upload window file, if it may have one
        (backends/upload_window.py); uploads go through it when the agent
        lends it, else through the connection."""
        self._connect = connect
        self.timeout = timeout
        self.upload_window = upload_window
        self._idle: list[tuple[_Conn, float]] = []  # connections kept for the next requests, with when
        self._idle_lock = threading.Lock()

    @classmethod
    def for_vm_socket(cls, path: str | os.PathLike[str], port: int = DEFAULT_PORT, timeout: float = 30.0) -> AgentClient:
        """The agent on vsock `port` of the VM whose vsock Unix socket is `path`."""

        def connect(t: float) -> socket.socket:
            sock = _unix(path, t)
            try:
                sock.sendall(f"CONNECT {port}\n".encode())
                line = b""
                while not line.endswith(b"\n") and len(line) < 32:
                    # The line only (what follows is the agent's): peek, then take up to its end.
                    peek = sock.recv(32 - len(line), socket.MSG_PEEK)
                    if not peek:
                        raise AgentUnavailable(f"no agent listens on vsock port {port} (not started yet, or killed?)")
                    end = peek.find(b"\n")
                    line += sock.recv(len(peek) if end < 0 else end + 1)
                if not _OK_LINE.fullmatch(line):
                    raise AgentProtocolError(f"the VM's vsock socket answered {line[:32]!r}")
            except TimeoutError:
                sock.close()
                raise AgentTimeout(f"the VM did not connect vsock port {port} within {t:g} s") from None
            except OSError as e:
                sock.close()
                raise AgentUnavailable(f"vsock connection failed: {e.strerror or e}") from None
            except AgentError:
                sock.close()
                raise
            return sock

        return cls(connect, timeout, upload_window=window_path(path))

    @classmethod
    def for_unix(cls, path: str | os.PathLike[str], timeout: float = 30.0) -> AgentClient:
        """An agent listening on a plain Unix socket (`agent.py --unix PATH`)."""
        return cls(lambda t: _unix(path, t), timeout)

    # --- plumbing -----------------------------------------------------------------------

    def _new_conn(self) -> _Conn:
        sock = self._connect(self.timeout)
        sock.settimeout(self.timeout)
        return _Conn(sock, self.timeout)

    def _idle_conn(self) -> _Conn | None:
        now = time.monotonic()
        with self._idle_lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < IDLE_KEEP:
                    return conn
                conn.close()
        return None

    def _release(self, conn: _Conn, final: dict[str, Any]) -> None:
        """A connection whose request has ended: kept for the next request when
        the agent said it takes one ("keep") and nothing is in flight, closed otherwise."""
        if final.get("keep") is not True or conn.dirty:
            conn.close()
            return
        with self._idle_lock:
            if len(self._idle) < MAX_IDLE:
                conn.reused = True
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (requests still running keep theirs)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def warm(self) -> None:
        """Open a connection now and keep it for the next request (AgentError
        when the agent does not accept it)."""
        conn = self._new_conn()
        conn.reused = True
        with self._idle_lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _request(self, request: dict[str, Any]) -> tuple[_Conn, tuple[bytes, bytes]]:
        """Send `request`; the connection and the agent's first frame. A kept
        connection that turns out closed (the agent restarted, the VM was
        restored) before anything came back is replaced by a new one."""
        conn = self._idle_conn()
        if conn is not None:
            try:
                conn.send_json(request)
                return conn, conn.recv_frame()
            except AgentUnavailable:
                conn.close()  # nothing was answered: the request never ran there
        conn = self._new_conn()
        try:
            conn.send_json(request)
            return conn, conn.recv_frame()
        except BaseException:
            conn.close()
            raise

    def _request_json(self, request: dict[str, Any]) -> tuple[_Conn, dict[str, Any]]:
        conn, (kind, payload) = self._request(request)
        if kind != T_JSON:
            conn.close()
            raise AgentProtocolError(f"expected a JSON frame from the agent, got {kind!r}")
        try:
            return conn, _decode(payload)
        except BaseException:
            conn.close()
            raise

    def _refused(self, conn: _Conn, reply: dict[str, Any], otherwise: str) -> NoReturn:
        """The agent answered a request with its final reply instead of going
        ahead: RemoteError for a refusal (its connection kept), else a protocol error."""
        if reply.get("ok") is False:
            self._release(conn, reply)
            _final(reply)
        conn.close()
        raise AgentProtocolError(otherwise)

    def _simple(self, request: dict[str, Any]) -> dict[str, Any]:
        conn, reply = self._request_json(request)
        try:
            result = _final(reply)
        except BaseException:
            conn.close()
            raise
        self._release(conn, result)
        return result

    # --- requests ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The agent's version, pid and uptime; AgentError when it does not answer."""
        return self._simple({"op": "health"})

    def stat(self, path: str, follow_symlinks: bool = True) -> dict[str, Any]:
        reply = self._simple({"op": "stat", "path": path, "follow": follow_symlinks})
        st = reply.get("stat")
        if not isinstance(st, dict):
            raise AgentProtocolError("the agent sent a stat reply without a stat")
        return st

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except RemoteError as e:
            if e.code == "ENOENT":
                return False
            raise
        return True

    def list(self, path: str) -> list[dict[str, Any]]:
        conn, reply = self._request_json({"op": "list", "path": path})
        entries: list[dict[str, Any]] = []
        done = False
        try:
            while True:
                if reply.get("event") == "entries" and isinstance(reply.get("entries"), list):
                    for e in reply["entries"]:
                        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                            raise AgentProtocolError("the agent sent a malformed directory entry")
                        entries.append(e)
                    if len(entries) > MAX_LIST_ENTRIES:
                        raise AgentProtocolError(f"more than {MAX_LIST_ENTRIES} directory entries")
                    reply = conn.recv_json()
                    continue
                self._release(conn, _final(reply))
                done = True
                return entries
        finally:
            if not done:
                conn.close()

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> None:
        self._simple({"op": "mkdir", "path": path, "parents": parents, "mode": mode})

    def remove(self, path: str, recursive: bool = False) -> None:
        self._simple({"op": "remove", "path": path, "recursive": recursive})

    def signal(self, pid: int, sig: str | int = "TERM") -> None:
        """Signal a command the agent runs (and its process group)."""
        self._simple({"op": "signal", "pid": pid, "signal": sig})

    def exec_stream(
        self,
        command: list[str] | str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        pty: bool = False,
        clear_env: bool = False,
    ) -> ExecStream:
        """Start `command` (an argv list, or a string for /bin/sh -c) and
        return its stream. With `stdin=True` the caller writes its input
        (`write_stdin`, then `close_stdin`); otherwise it reads /dev/null."""
        request: dict[str, Any] = {"op": "exec", "stdin": stdin, "pty": pty, "clear_env": clear_env}
        if isinstance(command, str):
            request["shell"] = command
        else:
            request["argv"] = list(command)
        for key, value in (("env", env), ("cwd", cwd), ("user", user), ("timeout", timeout)):
            if value is not None:
                request[key] = value
        conn, reply = self._request_json(request)
        conn.dirty = stdin  # its input may still be on the way when the command has ended
        if reply.get("event") != "started":
            self._refused(conn, reply, "the agent did not start the command and gave no reason")
        try:
            pid = _int(reply, "pid", 1, 1 << 31)
        except BaseException:
            conn.close()
            raise
        return ExecStream(conn, pid, self)

    def run(
        self,
        command: list[str] | str,
        *,
        input: bytes | None = None,
        max_output: int | None = 1 << 30,
        **kwargs: Any,
    ) -> ExecResult:
        """Run `command` to its end; its output collected (at most `max_output` bytes)."""
        stream = self.exec_stream(command, stdin=input is not None, **kwargs)
        if input is None:
            return stream.wait(max_output)

        def feed() -> None:  # beside the output: a command may write before it has read everything
            try:
                stream.write_stdin(input)
                stream.close_stdin()
            except AgentError:
                pass  # the command ended without reading it all; its result says how

        feeder = threading.Thread(target=feed, name="agent-stdin", daemon=True)
        feeder.start()
        try:
            return stream.wait(max_output)
        finally:
            stream.close()  # a feeder still writing fails at once
            feeder.join()

    def upload(self, source: str | os.PathLike[str] | bytes | IO[bytes], path: str, mode: int | None = None,
               parents: bool = False, checksum: str = DEFAULT_CHECKSUM) -> dict[str, Any]:  # fmt: skip
        """Write `source` (bytes, a local file path or a binary file object)
        to `path` in the guest, atomically; checked by size and `checksum`
        ("adler32" by default; "crc32" half as fast and "sha256" thirty
        times slower in an emulated guest; "none": by size only)."""
        _checksum(checksum)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)

            def whole(algorithm: str) -> dict[str, Any]:
                expected = _checksum(algorithm)
                expected.update(data)
                view = memoryview(data)
                chunks = (view[i : i + SEND_CHUNK] for i in range(0, len(view), SEND_CHUNK))
                return self._upload(path, len(data), expected.hexdigest(), mode, parents, chunks, algorithm)

            return _older_agent_retry(checksum, whole)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                st = os.fstat(f.fileno())
                return _older_agent_retry(
                    checksum, lambda a: self._upload(path, st.st_size, None, mode, parents, _read_chunks(f), a))
        return _older_agent_retry(
            checksum, lambda a: self._upload(path, None, None, mode, parents, _read_chunks(source), a))

    def _upload(self, path: str, size: int | None, expected: str | None, mode: int | None, parents: bool,
                chunks: Iterator[bytes], checksum: str) -> dict[str, Any]:  # fmt: skip
        request: dict[str, Any] = {"op": "upload", "path": path, "parents": parents, "checksum": checksum}
        if size is not None:
            request["size"] = size
        if expected is not None:
            request["digest"] = expected
        if mode is not None:
            request["mode"] = mode
        writer = self._window_writer()
        if writer is not None:
            request["window"] = True
        done = lent = False
        try:
            conn, ready = self._request_json(request)
        except BaseException:
            if writer is not None:
                writer.close(clear=False)
            raise
        try:
            if ready.get("event") != "ready":
                done = True
                self._refused(conn, ready, "the agent neither took nor refused the upload")
            digest = _checksum(checksum)
            shape = _window_shape(ready.get("window"), writer)
            if writer is not None and shape is not None:
                lent = True
                sent = _send_through_window(conn, writer, shape, chunks, digest)
            else:
                align = _alignment(ready.get("align"))
                sent = 0
                for chunk in chunks:
                    digest.update(chunk)
                    conn.send_data_at(chunk, sent, align)
                    sent += len(chunk)
            if writer is not None:
                # A hole again before the window goes back to the agent (at
                # the end frame); another upload's window must not be touched.
                writer.close(clear=lent)
            conn.send_frame(T_DATA, b"")
            reply = _final(conn.recv_json())
            self._release(conn, reply)
            done = True
            if reply.get("size") != sent or reply.get("digest") != digest.hexdigest():
                raise ChecksumMismatch(f"{path}: the guest wrote something else than was sent")
            return {"size": sent, "checksum": checksum, "digest": digest.hexdigest()}
        finally:
            if writer is not None:
                writer.close(clear=lent)
            if not done:
                conn.close()

    def _window_writer(self) -> WindowWriter | None:
        """The VM's upload window, opened for writing; None when there is none (or not for us)."""
        if self.upload_window is None:
            return None
        try:
            return WindowWriter(self.upload_window)
        except OSError:
            return None

    def download(self, path: str, dest: str | os.PathLike[str] | IO[bytes], checksum: str = DEFAULT_CHECKSUM) -> dict[str, Any]:
        """Copy `path` from the guest to a local path or binary file object;
        checked by size and `checksum`. A local path is written atomically."""
        if isinstance(dest, (str, os.PathLike)):
            target = Path(dest)
            tmp = target.with_name(f".{target.name}.pocketvm-download")
            try:
                with open(tmp, "wb") as f:
                    info = self.download(path, f, checksum)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return info
        return _older_agent_retry(checksum, lambda a: self._download(path, dest, a))

    def _download(self, path: str, dest: IO[bytes], checksum: str) -> dict[str, Any]:
        digest = _checksum(checksum)
        conn, head = self._request_json({"op": "download", "path": path, "checksum": checksum})
        done = False
        try:
            if head.get("event") != "file":
                done = True
                self._refused(conn, head, "the agent neither sent nor refused the file")
            size = _int(head, "size")
            mode = _int(head, "mode", 0, 0o7777)
            got = 0
            while True:
                kind, data = conn.recv_frame()
                if kind != T_DATA:
                    raise AgentProtocolError(f"expected file data from the agent, got {kind!r}")
                if not data:
                    break
                got += len(data)
                if got > size:
                    raise ChecksumMismatch(f"{path}: the agent sent more than the {size} bytes it announced")
                digest.update(data)
                dest.write(data)
            reply = _final(conn.recv_json())
            self._release(conn, reply)
            done = True
            if got != size or reply.get("size") != got or reply.get("digest") != digest.hexdigest():
                raise ChecksumMismatch(f"{path}: received {got} bytes that do not match what the agent sent")
            return {"size": got, "checksum": checksum, "digest": digest.hexdigest(), "mode": mode}
        finally:
            if not done:
                conn.close()

    def read_bytes(self, path: str, max_size: int = 1 << 30) -> bytes:
        import io

        buf = io.BytesIO()
        st = self.stat(path)
        if isinstance(st.get("size"), int) and st["size"] > max_size:
            raise AgentError(f"{path} is {st['size']} bytes, more than {max_size}")
        self.download(path, buf)
        return buf.getvalue()

    def write_bytes(self, path: str, data: bytes, mode: int | None = None) -> None:
        self.upload(data, path, mode=mode)


def _alignment(value: object) -> tuple[int, int] | None:
    """The agent's [modulus, rest] for file data (protocol 4), if it is sane."""
    if (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and value[0] in (2, 4, 8, 16) and 0 <= value[1] < value[0]):  # fmt: skip
        return value[0], value[1]
    return None


def _window_shape(value: object, writer: WindowWriter | None) -> tuple[int, int] | None:
    """(slot size, slot count) of the window the agent lent, if it is sane and fits the file."""
    if writer is None or not isinstance(value, dict):
        return None
    slot, slots = value.get("slot"), value.get("slots")
    if (type(slot) is int and type(slots) is int and 0 < slot and slot % 4096 == 0 and 0 < slots <= 64
            and slot * slots <= writer.size):  # fmt: skip
        return slot, slots
    return None


def _send_through_window(conn: _Conn, writer: WindowWriter, shape: tuple[int, int], chunks: Iterator[bytes],
                         digest: Checksum) -> int:  # fmt: skip
    """The file's bytes, a slot at a time, each named by a W frame; a slot
    is filled again only after the agent has answered that it read it."""
    slot, slots = shape
    pending: list[bytes] = []  # W frames sent, not answered yet, in order
    sent = 0
    for piece in _regroup(chunks, slot):
        if len(pending) == slots:
            _window_answer(conn, pending.pop(0))
        offset = (sent // slot % slots) * slot
        writer.write(offset, piece)
        digest.update(piece)
        frame = WINDOW_SLOT.pack(offset, len(piece))
        conn.send_frame(T_WINDOW, frame)
        pending.append(frame)
        sent += len(piece)
    for frame in pending:
        _window_answer(conn, frame)
    return sent


def _window_answer(conn: _Conn, expected: bytes) -> None:
    kind, payload = conn.recv_frame()
    if kind != T_WINDOW or payload != expected:
        raise AgentProtocolError(f"expected the agent to answer an upload window slot, got a {kind!r} frame")


def _regroup(chunks: Iterator[bytes], size: int) -> Iterator[bytes | bytearray]:
    """The concatenation of `chunks`, in pieces of exactly `size` bytes (the last may be shorter)."""
    buf = bytearray()
    for chunk in chunks:
        if not buf and len(chunk) == size:
            yield chunk
            continue
        buf += chunk
        while len(buf) >= size:
            yield buf[:size]  # a copy already: buf changes next
            del buf[:size]
    if buf:
        yield bytes(buf)


def _older_agent_retry(checksum: str, transfer: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """`transfer(checksum)`; an agent older than protocol 3 refuses "none"
    (before any data moves): then with DEFAULT_CHECKSUM."""
    try:
        return transfer(checksum)
    except RemoteError as e:
        if checksum != NO_CHECKSUM or "unknown checksum" not in str(e):
            raise
    return transfer(DEFAULT_CHECKSUM)


def _checksum(algorithm: str) -> Checksum:
    if algorithm not in Checksum.ALGORITHMS:
        raise ValueError(f"unknown checksum {algorithm!r} (use one of {', '.join(Checksum.ALGORITHMS)})")
    return Checksum(algorithm)


def _read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = f.read(SEND_CHUNK)
        if not chunk:
            return
        yield chunk


def _unix(path: str | os.PathLike[str], timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except TimeoutError:
        sock.close()
        raise AgentTimeout(f"{path}: no answer within {timeout:g} s") from None
    except OSError as e:
        sock.close()
        raise AgentUnavailable(f"cannot connect to {path}: {e.strerror or e}") from None
    return sock


def wait_until_up(client: AgentClient, timeout: float = 60.0) -> dict[str, Any]:
    """Poll `health` until the agent answers (it starts with the guest)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health()
        except (AgentUnavailable, AgentTimeout):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

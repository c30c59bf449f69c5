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
    K  keep-alive (empty), sent while a command runs silently
"""

from __future__ import annotations

import argparse
import errno
import grp
import hashlib
import json
import os
import pwd
import selectors
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

VERSION = "1.0"
PROTOCOL = 1
DEFAULT_PORT = 52

FRAME = struct.Struct(">cI")  # type, length
MAX_JSON = 64 * 1024
MAX_DATA = 1024 * 1024
CHUNK = 256 * 1024  # what the agent puts in one D/O/E frame
KEEPALIVE = 2.0  # seconds between K frames while a command is silent
LIST_BATCH = 512  # directory entries per JSON frame
MAX_CONNECTIONS = 64
# How long a client may keep the agent waiting for its request or for file
# data (a running command waits for its client as long as it runs).
request_timeout = 60.0
EXIT_DRAIN = 1.0  # after a command exits, how long its output may still come (background children)

T_JSON, T_DATA, T_STDOUT, T_STDERR, T_STDIN, T_KEEPALIVE = b"J", b"D", b"O", b"E", b"I", b"K"
_MAX = {T_JSON: MAX_JSON, T_DATA: MAX_DATA, T_STDOUT: MAX_DATA, T_STDERR: MAX_DATA, T_STDIN: MAX_DATA,
        T_KEEPALIVE: 0}

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
    """Frames over one connected socket. Sends are serialised (a command's
    output and its keep-alives come from different threads)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        head = FRAME.pack(kind, len(payload))
        with self._send_lock:
            if len(payload) < 65536:
                self.sock.sendall(head + payload)  # one write for small frames
            else:
                self.sock.sendall(head)
                self.sock.sendall(payload)

    def send_json(self, obj: dict) -> None:
        self.send(T_JSON, json.dumps(obj, separators=(",", ":")).encode())

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def recv(self) -> tuple[bytes, bytes]:
        """The next frame (type, payload). EOFError at a clean end between frames."""
        head = self._exact(FRAME.size)
        kind, length = FRAME.unpack(head)
        limit = _MAX.get(kind)
        if limit is None:
            raise ProtocolError(f"unknown frame type {kind!r}")
        if length > limit:
            raise ProtocolError(f"{kind.decode(errors='replace')} frame of {length} bytes (limit {limit})")
        try:
            return kind, self._exact(length)
        except EOFError:
            raise ProtocolError("connection closed inside a frame") from None

    def recv_json(self) -> dict:
        kind, payload = self.recv()
        if kind != T_JSON:
            raise ProtocolError(f"expected a JSON frame, got {kind!r}")
        return decode_json(payload)


def decode_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"))
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
    """A transfer's checksum. CRC-32 by default: it catches data damaged or
    cut on the way, and runs about ten times faster than SHA-256 on an
    emulated CPU without crypto instructions (19 vs 1.6 MiB/s measured in
    pocketvm's guest). SHA-256 when asked."""

    ALGORITHMS = ("crc32", "sha256")

    def __init__(self, algorithm: object = "crc32"):
        if algorithm not in self.ALGORITHMS:
            raise RequestError(f"unknown checksum {algorithm!r} (use crc32 or sha256)")
        self.algorithm = str(algorithm)
        self._sha = hashlib.sha256() if algorithm == "sha256" else None
        self._crc = 0

    def update(self, data: bytes) -> None:
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"


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
    ch.send_json({"event": "ready"})
    written = 0
    ok = False
    error: RequestError | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                kind, data = ch.recv()
                if kind != T_DATA:
                    raise ProtocolError(f"expected file data, got a {kind!r} frame")
                if not data:
                    break
                written += len(data)
                if error is None:
                    if size is not None and written > size:
                        error = RequestError(f"more data than the {size} bytes announced")
                        continue
                    try:
                        f.write(data)
                        digest.update(data)
                    except OSError as e:
                        error = _os_error(e, path)  # keep reading to the end frame
            if error is not None:
                raise error
            if size is not None and written != size:
                raise RequestError(f"{written} bytes received, {size} announced")
            if want is not None and digest.hexdigest() != want:
                raise RequestError("checksum mismatch: the file was corrupted on the way", "EBADMSG")
            f.flush()
            os.fsync(f.fileno())
            if mode is not None:
                os.fchmod(f.fileno(), int(mode) & 0o7777)
            else:
                os.fchmod(f.fileno(), 0o644)
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


def op_download(ch: Channel, req: dict) -> dict:
    path = _str(req, "path")
    digest = Checksum(req.get("checksum", "crc32"))
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with` below; an open error is answered first)
    except OSError as e:
        raise _os_error(e, path) from None
    sent = 0
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(f"{path}: not a regular file", "EISDIR" if stat.S_ISDIR(st.st_mode) else "EINVAL")
        ch.send_json({"event": "file", "size": st.st_size, "mode": stat.S_IMODE(st.st_mode)})
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            digest.update(data)
            sent += len(data)
            ch.send(T_DATA, data)
    ch.send(T_DATA, b"")
    return {"ok": True, "size": sent, "checksum": digest.algorithm, "digest": digest.hexdigest()}


# --- commands ---------------------------------------------------------------------------------

_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()


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
        proc = _running.get(pid) if isinstance(pid, int) else None
    if proc is None:
        raise RequestError(f"no running command with pid {pid!r}", "ESRCH")
    _kill(proc, sig)
    return {"ok": True}


def _kill(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the command runs in a session of its own
    except OSError:
        try:
            proc.send_signal(sig)
        except OSError:
            pass


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
    env = {} if req.get("clear_env") else dict(os.environ)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    # Started by init, the agent has no login environment: give commands the
    # agent user's (a request's "user" replaces these).
    try:
        me = pwd.getpwuid(os.getuid())
        env.setdefault("HOME", me.pw_dir)
        env.setdefault("USER", me.pw_name)
        env.setdefault("LOGNAME", me.pw_name)
    except KeyError:
        pass
    env.update(env_in)
    cwd = req.get("cwd")
    if cwd is not None:
        cwd = _str(req, "cwd")
    return args, env, cwd


def op_exec(ch: Channel, req: dict) -> dict:
    args, env, cwd = _command(req)
    timeout = _opt_num(req, "timeout")
    use_pty = bool(req.get("pty"))
    want_stdin = bool(req.get("stdin"))
    kwargs: dict = {}
    user = req.get("user")
    if user is not None:
        try:
            pw = pwd.getpwnam(_str(req, "user")) if not isinstance(user, int) else pwd.getpwuid(user)
        except KeyError:
            raise RequestError(f"no user {user!r}", "ENOENT") from None
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid,
                      extra_groups=[g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem])
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    if cwd is None:  # like a login: the home directory
        home = env.get("HOME", "/")
        cwd = home if os.path.isdir(home) else "/"
    master = None
    try:
        if use_pty:
            import fcntl
            import pty
            import termios

            master, slave = pty.openpty()
            rows, cols = int(req.get("rows", 24)), int(req.get("cols", 80))
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            env.setdefault("TERM", "xterm-256color")

            def controlling_tty() -> None:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            # preexec_fn in a threaded program: it only makes one ioctl, no locks or allocation.
            proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                    start_new_session=True, preexec_fn=controlling_tty, **kwargs)  # noqa: PLW1509
            os.close(slave)
        else:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                    start_new_session=True, **kwargs)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        if master is not None:
            os.close(master)
        if isinstance(e, OSError):
            raise _os_error(e, args[0]) from None
        raise RequestError(f"{args[0]}: {e}") from None
    with _running_lock:
        _running[proc.pid] = proc
    ch.sock.settimeout(None)  # stdin and signals may come at any time while it runs
    try:
        return _supervise(ch, proc, master, want_stdin, timeout)
    finally:
        if proc.poll() is None:  # the client went away mid-command: so does the command
            _kill(proc, signal.SIGKILL)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        with _running_lock:
            _running.pop(proc.pid, None)
        if master is not None:
            try:
                os.close(master)
            except OSError:
                pass


def _supervise(ch: Channel, proc: subprocess.Popen, master: int | None, want_stdin: bool,
               timeout: float | None) -> dict:
    ch.send_json({"event": "started", "pid": proc.pid})
    state = {"timed_out": False, "client_gone": False}
    stdin_fd = master if master is not None else (proc.stdin.fileno() if proc.stdin else None)

    def from_client() -> None:
        """Frames from the client while the command runs: stdin, signals."""
        try:
            while True:
                kind, data = ch.recv()
                if kind == T_STDIN:
                    if stdin_fd is None:
                        continue
                    if not data:
                        if master is not None:
                            os.write(master, b"\x04")  # end of input on a terminal: ^D
                        elif proc.stdin:
                            proc.stdin.close()
                        continue
                    view = memoryview(data)
                    while view:
                        n = os.write(stdin_fd, view)
                        view = view[n:]
                elif kind == T_JSON:
                    msg = decode_json(data)
                    if msg.get("op") == "signal":
                        _kill(proc, _signal_number(msg.get("signal", "TERM")))
                    elif msg.get("op") == "resize" and master is not None:
                        import fcntl
                        import termios

                        fcntl.ioctl(master, termios.TIOCSWINSZ,
                                    struct.pack("HHHH", int(msg.get("rows", 24)), int(msg.get("cols", 80)), 0, 0))
        except (EOFError, ProtocolError, OSError, RequestError, ValueError):
            # The client went away (or broke the protocol): the command goes too.
            if proc.poll() is None and not state["timed_out"]:
                state["client_gone"] = True
                _kill(proc, signal.SIGKILL)
        finally:
            if proc.stdin and master is None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

    reader = threading.Thread(target=from_client, daemon=True)
    reader.start()
    sel = selectors.DefaultSelector()
    if master is not None:
        sel.register(master, selectors.EVENT_READ, T_STDOUT)
    else:
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, T_STDOUT)  # type: ignore[union-attr]
        sel.register(proc.stderr.fileno(), selectors.EVENT_READ, T_STDERR)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout if timeout else None
    last_sent = time.monotonic()
    exited_at: float | None = None
    last_output = 0.0
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline and proc.poll() is None:
                state["timed_out"] = True
                _kill(proc, signal.SIGKILL)
                deadline = None
            if proc.poll() is not None:
                if exited_at is None:
                    exited_at = now
                # Done once the output has ended, or soon after the exit when
                # a background child of the command holds it open.
                if not sel.get_map() or now - max(exited_at, last_output) > EXIT_DRAIN:
                    break
            wait = 0.2  # how soon an exit is noticed while children hold the output
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if sel.get_map():
                for key, _ in sel.select(wait):
                    try:
                        data = os.read(key.fd, CHUNK)
                    except OSError:  # EIO: the terminal's other side closed
                        data = b""
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    ch.send(key.data, data)
                    last_sent = last_output = time.monotonic()
            else:
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
            if time.monotonic() - last_sent >= KEEPALIVE:
                ch.send(T_KEEPALIVE)
                last_sent = time.monotonic()
    finally:
        sel.close()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    code = proc.wait()
    result: dict = {"ok": True, "event": "exit", "timed_out": state["timed_out"]}
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
    ch = Channel(sock)
    sock.settimeout(request_timeout)
    try:
        try:
            req = ch.recv_json()
            op = OPS.get(req.get("op"))  # type: ignore[arg-type]
            if op is None:
                raise RequestError(f"unknown op {req.get('op')!r}", "ENOSYS")
            reply = op(ch, req)
        except RequestError as e:
            reply = {"ok": False, "error": str(e), "code": e.code}
        except (ProtocolError, EOFError):
            return
        except Exception as e:  # noqa: BLE001 (a bug here must not take the agent down)
            reply = {"ok": False, "error": f"agent error: {type(e).__name__}: {e}", "code": "EIO"}
        ch.send_json(reply)
    except OSError:
        pass
    finally:
        try:
            # Wakes a thread of this request still blocked reading (a command's
            # stdin reader); what was sent is still delivered.
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass


def serve(listener: socket.socket) -> None:
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
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
        if not slots.acquire(blocking=False):
            Channel(sock).send_json({"ok": False, "error": "agent busy: too many requests at once", "code": "EBUSY"})
            sock.close()
            continue

        def run(s: socket.socket = sock) -> None:
            try:
                serve_connection(s)
            finally:
                slots.release()

        threading.Thread(target=run, daemon=True).start()


def listen_vsock(port: int) -> socket.socket:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
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
    parser = argparse.ArgumentParser(description="pocketvm guest agent")
    parser.add_argument("--vsock-port", type=int, default=DEFAULT_PORT, help="vsock port to listen on (default 52)")
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead (for tests)")
    parser.add_argument("--request-timeout", type=float, default=request_timeout, metavar="SECONDS",
                        help="how long a client may take to send its request or file data (default 60)")
    args = parser.parse_args(argv)
    globals()["request_timeout"] = args.request_timeout
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        listener = listen_unix(args.unix) if args.unix else listen_vsock(args.vsock_port)
    except OSError as e:
        print(f"pocketvm-agent: cannot listen: {e}", file=sys.stderr)
        return 1
    print(f"pocketvm-agent {VERSION} listening on {args.unix or f'vsock port {args.vsock_port}'}", flush=True)
    try:
        serve(listener)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""VM names and the control socket of a running VM.

Every running VM has a name and listens on a Unix socket
`runtime_dir()/NAME.sock` (directory 0700, socket 0600: only its user can
talk to it). Binding the socket is what claims the name, so two VMs can
never share one. A VM that dies without cleaning up leaves a socket nobody
listens on; it is recognised (connection refused) and removed by `pocket
ls` and by the next VM that wants the name.

Protocol: the client connects, sends one JSON object on one line, reads one
JSON object line back, and the connection closes.

    {"cmd": "info"}                                -> {"ok": true, "name": ..., "pid": ..., ...}
    {"cmd": "snapshot", "dir": ABS, "stop": bool}  -> {"ok": true, "path": ..., "seconds": ..., ...}
    {"cmd": "pause"} / {"cmd": "resume"}           -> {"ok": true, "state": "paused" | "running"}
    anything else / failure                        -> {"ok": false, "error": "one line"}

Requests are served by a background thread. Anything that touches the
machine is handed to the VM's run loop with `VirtualMachine.submit` and
happens between two slices, so the run loop itself only checks a queue.
A pause is such a call that does not return until the resume: the run
loop waits in it, the guest's clock stands still, and a snapshot asked for
meanwhile is taken from inside the pause.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import secrets
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

from pocketvm.backends.upload_window import window_path
from pocketvm.paths import runtime_dir

log = logging.getLogger(__name__)

SUFFIX = ".sock"
DISKS_SUFFIX = ".disks"  # beside the socket: where a restored VM's disk copies are
MAX_REQUEST = 64 * 1024
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SUN_PATH_MAX = 107


class ControlError(Exception):
    """A name or control-socket problem (one-line message for the user).

    This module does not import pocketvm.machine (which loads numba), so
    that `pocket ls` and `pocket snapshot` start in a fraction of a second.
    """


def _is_user_error(e: BaseException) -> bool:
    # Only called in the VM's process, where these are loaded anyway.
    from pocketvm.machine import VMError
    from pocketvm.snapshot.format import SnapshotError

    return isinstance(e, (VMError, SnapshotError, ControlError))


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ControlError(
            f"invalid VM name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def socket_path(name: str) -> Path:
    return runtime_dir() / f"{name}{SUFFIX}"


def ensure_runtime_dir() -> Path:
    d = runtime_dir()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ControlError(f"cannot create the runtime directory {d}: {e.strerror}") from None
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ControlError(f"runtime directory {d} is not a directory owned by you")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def _probe(path: Path, timeout: float = 1.0) -> bool | None:
    """True: a VM listens there; False: stale (nobody listens); None: unsure."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return True
    except FileNotFoundError:
        return False
    except ConnectionRefusedError:
        return False
    except OSError:
        return None
    finally:
        s.close()


def _reap(name: str) -> None:
    """A VM called `name` died without cleaning up: delete the disk copies
    it never wrote (those it wrote stay, as after a normal exit) and its
    vsock socket (pocketvm.machine names it NAME.vsock) and upload window."""
    vsock = runtime_dir() / f"{name}.vsock"
    if _probe(vsock) is False:
        vsock.unlink(missing_ok=True)
        window_path(vsock).unlink(missing_ok=True)
    note = runtime_dir() / f"{name}{DISKS_SUFFIX}"
    try:
        lines = note.read_text().splitlines()
    except OSError:
        return
    if not lines:
        return
    from pocketvm.snapshot.workdisks import reap

    reap(Path(lines[0]), written_too="discard" in lines[1:])
    try:
        note.unlink()
    except FileNotFoundError:
        pass


def generate_name() -> str:
    """A fresh name no running VM uses."""
    for _ in range(100):
        name = f"vm-{secrets.token_hex(3)}"
        if not socket_path(name).exists():
            return name
    raise ControlError("cannot find a free VM name")


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(obj).encode() + b"\n")
    except OSError:
        pass  # the client went away; nothing to tell


def _recv_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("message too long")
    return bytes(buf.split(b"\n", 1)[0])


class ControlServer:
    """The VM side of the control socket."""

    def __init__(self, name: str):
        self.name = check_name(name)
        self.path = socket_path(name)
        ensure_runtime_dir()
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise ControlError(f"control socket path {self.path} is too long; set XDG_RUNTIME_DIR to a shorter directory")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind()
        except BaseException:
            self._sock.close()
            raise
        self._ino = os.stat(self.path).st_ino
        self.vm: Any = None
        self.info: dict[str, Any] = {}
        self.started = time.time()
        self._thread: threading.Thread | None = None
        self._conns: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()
        self._closed = False
        self.state = "starting"
        self._pause: _Pause | None = None
        self._pause_lock = threading.Lock()

    def _bind(self) -> None:
        try:
            self._sock.bind(str(self.path))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ControlError(f"cannot create control socket {self.path}: {e.strerror}") from None
            if _probe(self.path) is not False:
                raise ControlError(f"a VM named {self.name!r} is already running (see `pocket ls`)") from None
            # Left behind by a VM that died: take the name over.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            _reap(self.name)
            try:
                self._sock.bind(str(self.path))
            except OSError as e2:
                raise ControlError(f"cannot create control socket {self.path}: {e2.strerror}") from None
        # The directory is 0700 already; the socket itself says the same.
        os.chmod(self.path, 0o600)
        self._sock.listen(8)

    def start(self, vm: Any, info: dict[str, Any] | None = None) -> None:
        """Serve requests for `vm` (whose run() is about to be called)."""
        self.vm = vm
        self.info = dict(info or {})
        self.state = "running"
        self._thread = threading.Thread(target=self._accept_loop, name=f"control-{self.name}", daemon=True)
        self._thread.start()

    def close(self, linger: float = 3.0) -> None:
        """Stop serving; answers being sent (e.g. to the `snapshot --stop`
        that ended the VM) get up to `linger` seconds to go out."""
        if self._closed:
            return
        self._closed = True
        pause = self._pause
        if pause is not None:
            pause.resume()
        with self._conns_lock:
            conns = list(self._conns)
        deadline = time.monotonic() + linger
        for t in conns:
            t.join(max(0.0, deadline - time.monotonic()))
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the server thread
        except OSError:
            pass
        self._sock.close()
        try:
            # Only remove the socket if it is still ours (not a successor's).
            if os.stat(self.path).st_ino == self._ino:
                self.path.unlink()
                self._disks_note.unlink(missing_ok=True)
        except OSError:  # gone already, or a VM that dropped root cannot (a later one reaps it)
            pass

    @property
    def _disks_note(self) -> Path:
        return runtime_dir() / f"{self.name}{DISKS_SUFFIX}"

    def note_disk_dir(self, directory: Path, discard: bool = False) -> None:
        """Record where this VM's disk copies are (and whether written ones go
        too), for cleaning up after a crash."""
        tmp = self._disks_note.with_suffix(".tmp")
        tmp.write_text(f"{directory}\n" + ("discard\n" if discard else ""))
        os.replace(tmp, self._disks_note)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- serving ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True)
            with self._conns_lock:
                self._conns.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_one(conn)
        finally:
            with self._conns_lock:
                self._conns.discard(threading.current_thread())

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                line = _recv_line(conn)
                conn.settimeout(None)  # a snapshot may take a while
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request is not a JSON object")
            except (OSError, ValueError) as e:
                _send(conn, {"ok": False, "error": f"bad request: {e}"})
                return
            try:
                reply = self._dispatch(req)
            except Exception as e:
                if _is_user_error(e):
                    reply = {"ok": False, "error": str(e)}
                else:  # a bug must not take the VM down; tell the client
                    log.exception("control request %r failed", req.get("cmd"))
                    reply = {"ok": False, "error": f"internal error: {e!r}"}
            _send(conn, reply)

    def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "info":
            return {"ok": True, **self.describe()}
        if cmd == "snapshot":
            directory = req.get("dir")
            if not isinstance(directory, str) or not os.path.isabs(directory):
                raise ControlError("snapshot needs an absolute directory path")
            stop = bool(req.get("stop", False))
            vm = self.vm
            if vm is None:
                raise ControlError("the VM is not running yet")
            # The VM is paused only while its state is copied; the copy is
            # sealed (digests, fsync, manifest) here while it runs again.
            # A paused VM's run loop waits in the pause: it takes the capture there.
            with self._pause_lock:
                pause = self._pause
                work = (pause.call if pause is not None else vm.submit)(lambda: self._capture(Path(directory), stop))
            outcome = work.result()
            result = outcome if stop else outcome.finish()
            return {"ok": True, **result.as_dict()}
        if cmd == "pause":
            return {"ok": True, "state": self._pause_vm()}
        if cmd == "resume":
            return {"ok": True, "state": self._resume_vm()}
        raise ControlError(f"unknown command {cmd!r}")

    def _pause_vm(self) -> str:
        vm = self.vm
        if vm is None:
            raise ControlError("the VM is not running yet")
        with self._pause_lock:
            if self._pause is None:
                pause = _Pause(self)
                held = vm.submit(pause.hold)
                deadline = time.monotonic() + 10
                while not pause.held.wait(0.05):
                    if held.done():  # the VM ended before its loop got there
                        held.result()
                    if time.monotonic() > deadline:
                        pause.resume()
                        raise ControlError("the VM did not pause within 10 s")
                self._pause = pause
                self.state = "paused"
        return self.state

    def _resume_vm(self) -> str:
        with self._pause_lock:
            pause, self._pause = self._pause, None
            if pause is not None:
                pause.resume()
                if self.state == "paused":
                    self.state = "running"
        return self.state

    def guest_uptime(self) -> float | None:
        """Seconds of guest time since the guest booted (it stands still while paused)."""
        vm = self.vm
        if vm is None:
            return None
        pause = self._pause
        if pause is not None and pause.frozen_ticks is not None:
            ticks = pause.frozen_ticks
        else:
            ticks = vm.host_ticks()
        from pocketvm.board.memmap import TIMEBASE_FREQUENCY

        return round(ticks / TIMEBASE_FREQUENCY, 3)

    def describe(self) -> dict[str, Any]:
        vm = self.vm
        out: dict[str, Any] = {
            "name": self.name,
            "pid": os.getpid(),
            "state": self.state,
            "started": self.started,
            "uptime": round(time.time() - self.started, 1),
        }
        if vm is not None:
            out.update(memory=vm.config.memory, cpus=vm.config.cpus, disks=[str(d.path) for d in vm.config.disks],
                       guest_uptime=self.guest_uptime())
        out.update(self.info)
        return out

    def _capture(self, directory: Path, stop: bool) -> Any:
        """Runs on the VM's thread, between slices: the VM is paused.

        Returns the `Capture` to finish, or with `stop` the finished result
        (the process is about to end, so it is sealed right here)."""
        from pocketvm.machine import ExitStatus
        from pocketvm.snapshot.save import capture

        vm = self.vm
        t0 = time.monotonic_ns()
        previous = self.state  # "running", or "paused" when taken inside a pause
        self.state = "saving"
        try:
            snap = capture(vm, directory)
            if stop:
                result = snap.finish()
                self.state = "stopping"
                vm.request_stop(ExitStatus(0, "snapshot", f"stopped after saving a snapshot to {result.path}"))
                return result
            return snap
        finally:
            if self.state == "saving":
                self.state = previous
            vm.exclude_pause(time.monotonic_ns() - t0)


class _Pause:
    """A paused VM: its run loop waits in `hold` (a submitted call) until `resume`.

    Work for the paused VM (a snapshot) is handed to `call` and runs in the
    loop's thread, as a submitted call would. Only the time spent waiting is
    hidden from the guest's clock (a capture hides its own)."""

    _RESUME = object()

    def __init__(self, server: ControlServer):
        self.server = server
        self.held = threading.Event()
        self.frozen_ticks: int | None = None
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def call(self, fn: Any) -> Any:
        from concurrent.futures import Future

        fut: Future = Future()
        self._work.put((fn, fut))
        return fut

    def resume(self) -> None:
        self._work.put(self._RESUME)

    def hold(self) -> None:
        vm = self.server.vm
        self.frozen_ticks = vm.host_ticks()
        self.held.set()
        waited = 0
        try:
            while self.server.state != "stopping" and not self.server._closed:
                t0 = time.monotonic_ns()
                try:
                    item = self._work.get(timeout=0.5)
                except queue.Empty:
                    item = None
                waited += time.monotonic_ns() - t0
                if item is self._RESUME:
                    break
                if item is not None:
                    fn, fut = item
                    try:
                        fut.set_result(fn())
                    except Exception as e:
                        fut.set_exception(e)
        except BaseException as e:
            # A termination signal (raised in this, the main, thread) must end
            # the VM: the run loop would file it under this call's result.
            from pocketvm.machine import ExitStatus

            signum = getattr(e, "signum", 2 if isinstance(e, KeyboardInterrupt) else 15)
            vm.request_stop(ExitStatus(128 + signum, "terminated", f"terminated by signal {signum} while paused"))
        finally:
            vm.exclude_pause(waited)
            self.frozen_ticks = None


# --- client side -----------------------------------------------------------------


def request(name: str, req: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    """Send one request to the VM called `name`; ControlError on any failure."""
    check_name(name)
    path = socket_path(name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no running VM named {name!r} (see `pocket ls`)") from None
        except OSError as e:
            raise ControlError(f"cannot reach VM {name!r}: {e.strerror}") from None
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
            line = _recv_line(s)
        except socket.timeout:
            raise ControlError(f"VM {name!r} does not answer") from None
        except (OSError, ValueError) as e:
            raise ControlError(f"lost the connection to VM {name!r}: {e}") from None
    finally:
        s.close()
    if not line:
        raise ControlError(f"VM {name!r} closed the connection without answering (did it stop?)")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"VM {name!r} sent a malformed answer") from None
    if not isinstance(reply, dict):
        raise ControlError(f"VM {name!r} sent a malformed answer")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "request failed"))
    return reply


def list_vms() -> list[dict[str, Any]]:
    """Every running VM's info; sockets of dead VMs are removed on the way."""
    d = runtime_dir()
    try:
        entries = sorted(p for p in d.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ControlError(f"cannot list {d}: {e.strerror}") from None
    vms = []
    for path in entries:
        name = path.name[: -len(SUFFIX)]
        if not NAME_RE.fullmatch(name):
            continue
        try:
            before = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISSOCK(before.st_mode):
            continue
        alive = _probe(path)
        if alive is False:
            try:
                # Not if a new VM took the name over in the meantime.
                if path.lstat().st_ino == before.st_ino:
                    path.unlink()
                    _reap(name)
            except OSError:
                pass
            continue
        try:
            vms.append(request(name, {"cmd": "info"}, timeout=2.0))
        except ControlError:
            vms.append({"name": name, "state": "not responding"})
    return vms

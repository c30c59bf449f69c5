"""The launcher process: warm up once, then fork one VM process per request.

    python -m pocketvm.launcher.server [--idle-timeout SECONDS]

(`pocket launcher start` runs it detached.) It stays single-threaded, so
fork() is safe: each child starts with the parent's imported modules and
loaded CPU core and nothing half-done. A child takes over the client's
stdin/stdout/stderr, working directory, umask and environment, and runs the
client's command line through the ordinary CLI, so a launched command
behaves exactly like one run in its own process. Its exit status goes back
to the client over the connection; if it is killed, the launcher (its
parent) reports the signal instead.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import resource
import select
import selectors
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pocketvm
from setproctitle import setproctitle

from pocketvm.launcher.client import RLIMITS
from pocketvm.launcher.protocol import LineReader, send, socket_path

# Environment variables that change how code already loaded here behaves
# (numba reads its settings at import; the prebuilt core is chosen at
# start): a request with other values is
# declined and runs in its own process instead.
_FROZEN_ENV_PREFIXES = ("NUMBA_", "PYTHON", "POCKETVM_NATIVE_CORE")
_EX_SOFTWARE = 70
REQUEST_TIMEOUT = 2.0  # seconds a client has to send its request: one stuck client must not hold up the others


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} launcher[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def source_stamp() -> tuple[tuple[str, int, int], ...]:
    """Path, mtime and size of every pocketvm source file: a change means
    this process runs old code, and must not launch anything."""
    root = Path(pocketvm.__file__).parent
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                entries.append((path, st.st_mtime_ns, st.st_size))
    return tuple(sorted(entries))


def frozen_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_FROZEN_ENV_PREFIXES)}


def warm_up() -> None:
    """Import what a VM needs and load the compiled CPU core."""
    from pocketvm.cpu import native

    native.prefer()  # the prebuilt core, if built: then neither the launcher nor its VMs load numba
    import pocketvm.cli  # noqa: F401
    import pocketvm.console  # noqa: F401
    import pocketvm.control  # noqa: F401
    import pocketvm.snapshot.restore  # noqa: F401
    import pocketvm.snapshot.save  # noqa: F401
    import pocketvm.snapshot.workdisks  # noqa: F401
    # `pocket run --image`: image lookup, overlays, qcow2 chains, the
    # template's devices (rich alone costs ~50 ms to import).
    import pocketvm.backends.open_disk  # noqa: F401
    import pocketvm.backends.qcow2_create  # noqa: F401
    import pocketvm.imagevm  # noqa: F401
    import pocketvm.images.debian  # noqa: F401
    import pocketvm.images.template  # noqa: F401
    import pocketvm.snapshot.basechain  # noqa: F401
    import pocketvm.web.attach  # noqa: F401
    # A sandbox's devices (restored from a template): imported by each VM
    # otherwise, and compiled each time where no .pyc is written (~15 ms).
    import pocketvm.backends.qcow2  # noqa: F401
    import pocketvm.backends.vsock_unix  # noqa: F401
    import pocketvm.devices.virtio_blk  # noqa: F401
    import pocketvm.devices.virtio_mmio  # noqa: F401
    import pocketvm.devices.virtio_net  # noqa: F401
    import pocketvm.devices.virtio_rng  # noqa: F401
    import pocketvm.devices.virtio_vsock  # noqa: F401
    from pocketvm.machine import load_cpu_core

    load_cpu_core(released=True)  # its VMs may turn tier 1 on


class Launcher:
    def __init__(self, idle_timeout: float | None):
        self.idle_timeout = idle_timeout
        self.started = time.time()
        self.last_active = time.monotonic()
        self.launched = 0
        self.children: dict[int, socket.socket] = {}  # VM pid -> its client's connection
        self.stamp = source_stamp()
        self.env = frozen_env(dict(os.environ))
        self.path = socket_path()
        self.stopping = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()

    # --- lifecycle -------------------------------------------------------------------
    def bind(self) -> None:
        from pocketvm.control import ensure_runtime_dir

        ensure_runtime_dir()
        try:
            self._sock.bind(str(self.path))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
                raise SystemExit(f"another launcher already listens on {self.path}")
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # left behind by a launcher that died
            finally:
                probe.close()
            self.path.unlink(missing_ok=True)
            self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._ino = os.stat(self.path).st_ino
        self._sock.listen(64)

    def serve(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            fd.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd hears of it
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        log(f"ready on {self.path}")
        while not self.stopping:
            for key, _ in self._sel.select(timeout=self._select_timeout()):
                if key.fileobj is self._sock:
                    self._accept()
                else:
                    self._drain_wakeups()
            self._reap()
            if self._idle_too_long():
                log(f"idle for {self.idle_timeout:.0f} s: stopping")
                self.stopping = True
        self.close()

    def _select_timeout(self) -> float | None:
        if self.idle_timeout is None:
            return None
        return max(0.1, self.idle_timeout - (time.monotonic() - self.last_active))

    def _idle_too_long(self) -> bool:
        return (
            self.idle_timeout is not None
            and not self.children
            and time.monotonic() - self.last_active >= self.idle_timeout
        )

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def close(self) -> None:
        """Stop listening. VMs already launched keep running."""
        try:
            if os.stat(self.path).st_ino == self._ino:
                self.path.unlink()
        except (FileNotFoundError, AttributeError):
            pass
        self._sock.close()
        for conn in self.children.values():
            conn.close()
        log(f"stopped; {len(self.children)} VM(s) it started still run")

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "started": self.started,
            "launched": self.launched,
            "running": sorted(self.children),
            "python": sys.executable,
            "rss_bytes": _rss_bytes(),
        }

    # --- requests --------------------------------------------------------------------
    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                # The child could not say how it ended; say it for it.
                sig = os.WTERMSIG(status)
                try:
                    send(conn, {"exit": 128 + sig, "signal": sig})
                except OSError:
                    pass
            conn.close()
            self.last_active = time.monotonic()

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        reader = LineReader(conn)
        keep = False
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            req = reader.read()
            if req is None:
                return
            cmd = req.get("cmd")
            if cmd == "ping":
                send(conn, self.status())
            elif cmd == "stop":
                send(conn, self.status())
                self.stopping = True
            elif cmd == "launch":
                self.last_active = time.monotonic()  # status requests do not keep it alive
                keep = self._launch(conn, req, reader)
            else:
                send(conn, {"ok": False, "error": f"unknown command {cmd!r}"})
        except (OSError, ValueError) as e:
            log(f"bad request: {e}")
        except Exception:  # a bug must not take the launcher down; the client runs the command itself
            log(f"internal error:\n{traceback.format_exc()}")
        finally:
            for fd in reader.fds:  # the child has its own copies
                os.close(fd)
            if not keep:
                conn.close()

    def _decline_reason(self, req: dict[str, Any]) -> str | None:
        if not isinstance(req.get("argv"), list) or not all(isinstance(a, str) for a in req["argv"]):
            return "malformed command line"
        if not isinstance(req.get("env"), dict) or not isinstance(req.get("cwd"), str):
            return "malformed request"
        python = req.get("python")
        # .venv/bin/python and .venv/bin/python3 are one interpreter in one environment.
        if not isinstance(python, str) or os.path.realpath(python) != os.path.realpath(sys.executable) or req.get("prefix") != sys.prefix:
            return f"another Python ({python}); this launcher runs {sys.executable}"
        if frozen_env(req["env"]) != self.env:
            return "other NUMBA_/PYTHON settings in the environment"
        reason = _limits_reason(req)
        if reason is not None:
            return reason
        if source_stamp() != self.stamp:
            self.stopping = True  # everything it would launch from now on is out of date
            log("pocketvm's sources changed since the start: stopping")
            return "pocketvm's sources changed since the launcher started"
        if threading.active_count() != 1:
            return "the launcher is not single-threaded (internal error)"
        return None

    def _launch(self, conn: socket.socket, req: dict[str, Any], reader: LineReader) -> bool:
        reason = self._decline_reason(req)
        if reason is None and _hung_up(conn):
            # It gave up waiting (the launcher was stopped or very slow) and
            # runs the command itself: launching it too would start it twice.
            reason = "the client has gone"
        if reason is None:
            send(conn, {"send": "fds"})
            if reader.read() is None or len(reader.fds) != 3:
                reason = "stdin, stdout and stderr were not passed"
        if reason is not None:
            argv = req.get("argv")
            what = shlex.join(map(str, argv))[:200] if isinstance(argv, list) else "?"
            log(f"declined {what!r}: {reason}")
            send(conn, {"declined": reason})
            return False
        fds = reader.fds
        conn.settimeout(None)  # from here on the connection lives as long as the VM
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = _EX_SOFTWARE
            try:
                self._become_child(conn, fds)
                code = run_command(conn, req)
            finally:
                os._exit(code)
        self.launched += 1
        self.children[pid] = conn
        try:
            send(conn, {"pid": pid})
        except OSError:
            pass  # the client is gone; the child notices and ends
        return True

    def _become_child(self, conn: socket.socket, fds: list[int]) -> None:
        """Drop everything of the launcher's in the fresh child."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # A process group of its own: signals aimed at the launcher's group
        # (e.g. a `kill` of its session) do not take running VMs with them.
        os.setpgid(0, 0)
        self._sel.close()
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        for other in self.children.values():
            other.close()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)


def _hung_up(conn: socket.socket) -> bool:
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))


def _limits_reason(req: dict[str, Any]) -> str | None:
    """Why the child could not take over the client's limits and niceness, if it could not.

    A process may lower its limits and raise its niceness, never the other
    way round: a client with a higher hard limit or a lower niceness than
    the launcher's runs in its own process.
    """
    limits = req.get("rlimits")
    if not isinstance(limits, dict) or set(limits) != set(RLIMITS):
        return "malformed resource limits"
    for name, value in limits.items():
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
            return "malformed resource limits"
        _, hard = resource.getrlimit(getattr(resource, name))
        if _above(value[1], hard):
            return f"{name} above the launcher's"
    nice = req.get("nice")
    if not isinstance(nice, int) or nice < os.getpriority(os.PRIO_PROCESS, 0):
        return "higher priority than the launcher's"
    return None


def _above(a: int, b: int) -> bool:
    infinity = resource.RLIM_INFINITY
    return a != b and (a == infinity or (b != infinity and a > b))


def _take_limits(req: dict[str, Any]) -> None:
    for name, (soft, hard) in req["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.setpriority(os.PRIO_PROCESS, 0, req["nice"])


def run_command(conn: socket.socket, req: dict[str, Any]) -> int:
    """In the child: become the client's `pocket ARGV` and run it; its exit status."""
    code = _EX_SOFTWARE
    try:
        _reopen_stdio()
        try:
            os.chdir(req["cwd"])
        except OSError as e:
            print(f"pocket: error: cannot enter the working directory {req['cwd']}: {e.strerror}", file=sys.stderr)
            return 1
        os.umask(int(req.get("umask", 0o022)))
        _take_limits(req)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in req["env"].items()})
        threading.Thread(target=_end_with_client, args=(conn,), name="launcher-client", daemon=True).start()
        sys.argv = ["pocket", *req["argv"]]
        setproctitle(shlex.join(sys.argv))  # in `ps`, the command that was typed, not the launcher's
        from pocketvm.cli import entry

        entry()
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        print("pocket: error: interrupted", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        try:
            send(conn, {"exit": code})
        except OSError:
            pass
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _reopen_stdio() -> None:
    """sys.std* of the launcher wrap its log file; make them the client's."""
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8", errors="surrogateescape")
    sys.stdout = io.TextIOWrapper(
        io.open(1, "wb", closefd=False), encoding="utf-8", errors="surrogateescape", line_buffering=os.isatty(1)
    )
    sys.stderr = io.TextIOWrapper(
        io.open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _end_with_client(conn: socket.socket) -> None:
    """The client (the `pocket` command the user sees) went away: end the VM
    as a hang-up would end a VM running in its own process."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGHUP)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pocketvm.launcher.server", description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=None, help="exit after this many idle seconds")
    args = parser.parse_args(argv)
    setproctitle("pocket launcher")
    t0 = time.monotonic()
    warm_up()
    launcher = Launcher(args.idle_timeout)
    try:
        launcher.bind()
    except OSError as e:
        log(f"cannot listen on {launcher.path}: {e}")
        return 1
    log(f"warmed up in {time.monotonic() - t0:.2f} s")
    launcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The client side: hand a command to the launcher, or talk to it.

Imported by every `pocket` command before anything else, so it uses the
standard library only and does nothing when no launcher runs (one failed
connect() on a Unix socket).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from pocketvm.launcher.protocol import ENV_SWITCH, LineReader, log_path, send, socket_path

# Commands that start a VM, and so gain from a warm process.
LAUNCHED_COMMANDS = ("run", "restore")
# Signals the user may send to the foreground `pocket`: they are meant for the VM.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# A launcher that has not answered by then is stopped or stuck: run the command here.
REPLY_TIMEOUT = 5.0
# Once it has our descriptors it forks the VM: running the command here as
# well after a slow answer (a loaded host) would start it twice (a second
# VM, or one refused because the first holds its name), so wait longer.
FORK_TIMEOUT = 120.0
# Resource limits (`ulimit`) a launched VM takes over from the command.
RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_MEMLOCK",
           "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS", "RLIMIT_STACK")  # fmt: skip


class LauncherError(Exception):
    """One-line message for the user."""


def wants_launcher(argv: list[str]) -> bool:
    """`argv` (without the program name) starts a VM and the launcher is not switched off."""
    if os.environ.get(ENV_SWITCH, "").lower() in ("off", "0", "no", "false"):
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in LAUNCHED_COMMANDS


def _connect(timeout: float | None) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(socket_path()))
    except OSError:
        s.close()
        return None
    return s


def launch(argv: list[str]) -> int | None:
    """Run `pocket ARGV` in a process forked by the launcher, proxying for it
    here until it ends; its exit status. None: no launcher took it (not
    running, or declined), so the caller runs the command itself."""
    conn = _connect(timeout=REPLY_TIMEOUT)
    if conn is None:
        return None
    request = {
        "cmd": "launch",
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": _umask(),
        "rlimits": rlimits(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "python": sys.executable,
        "prefix": sys.prefix,
    }
    reader = LineReader(conn)
    try:
        send(conn, request)
        reply = reader.read()
        # The terminal goes over only once the launcher takes the command:
        # descriptors in flight to a stopped launcher would keep our pipes
        # open after we gave up and ran the command ourselves.
        if reply is not None and reply.get("send") == "fds":
            send(conn, {"fds": [0, 1, 2]}, [0, 1, 2])
            conn.settimeout(FORK_TIMEOUT)
            reply = reader.read()
    except (OSError, ValueError):  # e.g. a closed stdin cannot be passed on
        conn.close()
        return None
    if reply is None or not isinstance(reply.get("pid"), int):
        conn.close()
        return None
    conn.settimeout(None)
    return _proxy(conn, reader, reply["pid"])


def rlimits() -> dict[str, list[int]]:
    """This process's resource limits, which a launched VM takes over."""
    import resource

    return {name: list(resource.getrlimit(getattr(resource, name))) for name in RLIMITS}


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _proxy(conn: socket.socket, reader: LineReader, pid: int) -> int:
    saved_tty = _save_tty()

    def forward(signum: int, frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    try:
        while True:
            try:
                msg = reader.read()
            except (OSError, ValueError):
                msg = None
            if msg is None:
                _restore_tty(saved_tty)
                print(f"pocket: error: lost the VM process {pid} without an exit status", file=sys.stderr)
                return 1
            code = msg.get("exit")
            if isinstance(code, int):
                if msg.get("signal"):
                    # It died without restoring the terminal or printing why.
                    _restore_tty(saved_tty)
                    name = _signal_name(int(msg["signal"]))
                    print(f"pocket: error: the VM process {pid} was killed by {name}", file=sys.stderr)
                return code
    finally:
        conn.close()


def _save_tty() -> Any:
    try:
        import termios

        return termios.tcgetattr(0) if os.isatty(0) else None
    except (OSError, ImportError):
        return None


def _restore_tty(saved: Any) -> None:
    if saved is not None:
        import termios

        try:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        except OSError:
            pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --- managing the launcher -----------------------------------------------------------


def request(cmd: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """A one-shot request; None when no launcher answers."""
    conn = _connect(timeout)
    if conn is None:
        return None
    try:
        send(conn, {"cmd": cmd})
        reply = LineReader(conn).read()
    except (OSError, ValueError):
        return None
    finally:
        conn.close()
    return reply if reply is not None and reply.get("ok") else None


def start(idle_timeout: float | None = None, wait: float = 600.0) -> tuple[dict[str, Any], bool]:
    """Start the launcher unless one runs; (its status, whether it was started now)."""
    info = request("ping")
    if info is not None:
        return info, False
    _check_not_stuck()
    from pocketvm.control import ensure_runtime_dir

    ensure_runtime_dir()
    cmd = [sys.executable, "-m", "pocketvm.launcher.server"]
    if idle_timeout is not None:
        cmd += ["--idle-timeout", str(idle_timeout)]
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}
    with open(log_path(), "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
        log.flush()
        # A session of its own: it outlives this command and its terminal.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True, env=env
        )
    t0 = time.monotonic()
    deadline = t0 + wait
    told = False
    while time.monotonic() < deadline:
        if not told and time.monotonic() - t0 > 2.0:
            print("pocket: the launcher is loading the CPU core (compiling it the first time: up to a minute)...",
                  file=sys.stderr, flush=True)  # fmt: skip
            told = True
        if proc.poll() is not None:
            info = request("ping", timeout=1.0)
            if info is not None:  # another `launcher start` won the race
                return info, False
            raise LauncherError(f"the launcher did not start: {_last_log_line()} (log: {log_path()})")
        info = request("ping", timeout=1.0)
        if info is not None and info.get("pid") == proc.pid:
            return info, True
        time.sleep(0.05)
    proc.terminate()
    raise LauncherError(f"the launcher did not become ready within {wait:.0f} s (log: {log_path()})")


def _check_not_stuck() -> None:
    """LauncherError if a launcher holds the socket but does not answer."""
    conn = _connect(timeout=1.0)
    if conn is None:
        return
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    except OSError:
        pid = 0
    finally:
        conn.close()
    who = f"a launcher (pid {pid})" if pid else "a launcher"
    hint = f"; if it is stopped, `kill -CONT {pid}`, or end it with `kill {pid}`" if pid else ""
    raise LauncherError(f"{who} listens on {socket_path()} but does not answer{hint}")


def _last_log_line() -> str:
    try:
        lines = log_path().read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def stop(wait: float = 10.0) -> dict[str, Any] | None:
    """Stop the launcher (VMs it started keep running); its last status, None if none ran."""
    info = request("stop")
    if info is None:
        _check_not_stuck()
        return None
    pid = int(info["pid"])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has stopped all the same.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

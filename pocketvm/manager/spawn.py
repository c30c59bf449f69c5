"""Start one VM process: forked by the launcher when it takes the command
(warm: numba and the CPU core already loaded), else a process of its own.

Either way the VM runs an ordinary `pocket run|restore ...` command line, so
a sandbox is exactly what the CLI would start. A launched VM ends when the
connection that launched it closes (the launcher's rule): VMs forked for a
manager never outlive it. A VM in a process of its own is in a session of
its own and outlives a manager that dies; a restarted manager finds it again.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketvm.launcher.client import FORK_TIMEOUT, RLIMITS
from pocketvm.launcher.protocol import ENV_SWITCH, LineReader, send, socket_path
from pocketvm.manager.harden import ENV as HARDEN_ENV

LAUNCH_TIMEOUT = 5.0


@dataclass
class VMProcess:
    """A running VM process and how to learn its end."""

    pid: int
    how: str  # "launcher" or "process"
    _conn: socket.socket | None = None
    _popen: subprocess.Popen | None = None
    _exit: int | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> int:
        """Block until the process has ended; its exit status (128+N for a signal)."""
        if self._done.is_set():
            return self._exit if self._exit is not None else -1
        if self._popen is not None:
            code = self._popen.wait()
            self._exit = 128 - code if code < 0 else code
        elif self._conn is not None:
            self._exit = _wait_launched(self._conn)
            _wait_pid_gone(self.pid)
        else:
            _wait_pid_gone(self.pid)
            self._exit = -1
        self._done.set()
        return self._exit

    def release(self) -> None:
        """Let go of the launcher's connection (that ends a launched VM)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass


def _wait_launched(conn: socket.socket) -> int:
    reader = LineReader(conn)
    code = -1
    try:
        while True:
            msg = reader.read()
            if msg is None:
                break
            if isinstance(msg.get("exit"), int):
                code = int(msg["exit"])
    except (OSError, ValueError):
        pass
    try:
        conn.close()
    except OSError:
        pass
    return code


def _wait_pid_gone(pid: int) -> None:
    """Wait for a process that is not our child (pidfd: no polling, no pid reuse race)."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def adopt(pid: int) -> VMProcess:
    """A VM process started by an earlier manager."""
    return VMProcess(pid, "adopted")


def start(argv: list[str], log_path: Path, rlimits: dict[str, tuple[int, int]], nice: int,
          use_launcher: bool = True) -> VMProcess:
    """Run `pocket ARGV` as a VM process; stdout (the serial console) goes
    nowhere, stderr (pocket's own messages) to `log_path`."""
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out, open(log_path, "ab") as err:
        fds = [null_in.fileno(), null_out.fileno(), err.fileno()]
        if use_launcher:
            proc = _via_launcher(argv, fds, rlimits, nice)
            if proc is not None:
                return proc
        env = {**os.environ, ENV_SWITCH: "off", HARDEN_ENV: "1"}

        def limit() -> None:  # in the child, before exec: only system calls
            for name, value in rlimits.items():
                resource.setrlimit(getattr(resource, name), value)
            if nice:
                os.nice(nice)

        popen = subprocess.Popen([sys.executable, "-m", "pocketvm", *argv], stdin=null_in, stdout=null_out,
                                 stderr=err, env=env, start_new_session=True, close_fds=True,
                                 preexec_fn=limit)  # fmt: skip
        return VMProcess(popen.pid, "process", _popen=popen)


def _via_launcher(argv: list[str], fds: list[int], rlimits: dict[str, tuple[int, int]], nice: int) -> VMProcess | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(LAUNCH_TIMEOUT)
    try:
        conn.connect(str(socket_path()))
    except OSError:
        conn.close()
        return None
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in RLIMITS}
    for name, value in rlimits.items():
        limits[name] = list(value)
    request: dict[str, Any] = {
        "cmd": "launch", "argv": argv, "cwd": "/", "env": {**os.environ, HARDEN_ENV: "1"}, "umask": 0o077, "rlimits": limits,
        "nice": os.getpriority(os.PRIO_PROCESS, 0) + nice, "python": sys.executable, "prefix": sys.prefix,
    }  # fmt: skip
    reader = LineReader(conn)
    try:
        send(conn, request)
        reply = reader.read()
        if reply is not None and reply.get("send") == "fds":
            send(conn, {"fds": [0, 1, 2]}, fds)
            conn.settimeout(FORK_TIMEOUT)  # it forks now: falling back after this could start the VM twice
            reply = reader.read()
    except (OSError, ValueError):
        conn.close()
        return None
    if reply is None or not isinstance(reply.get("pid"), int):
        conn.close()
        return None
    conn.settimeout(None)
    return VMProcess(int(reply["pid"]), "launcher", _conn=conn)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None

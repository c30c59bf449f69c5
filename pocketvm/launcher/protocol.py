"""What the launcher and its clients say to each other.

One connection per launched VM, JSON lines in both directions:

    client -> launcher   {"cmd": "launch", "argv": [...], "cwd": ..., "env": {...},
                          "umask": N, "rlimits": {...}, "nice": N, "python": ...}
    launcher -> client   {"send": "fds"}            it takes the command, or
                         {"declined": "why"}        run it yourself
    client -> launcher   {"fds": [0, 1, 2]}         with those fds attached (SCM_RIGHTS)
    launcher -> client   {"pid": N}                 the VM process runs, or
                         {"declined": "why"}
    VM -> client         {"exit": N}                the command's exit status
    launcher -> client   {"exit": N, "signal": S}   the VM process was killed

and one-shot requests: {"cmd": "ping"} / {"cmd": "stop"} -> {"ok": true, ...}.

Only the standard library is imported here: the client side runs before
anything heavy is loaded.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pocketvm.paths import runtime_dir

MAX_MESSAGE = 1 << 20  # a request carries the whole environment
SOCKET_NAME = ".launcher.sock"  # a leading dot: no VM name can clash with it
LOG_NAME = ".launcher.log"
ENV_SWITCH = "POCKETVM_LAUNCHER"  # "off": never hand commands to a launcher


def socket_path() -> Path:
    return runtime_dir() / SOCKET_NAME


def log_path() -> Path:
    return runtime_dir() / LOG_NAME


def send(conn: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


class LineReader:
    """JSON objects, one per line, from a stream socket (and any fds sent with them)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self._buf = bytearray()
        self.fds: list[int] = []

    def read(self) -> dict[str, Any] | None:
        """The next object; None at end of stream. ValueError if malformed."""
        while b"\n" not in self._buf:
            data, fds, _, _ = socket.recv_fds(self.conn, 65536, 8)
            self.fds += fds
            if not data:
                if self._buf:
                    raise ValueError("connection closed inside a message")
                return None
            self._buf += data
            if len(self._buf) > MAX_MESSAGE:
                raise ValueError("message too long")
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("message is not a JSON object")
        return obj

"""`pocketvm.Sandbox`: a VM made for running commands and moving files,
thrown away at the end.

Each process that uses the API has one in-process manager (no server
needed): it starts VMs (forked by the launcher when `pocket launcher start`
runs, which makes a create take about a tenth of a second), enforces each
sandbox's time-to-live, and deletes every sandbox left open when the process
exits. Commands and files go through the guest agent (channel.py).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pocketvm.manager import channel as C
from pocketvm.manager.core import Manager, ManagerError, NotFound
from pocketvm.manager.spec import parse

_manager: Manager | None = None
_manager_lock = threading.Lock()


def _process_manager() -> Manager:
    """The manager of this process's sandboxes (made on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            from pocketvm.launcher.protocol import ENV_SWITCH
            from pocketvm.paths import runtime_dir

            # Each create asks the launcher first (one failed connect when none runs).
            launcher = os.environ.get(ENV_SWITCH, "").lower() not in ("off", "0", "no", "false")
            home = runtime_dir() / f".api-{os.getpid()}"
            _manager = Manager(home, max_vms=int(os.environ.get("POCKETVM_MAX_SANDBOXES", "64")),
                               use_launcher=launcher, persist=False)  # fmt: skip
            atexit.register(_close_manager)
        return _manager


def _close_manager() -> None:
    global _manager
    if _manager is not None:
        import shutil

        _manager.close()
        shutil.rmtree(_manager.home, ignore_errors=True)
        _manager = None


@dataclass
class Result:
    """A finished command: its output (text, decoded as UTF-8) and exit code."""

    stdout: str
    stderr: str
    exit_code: int
    signal: int | None = None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Files:
    """`sandbox.files`: read and write guest files."""

    def __init__(self, sandbox: Sandbox):
        self._sb = sandbox

    def read(self, path: str) -> bytes:
        with self._sb._channel() as ch:
            return b"".join(self._sb._guard(lambda: list(ch.read_file(path))))

    def read_text(self, path: str) -> str:
        return self.read(path).decode()

    def write(self, path: str, data: bytes | str | Iterable[bytes], mode: int = 0o644) -> int:
        """Create or replace a guest file; the number of bytes written."""
        if isinstance(data, str):
            data = data.encode()
        pieces: Iterable[bytes] = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        with self._sb._channel() as ch:
            return self._sb._guard(lambda: ch.write_file(path, pieces, mode))


class Sandbox:
    """A throw-away VM. `timeout` is its time-to-live in seconds (None: until closed)."""

    def __init__(self, image: str | None = "debian", *, template: str | Path | None = None,
                 snapshot: str | Path | None = None, memory: str | None = None, cpus: int | None = None,
                 network: bool = False, allow: Iterable[str] = (), timeout: float | None = 300,
                 env: dict[str, str] | None = None, name: str | None = None, host_memory: str | None = None,
                 cpu_share: float = 0.0):  # fmt: skip
        body: dict[str, object] = {"network": network, "allow": list(allow), "env": dict(env or {}),
                                   "cpu_share": cpu_share}  # fmt: skip
        if template is not None:
            body["template"] = str(Path(template).absolute())
        elif snapshot is not None:
            body["snapshot"] = str(Path(snapshot).absolute())
        else:
            body["image"] = image or "debian"
        for key, value in (("memory", memory), ("cpus", cpus), ("ttl", timeout), ("name", name),
                           ("host_memory", host_memory)):  # fmt: skip
            if value is not None:
                body[key] = value
        self._manager = _process_manager()
        self.info = self._manager.create(parse(body))
        self.name: str = self.info["name"]
        self.files = Files(self)
        self._closed = False

    @classmethod
    def restore(cls, directory: str | Path, **kwargs: object) -> Sandbox:
        """A new sandbox from a snapshot made with `snapshot()`."""
        return cls(snapshot=directory, **kwargs)  # type: ignore[arg-type]

    # --- commands ----------------------------------------------------------------------
    def run_stream(self, command: C.Command, *, env: dict[str, str] | None = None, cwd: str | None = None,
                   stdin: bytes | str | None = None, timeout: float | None = None) -> Iterator[C.Output | C.Exit]:
        """Run a command (argv list, or a string for /bin/sh -c); Output pieces as
        they come, then one Exit. Raises CommandTimeout, SandboxGone, ..."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        req = C.ExecRequest(command, {**self._call(self._manager.env), **(env or {})}, cwd, None, data, timeout)
        with self._channel() as ch:
            events = ch.stream(req)
            while True:
                try:
                    item = self._guard(lambda: next(events))
                except StopIteration:
                    return
                yield item

    def run(self, command: C.Command, *, env: dict[str, str] | None = None, cwd: str | None = None,
            stdin: bytes | str | None = None, timeout: float | None = None) -> Result:
        """Run a command to its end. A non-zero exit code is a Result, not an error."""
        out, err = bytearray(), bytearray()
        end = C.Exit(-1)
        try:
            for item in self.run_stream(command, env=env, cwd=cwd, stdin=stdin, timeout=timeout):
                if isinstance(item, C.Output):
                    (out if item.stream == "stdout" else err).extend(item.data)
                else:
                    end = item
        except C.CommandTimeout as e:
            raise C.CommandTimeout(str(e), bytes(out), bytes(err)) from None
        return Result(out.decode(errors="replace"), err.decode(errors="replace"), end.exit_code, end.signal,
                      bytes(out), bytes(err))  # fmt: skip

    # --- the VM ------------------------------------------------------------------------
    def snapshot(self, directory: str | Path) -> Path:
        """Save the sandbox to a new directory (it keeps running); `Sandbox.restore` starts copies."""
        reply = self._call(self._manager.snapshot, str(Path(directory).absolute()))
        return Path(reply.get("path", directory))

    def pause(self) -> None:
        self._call(self._manager.pause)

    def resume(self) -> None:
        self._call(self._manager.resume)

    def metrics(self) -> dict[str, object]:
        """Host CPU seconds, RSS and PSS of the VM process, guest uptime."""
        return self._call(self._manager.metrics)

    def close(self) -> None:
        """Kill the VM and discard its disks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._manager.delete(self.name)
        except NotFound:
            pass

    kill = close

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sandbox {self.name}{' closed' if self._closed else ''}>"

    # --- plumbing ----------------------------------------------------------------------
    def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        if self._closed:
            raise C.SandboxGone(f"sandbox {self.name} is closed")
        try:
            return fn(self.name, *args)
        except NotFound:
            raise C.SandboxGone(f"sandbox {self.name} has ended (closed, expired or crashed)") from None

    def _channel(self) -> C.GuestChannel:
        vsock = self._call(self._manager.vsock_path)
        return _Closing(C.open_channel(vsock))

    def _guard(self, fn):  # type: ignore[no-untyped-def]
        """Run a channel call; a failure because the VM ended becomes SandboxGone."""
        try:
            return fn()
        except C.CommandTimeout:
            raise
        except C.GuestError as e:
            # A channel breaks a moment before the manager has seen the VM end.
            for _ in range(20):
                if self._closed or self._manager.is_gone(self.name):
                    raise C.SandboxGone(f"sandbox {self.name} ended: {e}") from None
                time.sleep(0.1)
            raise


class _Closing:
    def __init__(self, ch: C.GuestChannel):
        self.ch = ch

    def __enter__(self) -> C.GuestChannel:
        return self.ch

    def __exit__(self, *exc: object) -> None:
        self.ch.close()


__all__ = ["Files", "ManagerError", "Result", "Sandbox"]

"""The GuestChannel over pocketvm's guest agent (pocketvm.agent's client).

Translates the agent client's calls and errors into the sandbox layers'
vocabulary (channel.py): output pieces then one Exit, CommandTimeout,
SandboxGone-or-AgentUnavailable, GuestFileError. Files stream through a
bounded queue, so a 64 MiB transfer never sits whole in memory here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from pocketvm.agent import client as A
from pocketvm.manager import channel as C

# One agent client per VM (keyed by its vsock socket and that socket's
# inode: a later VM of the same name has a new one), kept so that its
# connections are reused from one channel to the next. Present means the
# agent has accepted a connection once: later channels do not wait for it.
_clients: dict[str, A.AgentClient] = {}
_clients_lock = threading.Lock()
MAX_CLIENTS = 256  # the least recently made are dropped (a VM that ended leaves its own)
QUEUE_PIECES = 8
# Files move checked by size, not by a checksum of their data: in the
# emulated guest Adler-32 alone costs about as much as the transfer (64 MiB
# downloads at 30 MiB per VM CPU second with it, 75 without, when the agent
# can sendfile; uploads 16 against 22). vsock is a lossless in-order stream;
# the host client still checks each frame, the announced size and that the
# agent's atomic rename happened. A caller wanting a digest uses the agent
# client's `checksum=` directly.
FILE_CHECKSUM = A.NO_CHECKSUM


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except A.RemoteError as e:
        raise C.GuestFileError(f"{what}: {e}") from None
    except (A.AgentProtocolError, A.ChecksumMismatch) as e:
        raise C.AgentProtocolError(f"{what}: {e}") from None
    except (A.AgentUnavailable, A.AgentTimeout) as e:
        raise C.AgentUnavailable(f"{what}: {e}") from None
    except A.AgentError as e:
        raise C.GuestError(f"{what}: {e}") from None


def _signal_number(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        return None


class _IterReader:
    """A binary file object reading from an iterable of byte strings
    (without copying what is left of a big piece at every read)."""

    def __init__(self, pieces: Iterable[bytes]):
        self._it = iter(pieces)
        self._piece = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        while not self._piece:
            try:
                self._piece = memoryview(next(self._it)).cast("B")
            except StopIteration:
                return b""
        if n < 0 or n >= len(self._piece):
            out, self._piece = bytes(self._piece), memoryview(b"")
        else:
            out, self._piece = bytes(self._piece[:n]), self._piece[n:]
        return out


class _QueueWriter:
    """A binary file object that hands what is written to a bounded queue."""

    def __init__(self, q: queue.Queue[Any], stop: threading.Event):
        self.q = q
        self.stop = stop

    def write(self, data: bytes) -> int:
        while not self.stop.is_set():
            try:
                self.q.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue
        raise A.AgentUnavailable("the reader went away")


class AgentChannel:
    def __init__(self, vsock: Path | None = None, timeout: float = 30.0, client: A.AgentClient | None = None):
        """The agent of the VM whose vsock socket is `vsock` (or any `client`);
        the first channel to a VM waits up to `timeout` for its agent."""
        if client is not None or vsock is None:
            self.client = client if client is not None else A.AgentClient(_no_connect)
            return
        try:  # a VM of the same name later has a new socket
            key = f"{vsock}:{os.stat(vsock).st_ino}"
        except OSError:
            key = str(vsock)
        with _clients_lock:
            known = _clients.get(key)
        if known is not None:
            self.client = known
            return
        self.client = A.AgentClient.for_vm_socket(vsock)  # (its own timeout is for an agent gone silent)
        with _mapped("the guest agent does not answer"):
            self._wait_up(timeout)
        with _clients_lock:
            _clients.setdefault(key, self.client)
            while len(_clients) > MAX_CLIENTS:
                _clients.pop(next(iter(_clients))).close()

    def _wait_up(self, timeout: float) -> None:
        """Until the agent accepts a connection, which is kept for the first
        request (just after a restore its guest may still be setting up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.warm()
                return
            except (A.AgentUnavailable, A.AgentTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def stream(self, request: C.ExecRequest) -> Iterator[C.Output | C.Exit]:
        with _mapped("exec"):
            running = self.client.exec_stream(request.command, env=request.env or None, cwd=request.cwd,
                                              user=request.user, stdin=request.stdin is not None,
                                              timeout=request.timeout)  # fmt: skip
        feeder = None
        if request.stdin is not None:
            data = request.stdin

            def feed() -> None:  # alongside the output: a command may write before it has read everything
                try:
                    running.write_stdin(data)
                    running.close_stdin()
                except (A.AgentError, OSError):
                    pass  # it ended without reading it all; its result says how

            feeder = threading.Thread(target=feed, name="exec-stdin", daemon=True)
            feeder.start()
        try:
            with _mapped("exec"):
                for name, data in running:
                    yield C.Output(name, data)
            result = running.result
            if result is None:
                raise C.AgentProtocolError("exec: the agent ended the command without a result")
            if result.timed_out:
                raise C.CommandTimeout(f"the command ran longer than {request.timeout:g} s and was killed")
            signum = _signal_number(result.signal)
            code = result.exit_code if result.exit_code is not None else 128 + (signum or 0)
            yield C.Exit(code, signum)
        finally:
            running.close()
            if feeder is not None:
                feeder.join(1.0)

    def read_file(self, path: str) -> Iterator[bytes]:
        q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_PIECES)
        stop = threading.Event()
        end = object()

        def pull() -> None:
            try:
                with _mapped(path):
                    self.client.download(path, _QueueWriter(q, stop), checksum=FILE_CHECKSUM)
                item: Any = end
            except BaseException as e:  # handed to the reader
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        t = threading.Thread(target=pull, name="download", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            t.join(5.0)

    def write_file(self, path: str, data: Iterable[bytes], mode: int = 0o644) -> int:
        pieces = data if not isinstance(data, list) or len(data) != 1 else data[0]
        with _mapped(path):
            if isinstance(pieces, (bytes, bytearray, memoryview)):  # whole: sent with its size and checksum
                reply = self.client.upload(bytes(pieces), path, mode=mode, checksum=FILE_CHECKSUM)
            else:
                reply = self.client.upload(_IterReader(pieces), path, mode=mode,  # type: ignore[arg-type]
                                            checksum=FILE_CHECKSUM)
        return int(reply.get("size", 0))

    def close(self) -> None:
        pass  # the VM's client keeps its idle connections for the next channel


def forget(vsock: Path) -> None:
    """Close the kept connections to a VM that is being deleted."""
    prefix = f"{vsock}:"
    with _clients_lock:
        gone = [k for k in _clients if k.startswith(prefix) or k == str(vsock)]
        clients = [_clients.pop(k) for k in gone]
    for c in clients:
        c.close()


def _no_connect(timeout: float) -> Any:
    raise A.AgentUnavailable("no vsock socket to reach the agent through")

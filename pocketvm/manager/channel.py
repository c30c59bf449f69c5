"""The channel into a running guest: run commands, move files.

Everything that reaches inside a sandbox (the REST API's exec and files, the
Python API's `run` and `files`, `pocket exec` and `pocket cp`) goes through a
`GuestChannel`, made by `open_channel` for a VM's vsock socket. Its one
implementation talks to pocketvm's guest agent (vsock port 52) through the
agent's host-side client (there is deliberately no fallback over the serial
console: a console cannot tell a command's output from the guest's own
messages, nor carry binary files).

Errors are typed: the caller can tell a command that ran too long from a
sandbox that went away from a guest whose agent misbehaves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Union

Command = Union[str, list[str]]  # a shell string (run by /bin/sh -c) or an argv


class GuestError(Exception):
    """Something went wrong inside or on the way into a guest (one-line message)."""


class AgentUnavailable(GuestError):
    """No guest agent answers: the guest has none, it is not up yet, or the
    host-side client is missing from this pocketvm."""


class SandboxGone(GuestError):
    """The VM ended (deleted, expired, crashed) while or before it was used."""


class CommandTimeout(GuestError):
    """The command ran longer than its timeout and was killed."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b""):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class AgentProtocolError(GuestError):
    """The guest's agent answered something that is not its protocol (a guest is untrusted)."""


class GuestFileError(GuestError):
    """A file operation failed in the guest (no such file, not allowed, ...)."""


@dataclass
class Output:
    """A piece of a running command's output."""

    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass
class Exit:
    """How a command ended: its exit code, or the signal that killed it."""

    exit_code: int
    signal: int | None = None


@dataclass
class ExecRequest:
    command: Command
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None
    stdin: bytes | None = None
    timeout: float | None = None


class GuestChannel(Protocol):
    """What the sandbox layers need from a guest."""

    def stream(self, request: ExecRequest) -> Iterator[Output | Exit]:
        """Run a command; its output as it comes, then exactly one Exit.
        CommandTimeout when its timeout passes (the command is killed)."""
        ...

    def read_file(self, path: str) -> Iterator[bytes]:
        """A guest file's content, in pieces."""
        ...

    def write_file(self, path: str, data: Iterable[bytes], mode: int = 0o644) -> int:
        """Create or replace a guest file; the bytes written."""
        ...

    def close(self) -> None: ...


# How long the first request to a VM waits for its guest agent (seconds): a
# VM just started may still be booting. A guest without an agent (a kernel of
# one's own) is only told after this wait, so it can be set shorter.
AGENT_WAIT = 30.0
AGENT_WAIT_ENV = "POCKETVM_AGENT_WAIT"


def agent_wait() -> float:
    """AGENT_WAIT, or the seconds that $POCKETVM_AGENT_WAIT says."""
    text = os.environ.get(AGENT_WAIT_ENV)
    if text is None:
        return AGENT_WAIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise GuestError(f"{AGENT_WAIT_ENV}={text!r}: give the seconds to wait for the guest agent (e.g. 30)")
    return seconds


def open_channel(vsock: Path, timeout: float | None = None) -> GuestChannel:
    """A channel to the agent of the VM whose vsock socket is `vsock`;
    waits up to `timeout` seconds for the agent to answer (`agent_wait()`)."""
    from pocketvm.manager.agent_channel import AgentChannel

    return AgentChannel(vsock, timeout=agent_wait() if timeout is None else timeout)

"""Talking to the pocketvm guest agent from the host (see docs/agent-protocol.md)."""

from pocketvm.agent.client import (
    AgentClient,
    AgentError,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
    ChecksumMismatch,
    ExecResult,
    ExecStream,
    RemoteError,
    wait_until_up,
)

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentProtocolError",
    "AgentTimeout",
    "AgentUnavailable",
    "ChecksumMismatch",
    "ExecResult",
    "ExecStream",
    "RemoteError",
    "wait_until_up",
]

"""Code that runs inside the guest, and what an image builder needs to install it.

`agent.py` is self-contained (Python 3 standard library only): an image
builder copies it to AGENT_PATH and the unit file to UNIT_PATH, and enables
the unit (a `multi-user.target.wants` symlink), so the agent listens on
vsock port AGENT_PORT from boot.
"""

from __future__ import annotations

from pathlib import Path

from pocketvm.guest.agent import DEFAULT_PORT as AGENT_PORT

_HERE = Path(__file__).parent
AGENT_PATH = "/usr/lib/pocketvm/agent.py"
UNIT_NAME = "pocketvm-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
UNIT_WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"


def agent_source() -> bytes:
    """The agent program, as it is installed in the guest."""
    return (_HERE / "agent.py").read_bytes()


def agent_unit() -> str:
    """The systemd unit that starts the agent at boot."""
    return (_HERE / UNIT_NAME).read_text()


__all__ = ["AGENT_PATH", "AGENT_PORT", "UNIT_NAME", "UNIT_PATH", "UNIT_WANTS_LINK", "agent_source", "agent_unit"]

"""The Python API: `pocketvm.Sandbox`, a throw-away VM in one call.

    with pocketvm.Sandbox(image="debian", network=True, timeout=300) as sb:
        r = sb.run(["python3", "-c", "print(6*7)"])     # r.stdout == "42\n"

See sandbox.py; `pocket exec` and `pocket cp` (cli.py) use the same channel.
"""

from pocketvm.api.sandbox import Files, Result, Sandbox
from pocketvm.manager.channel import (
    AgentProtocolError,
    AgentUnavailable,
    CommandTimeout,
    Exit,
    GuestError,
    GuestFileError,
    Output,
    SandboxGone,
)
from pocketvm.manager.core import LimitReached, ManagerError

__all__ = ["AgentProtocolError", "AgentUnavailable", "CommandTimeout", "Exit", "Files", "GuestError",
           "GuestFileError", "LimitReached", "ManagerError", "Output", "Result", "Sandbox", "SandboxGone"]

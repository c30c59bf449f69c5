"""pocketvm: a virtual machine monitor in Python.

`pocketvm.Sandbox` (and its errors) load on first use, so that `import
pocketvm` stays as light as the `pocket` command needs.
"""

from typing import Any

_API = ("Sandbox", "Result", "Files", "Output", "Exit", "GuestError", "CommandTimeout", "SandboxGone",
        "AgentUnavailable", "AgentProtocolError", "GuestFileError", "ManagerError", "LimitReached")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _API:
        import pocketvm.api as api

        return getattr(api, name)
    raise AttributeError(f"module 'pocketvm' has no attribute {name!r}")


__all__ = list(_API)

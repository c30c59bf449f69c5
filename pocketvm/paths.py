"""Where pocketvm keeps its files on the host."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache: guest images, compiled CPU core."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pocketvm"


def runtime_dir() -> Path:
    """Per-user runtime directory: control sockets of running VMs."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.access(base, os.W_OK):
        return Path(base) / "pocketvm"
    return Path("/tmp") / f"pocketvm-{os.getuid()}"

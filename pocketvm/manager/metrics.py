"""What a VM process uses on the host, from /proc."""

from __future__ import annotations

import os
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_metrics(pid: int) -> dict[str, Any]:
    """CPU seconds (user + system), resident and proportional set size, threads."""
    out: dict[str, Any] = {"cpu_seconds": None, "rss_bytes": None, "pss_bytes": None, "threads": None}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_seconds"] = round((int(fields[11]) + int(fields[12])) / _TICKS, 3)
        out["threads"] = int(fields[17])
        out["rss_bytes"] = int(fields[21]) * _PAGE
    except (OSError, ValueError, IndexError):
        return out
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss_bytes"] = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return out

"""The applet list of a BusyBox binary, read without running it.

BusyBox keeps its applet names as one sorted run of NUL-terminated strings
that starts with "[" and "[[" and ends with an empty string. Reading it lets
the initramfs carry the applet symlinks ready-made instead of running
`busybox --install` at every boot. If the list cannot be found (another build
layout), callers fall back to `--install` at boot.
"""

from __future__ import annotations

import re

_APPLET = re.compile(rb"^[A-Za-z0-9_.+\-\[\]]{1,64}$")
# Applets that must be present for /init to work at all; a list without
# them is not the applet table.
REQUIRED = frozenset({"sh", "mount", "insmod", "poweroff", "reboot", "setsid", "hostname"})


def busybox_applets(binary: bytes) -> list[str] | None:
    start = binary.find(b"[\0[[\0")
    if start < 0:
        return None
    end = binary.find(b"\0\0", start)
    if end < 0:
        return None
    raw = binary[start:end].split(b"\0")
    if not all(_APPLET.match(n) for n in raw):
        return None
    names = [n.decode() for n in raw]
    if names != sorted(names) or not REQUIRED <= set(names):
        return None
    return names

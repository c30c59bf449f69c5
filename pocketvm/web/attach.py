"""`pocket run/restore --display ...`: put a running VM's screen and console on the web or a VNC port."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from pocketvm.web.console_tap import SharedConsole

DEFAULT_SIZE = (1024, 768)
VNC_FIRST_PORT = 5900  # display :0, as VNC viewers count
# A manager that starts VMs can put each VM's page behind its own token:
# every VM at its own URL (its own port), all behind the same secret.
TOKEN_ENV = "POCKETVM_DISPLAY_TOKEN"
VNC_PORTS = 100


class DisplayOptionError(ValueError):
    """A --display or --display-size value that makes no sense (one-line message)."""


@dataclass(frozen=True)
class DisplayChoice:
    kind: str  # "none", "web", "vnc" or "web,vnc"
    port: int | None = None  # vnc: the TCP port (None: the first free from 5900)

    @property
    def web(self) -> bool:
        return "web" in self.kind.split(",")

    @property
    def vnc(self) -> bool:
        return "vnc" in self.kind.split(",")


def parse_display(text: str) -> DisplayChoice:
    """none | web | vnc[:PORT] | web,vnc[:PORT]"""
    parts = [p.strip() for p in text.strip().lower().split(",")]
    if parts == ["none"]:
        return DisplayChoice("none")
    web = vnc = False
    port = None
    for part in parts:
        m = re.fullmatch(r"vnc(?::(\d{1,5}))?", part)
        if part == "web" and not web:
            web = True
        elif m and not vnc and (m.group(1) is None or 0 < int(m.group(1)) < 65536):
            vnc = True
            port = int(m.group(1)) if m.group(1) else None
        else:
            raise DisplayOptionError(f"--display {text!r}: use none, web, vnc[:PORT] or web,vnc[:PORT]")
    return DisplayChoice(",".join(k for k, on in (("web", web), ("vnc", vnc)) if on), port)


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768)."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if m is None:
        raise DisplayOptionError(f"--display-size {text!r}: use WIDTHxHEIGHT, e.g. 1024x768")
    w, h = int(m.group(1)), int(m.group(2))
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise DisplayOptionError(f"--display-size {text!r}: width and height must be between 64 and 8192")
    return w, h


def _free_vnc_port() -> int:
    for port in range(VNC_FIRST_PORT, VNC_FIRST_PORT + VNC_PORTS):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise DisplayOptionError(f"no free VNC port between {VNC_FIRST_PORT} and {VNC_FIRST_PORT + VNC_PORTS - 1}")


def start_display(vm: Any, choice: DisplayChoice) -> Any:
    """Serve `vm`'s screen, input devices and console as `choice` says; returns the DisplayServer.

    The VM's console is wrapped so that pages see and type into it too.
    """
    from pocketvm.web.server import DisplayServer, DisplayTargets

    if vm.screen is None:
        raise DisplayOptionError("this VM has no display (start it with --display web or --display vnc)")
    console = SharedConsole(vm.console)
    vm.console = console
    keyboard, tablet = vm.inputs
    targets = DisplayTargets(vm.screen, keyboard, tablet, console, vm.config.name or "pocketvm")
    vnc_port = (choice.port or _free_vnc_port()) if choice.vnc else None
    server = DisplayServer(targets, web=choice.web, vnc_port=vnc_port, token=os.environ.get(TOKEN_ENV) or None)
    server.start()
    return server

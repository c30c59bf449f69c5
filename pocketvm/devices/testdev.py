"""`sifive,test1` finisher: lets a guest power the machine off, fail or reset.

A 32-bit store to offset 0 selects the action by its low 16 bits; for a
failure the upper 16 bits are the exit code. The device only records the
request; the machine's run loop polls `request` after each MMIO store and
acts on it (and clears it).
"""

from __future__ import annotations

import logging
from typing import Any

from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

FINISHER_FAIL = 0x3333
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777

KINDS = ("poweroff", "fail", "reset")


class TestDevice:
    name = "test"
    __test__ = False  # keep pytest from collecting this class

    def __init__(self) -> None:
        # ("poweroff", 0), ("fail", code) or ("reset", 0); None while running.
        self.request: tuple[str, int] | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size not in (2, 4, 8):
            guest_error(log, "test: ignored %d-byte write at %#x", size, offset)
            return
        value &= 0xFFFF_FFFF
        action, code = value & 0xFFFF, value >> 16
        if action == FINISHER_PASS:
            self.request = ("poweroff", 0)
        elif action == FINISHER_FAIL:
            self.request = ("fail", code)
        elif action == FINISHER_RESET:
            self.request = ("reset", 0)
        else:
            guest_error(log, "test: ignored unknown command %#x", value)

    def save(self) -> dict[str, Any]:
        if self.request is None:
            return {"request": None}
        return {"request": [self.request[0], self.request[1]]}

    def load(self, state: dict[str, Any]) -> None:
        req = state.get("request")
        if req is None or req[0] not in KINDS:
            self.request = None
        else:
            self.request = (str(req[0]), int(req[1]))

"""VM generation ID (`microsoft,vmgenid`): tells the guest it was cloned.

The device holds a 16-byte identifier. A restored VM gets a new random one
and an interrupt; Linux's vmgenid driver then mixes the identifier into its
random number generator and reseeds it at once (so two VMs restored from the
same snapshot never produce the same random numbers), and logs "crng
reseeded due to virtual machine fork", which the Debian image's
pocketvm-newid service waits for to make a new machine-id, hostname and MAC
addresses. (Debian's 6.12 kernel, probing the device from the device tree,
sends user space no uevent for it: `udevadm monitor` sees none.)

The interrupt stays raised until the guest reads the identifier, which the
driver's handler does first: the PLIC drops a source whose wire falls before
it is claimed, and the device has no register to acknowledge it otherwise.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pocketvm.devices.base import IrqLine
from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

ID_SIZE = 16


class VmGenId:
    name = "vmgenid"

    def __init__(self, irq: IrqLine):
        self.irq = irq
        self.id = os.urandom(ID_SIZE)

    def new_generation(self) -> None:
        """This VM is a new instance of a saved one: a new ID, and tell the guest."""
        self.id = os.urandom(ID_SIZE)
        self.irq.raise_()

    def reset(self) -> None:
        self.irq.lower()

    def read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > ID_SIZE:
            guest_error(log, "vmgenid: %d-byte read at %#x outside the ID", size, offset)
            return 0
        if self.irq.level:
            self.irq.lower()
        return int.from_bytes(self.id[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        guest_error(log, "vmgenid: ignored %d-byte write at %#x (read-only)", size, offset)

    def save(self) -> dict[str, Any]:
        return {"id": self.id.hex(), "irq": self.irq.level}

    def load(self, state: dict[str, Any]) -> None:
        ident = bytes.fromhex(str(state["id"]))
        if len(ident) != ID_SIZE:
            raise ValueError(f"vmgenid id of {len(ident)} bytes")
        self.id = ident
        self.irq.set(bool(state.get("irq", False)))

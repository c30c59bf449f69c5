"""virtio-mmio transport, version 2 ("modern", VIRTIO 1.2 section 4.2).

One transport per board slot. A slot without a device still answers with
the magic value and DeviceID 0, which drivers skip (as on QEMU's virt).
Requests are processed synchronously inside the QueueNotify store, so a
notification's whole effect (data moved, used ring updated, interrupt
raised) is visible when the guest's store instruction completes.
"""

from __future__ import annotations

import logging
from typing import Any

from pocketvm.devices import virtio as v
from pocketvm.devices.base import IrqLine
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import VirtQueue
from pocketvm.memory import GuestRAM

log = logging.getLogger(__name__)

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

MAGIC = 0x7472_6976  # "virt"
VENDOR_QEMU = 0x554D_4551

INT_USED_BUFFER = 1
INT_CONFIG_CHANGE = 2

# Features every device gets from the transport.
TRANSPORT_FEATURES = v.F_VERSION_1 | v.F_RING_INDIRECT_DESC

MASK32 = 0xFFFF_FFFF

# Queue address registers: offset -> (attribute, shift)
_QUEUE_ADDR = {
    QUEUE_DESC_LOW: ("desc_addr", 0),
    QUEUE_DESC_HIGH: ("desc_addr", 32),
    QUEUE_DRIVER_LOW: ("driver_addr", 0),
    QUEUE_DRIVER_HIGH: ("driver_addr", 32),
    QUEUE_DEVICE_LOW: ("device_addr", 0),
    QUEUE_DEVICE_HIGH: ("device_addr", 32),
}


class VirtioMmio:
    name = "virtio-mmio"

    def __init__(self, ram: GuestRAM, irq: IrqLine, device: v.VirtioDevice | None = None):
        self.ram = ram
        self.irq = irq
        self.device = device
        self.queues: list[VirtQueue] = []
        if device is not None:
            self.queues = [VirtQueue(ram, device.queue_num_max, i) for i in range(device.num_queues)]
            device.attach(self)
        self.config_generation = 0
        self.reset()

    # --- state ------------------------------------------------------------------

    def reset(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.shm_sel = 0
        self.interrupt_status = 0
        for q in self.queues:
            q.reset()
        if self.device is not None:
            self.device.reset()
        self._update_irq()

    @property
    def device_features(self) -> int:
        if self.device is None:
            return 0
        return self.device.device_features() | TRANSPORT_FEATURES

    def _queue(self) -> VirtQueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    # --- calls from the device -----------------------------------------------------

    def notify_used(self, q: int) -> None:
        """The device put buffers in queue q's used ring: interrupt unless suppressed."""
        if self.queues[q].needs_interrupt():
            self.interrupt_status |= INT_USED_BUFFER
            self._update_irq()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & MASK32
        if self.status & v.STATUS_DRIVER_OK:
            self.interrupt_status |= INT_CONFIG_CHANGE
            self._update_irq()

    def needs_reset(self, reason: str) -> None:
        """The device cannot go on until the driver resets it (section 2.1.2)."""
        if self.status & v.STATUS_DEVICE_NEEDS_RESET:
            return
        guest_error(log, "virtio device %d needs a reset: %s", self._device_id(), reason)
        self.status |= v.STATUS_DEVICE_NEEDS_RESET
        if self.status & v.STATUS_DRIVER_OK:
            self.interrupt_status |= INT_CONFIG_CHANGE
            self._update_irq()

    # --- guest side -------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG:
            return self._config_read(offset - CONFIG, size)
        if size != 4 or offset & 3:
            guest_error(log, "virtio-mmio: unsupported %d-byte read at %#x", size, offset)
            return 0
        q = self._queue()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION:
            return 2
        if offset == DEVICE_ID:
            return self._device_id()
        if offset == VENDOR_ID:
            return VENDOR_QEMU
        if offset == DEVICE_FEATURES:
            return (self.device_features >> (32 * self.device_features_sel)) & MASK32 if self.device_features_sel < 2 else 0
        if offset == DRIVER_FEATURES:
            return (self.driver_features >> (32 * self.driver_features_sel)) & MASK32 if self.driver_features_sel < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return q.num_max if q else 0
        if offset == QUEUE_NUM:
            return q.num if q else 0
        if offset == QUEUE_READY:
            return int(q.ready) if q else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if offset in _QUEUE_ADDR:
            if q is None:
                return 0
            attr, shift = _QUEUE_ADDR[offset]
            return (getattr(q, attr) >> shift) & MASK32
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH):
            return MASK32  # no shared memory regions: length -1
        if offset == CONFIG_GENERATION:
            return self.config_generation
        if offset in (DEVICE_FEATURES_SEL, DRIVER_FEATURES_SEL, QUEUE_SEL, SHM_SEL):
            return {
                DEVICE_FEATURES_SEL: self.device_features_sel,
                DRIVER_FEATURES_SEL: self.driver_features_sel,
                QUEUE_SEL: self.queue_sel,
                SHM_SEL: self.shm_sel,
            }[offset]
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG:
            self._config_write(offset - CONFIG, size, value)
            return
        if size != 4 or offset & 3:
            guest_error(log, "virtio-mmio: unsupported %d-byte write at %#x", size, offset)
            return
        value &= MASK32
        q = self._queue()
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NUM:
            if q is not None and self._queue_writable(q):
                q.set_num(value)
        elif offset == QUEUE_READY:
            if q is not None:
                q.ready = bool(value & 1)
        elif offset in _QUEUE_ADDR:
            if q is not None and self._queue_writable(q):
                attr, shift = _QUEUE_ADDR[offset]
                old = getattr(q, attr)
                setattr(q, attr, (old & ~(MASK32 << shift)) | (value << shift))
        elif offset == QUEUE_NOTIFY:
            self._notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._update_irq()
        elif offset == STATUS:
            self._write_status(value & 0xFF)
        elif offset == SHM_SEL:
            self.shm_sel = value
        else:
            guest_error(log, "virtio-mmio: write to read-only or unknown register %#x", offset)

    # --- internals -----------------------------------------------------------------------

    def _device_id(self) -> int:
        return self.device.device_id if self.device is not None else v.ID_NONE

    def _queue_writable(self, q: VirtQueue) -> bool:
        if q.ready:
            guest_error(log, "virtio-mmio: queue %d reconfigured while ready; ignored", q.index)
            return False
        return True

    def _write_driver_features(self, value: int) -> None:
        if self.status & v.STATUS_FEATURES_OK:
            guest_error(log, "virtio-mmio: driver features written after FEATURES_OK; ignored")
            return
        if self.driver_features_sel >= 2:
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(MASK32 << shift)) | (value << shift)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        old = self.status
        new = value | (old & v.STATUS_DEVICE_NEEDS_RESET)
        if new & v.STATUS_FEATURES_OK and not old & v.STATUS_FEATURES_OK:
            offered = self.device_features
            accepted = self.driver_features
            if accepted & ~offered or not accepted & v.F_VERSION_1:
                # Leaving FEATURES_OK clear tells the driver we refuse.
                guest_error(log, "virtio-mmio: refused driver features %#x (offered %#x)", accepted, offered)
                new &= ~v.STATUS_FEATURES_OK
        if new & v.STATUS_DRIVER_OK and not new & v.STATUS_FEATURES_OK:
            guest_error(log, "virtio-mmio: DRIVER_OK without FEATURES_OK; ignored")
            new &= ~v.STATUS_DRIVER_OK
        self.status = new
        if new & v.STATUS_DRIVER_OK and not old & v.STATUS_DRIVER_OK:
            # Buffers made available before DRIVER_OK were not processed yet.
            for q in self.queues:
                if q.ready:
                    self._notify(q.index)

    def _notify(self, index: int) -> None:
        if self.device is None or index >= len(self.queues):
            guest_error(log, "virtio-mmio: notify of nonexistent queue %d", index)
            return
        q = self.queues[index]
        if not q.ready or not self.status & v.STATUS_DRIVER_OK:
            return
        if self.status & v.STATUS_DEVICE_NEEDS_RESET:
            return
        try:
            self.device.queue_notify(index)
        except Exception:  # a device bug must not take the whole VM down
            log.exception("virtio device %d crashed handling queue %d", self.device.device_id, index)
            self.needs_reset("internal device error")
            return
        if q.broken:
            self.needs_reset(f"queue {index}: {q.broken}")

    def _config_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or self.device is None:
            return 0
        data = self.device.config_bytes()
        if offset + size > len(data):
            return 0
        return int.from_bytes(data[offset : offset + size], "little")

    def _config_write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8) or self.device is None:
            return
        if offset + size > len(self.device.config_bytes()):
            guest_error(log, "virtio-mmio: config write beyond config space at %#x", offset)
            return
        self.device.config_write(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def _update_irq(self) -> None:
        level = self.interrupt_status != 0
        if level != self.irq.level:
            self.irq.set(level)

    # --- snapshots --------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "device_features_sel": self.device_features_sel,
            "driver_features_sel": self.driver_features_sel,
            "driver_features": self.driver_features,
            "queue_sel": self.queue_sel,
            "shm_sel": self.shm_sel,
            "interrupt_status": self.interrupt_status,
            "config_generation": self.config_generation,
            "queues": [q.save() for q in self.queues],
            "device": self.device.save() if self.device is not None else {},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.status = int(state["status"]) & 0xFF
        self.device_features_sel = int(state["device_features_sel"]) & MASK32
        self.driver_features_sel = int(state["driver_features_sel"]) & MASK32
        self.driver_features = int(state["driver_features"]) & ((1 << 64) - 1)
        self.queue_sel = int(state["queue_sel"]) & MASK32
        self.shm_sel = int(state.get("shm_sel", 0)) & MASK32
        self.interrupt_status = int(state["interrupt_status"]) & 3
        self.config_generation = int(state["config_generation"]) & MASK32
        for q, qs in zip(self.queues, state["queues"]):
            q.load(qs)
        if self.device is not None:
            self.device.load(state.get("device", {}))
        self.irq.set(self.interrupt_status != 0)

"""A minimal guest-side virtio driver and an interrupt-wire recorder for device tests.

The driver does what Linux's virtio-mmio + virtio_ring code does, through
the device's MMIO registers and rings in a real GuestRAM, so the tests
exercise the devices exactly as a guest would.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM

NEXT, WRITE, INDIRECT = 1, 2, 4


class Wire:
    """Records every level an IrqLine is driven to."""

    def __init__(self) -> None:
        self.history: list[bool] = []

    def __call__(self, source: int, level: bool) -> None:
        self.history.append(level)


class GuestDriver:
    """Guest side of one virtqueue of a virtio-mmio device."""

    DESC = RAM_BASE + 0x1000
    AVAIL = RAM_BASE + 0x3000
    USED = RAM_BASE + 0x4000
    DATA = RAM_BASE + 0x10000

    def __init__(self, dev: VirtioMmio, ram: GuestRAM, qsize: int = 16):
        self.dev = dev
        self.ram = ram
        self.qsize = qsize
        self.next_desc = 0
        self.avail_idx = 0
        self.last_used = 0
        self.data_next = self.DATA

    def reg(self, off: int) -> int:
        return self.dev.read(off, 4)

    def set(self, off: int, value: int) -> None:
        self.dev.write(off, 4, value)

    def device_features(self) -> int:
        self.set(m.DEVICE_FEATURES_SEL, 0)
        lo = self.reg(m.DEVICE_FEATURES)
        self.set(m.DEVICE_FEATURES_SEL, 1)
        return lo | (self.reg(m.DEVICE_FEATURES) << 32)

    def negotiate(self, features: int) -> bool:
        self.set(m.STATUS, 0)
        self.set(m.STATUS, v.STATUS_ACKNOWLEDGE)
        self.set(m.STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
        for sel in (0, 1):
            self.set(m.DRIVER_FEATURES_SEL, sel)
            self.set(m.DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFF_FFFF)
        self.set(m.STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER | v.STATUS_FEATURES_OK)
        return bool(self.reg(m.STATUS) & v.STATUS_FEATURES_OK)

    def setup_queue(self, q: int = 0) -> None:
        self.set(m.QUEUE_SEL, q)
        assert self.reg(m.QUEUE_READY) == 0
        assert self.reg(m.QUEUE_NUM_MAX) >= self.qsize
        self.set(m.QUEUE_NUM, self.qsize)
        for low, addr in ((m.QUEUE_DESC_LOW, self.DESC), (m.QUEUE_DRIVER_LOW, self.AVAIL), (m.QUEUE_DEVICE_LOW, self.USED)):
            self.set(low, addr & 0xFFFF_FFFF)
            self.set(low + 4, addr >> 32)
        self.set(m.QUEUE_READY, 1)

    def start(self, features: int | None = None) -> None:
        """Full Linux-style bring-up: negotiate, set up queue 0, DRIVER_OK."""
        if features is None:
            features = self.device_features()
        assert self.negotiate(features)
        self.setup_queue(0)
        self.set(m.STATUS, self.reg(m.STATUS) | v.STATUS_DRIVER_OK)

    # --- buffers ----------------------------------------------------------------

    def alloc(self, data: bytes | int) -> int:
        """Place `data` (or that many zero bytes) in guest RAM; returns its address."""
        raw = bytes(data) if isinstance(data, int) else data
        addr = self.data_next
        self.ram.write(addr, raw)
        self.data_next += (len(raw) + 15) & ~15 or 16
        return addr

    def write_desc(self, idx: int, addr: int, length: int, flags: int, nxt: int, table: int | None = None) -> None:
        base = self.DESC if table is None else table
        self.ram.write(base + 16 * idx, struct.pack("<QIHH", addr, length, flags, nxt))

    def post_chain(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Describe buffers (addr, len, device_writable) as one chain; returns the head."""
        idxs = [(self.next_desc + i) % self.qsize for i in range(len(bufs))]
        self.next_desc = (self.next_desc + len(bufs)) % self.qsize
        for i, (addr, length, writable) in enumerate(bufs):
            last = i == len(bufs) - 1
            flags = (WRITE if writable else 0) | (0 if last else NEXT)
            self.write_desc(idxs[i], addr, length, flags, 0 if last else idxs[i + 1])
        self.make_available(idxs[0])
        return idxs[0]

    def make_available(self, head: int) -> None:
        self.ram.write_int(self.AVAIL + 4 + 2 * (self.avail_idx % self.qsize), 2, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write_int(self.AVAIL + 2, 2, self.avail_idx)

    def notify(self, q: int = 0) -> None:
        self.set(m.QUEUE_NOTIFY, q)

    def used(self) -> list[tuple[int, int]]:
        """Used-ring entries published since the last call."""
        idx = self.ram.read_int(self.USED + 2, 2)
        out = []
        while self.last_used != idx:
            slot = self.last_used % self.qsize
            out.append(struct.unpack("<II", self.ram.read(self.USED + 4 + 8 * slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def ack_interrupt(self) -> int:
        status = self.reg(m.INTERRUPT_STATUS)
        self.set(m.INTERRUPT_ACK, status)
        return status


PER_DESCRIPTOR = -1  # in scramble_rings' addrs: a distinct data address for each descriptor


def scramble_rings(drv: GuestDriver, rnd: Any, addrs: Sequence[int], lengths: Sequence[int], qsize: int = 16) -> None:
    """Fill `drv`'s descriptor table and available ring with random, mostly
    near-valid garbage (so a device under test gets deep into it)."""
    for i in range(qsize):
        addr = rnd.choice(addrs)
        if addr == PER_DESCRIPTOR:
            addr = drv.DATA + 16 * i
        drv.write_desc(i, addr, rnd.choice(lengths), rnd.randrange(8), rnd.randrange(qsize + 2))
    for slot in range(qsize):
        drv.ram.write_int(drv.AVAIL + 4 + 2 * slot, 2, rnd.randrange(qsize + 1))
    drv.ram.write_int(drv.AVAIL, 2, rnd.randrange(2))
    drv.ram.write_int(drv.AVAIL + 2, 2, rnd.randrange(0, qsize + 2))

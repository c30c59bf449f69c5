"""Split virtqueue (VIRTIO 1.2 section 2.7), device side.

The three rings live in guest RAM and are reached only through `GuestRAM`,
which bounds-checks every access. Everything in them is written by the
guest and therefore untrusted:

- a descriptor chain that loops, is longer than the queue, uses a bad
  index, nests indirect tables or points outside RAM is *malformed*: it is
  still popped and handed to the device with `Chain.error` set, so the
  device can complete it with an error status instead of leaving the driver
  waiting forever;
- damage that makes the queue itself unusable (rings outside RAM, a head
  index beyond the queue, more buffers "available" than the queue holds)
  marks the queue `broken`; the transport then reports DEVICE_NEEDS_RESET.

EVENT_IDX is not offered; VIRTQ_AVAIL_F_NO_INTERRUPT is honoured.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketvm.devices.guestlog import guest_error
from pocketvm.memory import GuestMemoryError, GuestRAM

log = logging.getLogger(__name__)

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1

MAX_QUEUE_SIZE = 32768
# Indirect tables are bounded separately from the queue; drivers size them
# by the device's segment limits, which are far below this.
MAX_INDIRECT = 1024

_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len

Segment = tuple[int, int]  # (guest physical address, length)


def slice_segments(segs: list[Segment], start: int, length: int) -> list[Segment]:
    """The part [start, start+length) of the byte stream formed by `segs`."""
    out: list[Segment] = []
    pos = 0
    end = start + length
    for addr, seg_len in segs:
        seg_end = pos + seg_len
        lo, hi = max(start, pos), min(end, seg_end)
        if lo < hi:
            out.append((addr + lo - pos, hi - lo))
        pos = seg_end
        if pos >= end:
            break
    return out


@dataclass
class Chain:
    """One descriptor chain, split into device-readable and device-writable buffers."""

    head: int
    readable: list[Segment] = field(default_factory=list)
    writable: list[Segment] = field(default_factory=list)
    error: str | None = None

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)

    def read(self, ram: GuestRAM, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of the readable buffers (short if they end first)."""
        return b"".join(ram.read(a, n) for a, n in slice_segments(self.readable, start, length))

    def write(self, ram: GuestRAM, start: int, data: bytes) -> int:
        """Copy `data` to the writable buffers from `start`; returns bytes written."""
        done = 0
        for addr, n in slice_segments(self.writable, start, len(data)):
            ram.write(addr, data[done : done + n])
            done += n
        return done

    def readable_views(self, ram: GuestRAM, start: int, length: int) -> list[np.ndarray]:
        """Zero-copy views of part of the readable buffers."""
        return [ram.view(a, n) for a, n in slice_segments(self.readable, start, length)]

    def writable_views(self, ram: GuestRAM, start: int, length: int) -> list[np.ndarray]:
        """Zero-copy views of part of the writable buffers."""
        return [ram.view(a, n) for a, n in slice_segments(self.writable, start, length)]


class VirtQueue:
    def __init__(self, ram: GuestRAM, num_max: int, index: int = 0):
        if not 1 <= num_max <= MAX_QUEUE_SIZE or num_max & (num_max - 1):
            raise ValueError("queue size must be a power of two up to 32768")
        self.ram = ram
        self.num_max = num_max
        self.index = index
        self.reset()

    def reset(self) -> None:
        self.num = self.num_max
        self.ready = False
        self.desc_addr = 0
        self.driver_addr = 0  # available ring
        self.device_addr = 0  # used ring
        self.last_avail = 0  # next available-ring entry to consume (free-running u16)
        self.used_idx = 0  # next used-ring entry to fill (free-running u16)
        self.broken: str | None = None

    def set_num(self, num: int) -> bool:
        # Free-running 16-bit indices only wrap cleanly for a power-of-two size.
        if not 1 <= num <= self.num_max or num & (num - 1):
            guest_error(log, "virtqueue %d: invalid size %d (max %d)", self.index, num, self.num_max)
            return False
        self.num = num
        return True

    def _break(self, reason: str) -> None:
        if self.broken is None:
            guest_error(log, "virtqueue %d: %s; queue stopped", self.index, reason)
            self.broken = reason

    # --- available ring ---------------------------------------------------------

    def pop(self) -> Chain | None:
        """Next available chain, or None when there is none (or the queue is broken)."""
        if not self.ready or self.broken:
            return None
        try:
            avail_idx = self.ram.read_int(self.driver_addr + 2, 2)
            if avail_idx == self.last_avail:
                return None
            count = (avail_idx - self.last_avail) & 0xFFFF
            if count > self.num:
                self._break(f"{count} buffers claimed available in a queue of {self.num}")
                return None
            slot = self.last_avail % self.num
            head = self.ram.read_int(self.driver_addr + 4 + 2 * slot, 2)
        except GuestMemoryError:
            self._break("available ring outside RAM")
            return None
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.num:
            self._break(f"chain head {head} outside a queue of {self.num}")
            return None
        chain = self._walk(head)
        if chain.error:
            guest_error(log, "virtqueue %d: malformed chain at head %d: %s", self.index, head, chain.error)
        return chain

    def pop_available(self) -> Iterator[Chain]:
        """The chains available now, at most a queue's worth.

        A driver cannot have more outstanding than the queue holds. More can
        only appear while they are served if the device's own writes land
        on the available ring (a disk read into it, say): then each request
        can make the next one available, and as requests are served
        synchronously the monitor would never get back to the guest or to
        anything else. Those wait for the next notification.
        """
        for _ in range(self.num):
            chain = self.pop()
            if chain is None:
                return
            yield chain

    def _desc(self, table: int, idx: int) -> tuple[int, int, int, int]:
        return _DESC.unpack_from(self.ram.view(table + 16 * idx, 16))

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table, size, idx = self.desc_addr, self.num, head
        budget = self.num  # a chain can hold at most every descriptor once
        in_indirect = False

        def fail(reason: str) -> None:
            if chain.error is None:
                chain.error = reason

        while True:
            if budget == 0:
                fail("chain longer than its table (a loop?)")
                break
            budget -= 1
            try:
                addr, length, flags, nxt = self._desc(table, idx)
            except GuestMemoryError:
                fail(f"descriptor table at {table:#x} outside RAM")
                break
            if flags & VIRTQ_DESC_F_INDIRECT:
                if in_indirect:
                    fail("nested indirect table")
                    break
                if flags & VIRTQ_DESC_F_NEXT:
                    fail("indirect descriptor with NEXT set")
                    break
                if length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                    fail(f"indirect table of invalid length {length}")
                    break
                table, size, idx = addr, length // 16, 0
                budget = size
                in_indirect = True
                continue
            if length == 0:
                pass  # nothing to transfer; its address does not matter
            elif not self.ram.contains(addr, length):
                fail(f"buffer {addr:#x}+{length:#x} outside RAM")
            elif flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append((addr, length))
            elif chain.writable:
                fail("device-readable buffer after a device-writable one")
            else:
                chain.readable.append((addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            idx = nxt
            if idx >= size:
                fail(f"next index {idx} outside a table of {size}")
                break
        return chain

    # --- used ring ----------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver, `written` bytes having been written into it."""
        if not self.ready or self.broken:
            return
        slot = self.used_idx % self.num
        try:
            elem = self.ram.view(self.device_addr + 4 + 8 * slot, 8)
            _USED_ELEM.pack_into(elem, 0, head, written & 0xFFFF_FFFF)
            # The element must be in place before the index that publishes it.
            self.used_idx = (self.used_idx + 1) & 0xFFFF
            self.ram.write_int(self.device_addr + 2, 2, self.used_idx)
        except GuestMemoryError:
            self._break("used ring outside RAM")

    def needs_interrupt(self) -> bool:
        """False when the driver asked not to be interrupted (VIRTQ_AVAIL_F_NO_INTERRUPT)."""
        try:
            flags = self.ram.read_int(self.driver_addr, 2)
        except GuestMemoryError:
            return True
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    # --- snapshots ------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "num": self.num,
            "ready": int(self.ready),
            "desc": self.desc_addr,
            "driver": self.driver_addr,
            "device": self.device_addr,
            "last_avail": self.last_avail,
            "used_idx": self.used_idx,
            "broken": self.broken,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.reset()
        if not self.set_num(int(state["num"])):
            self.num = self.num_max
        self.ready = bool(state["ready"])
        self.desc_addr = int(state["desc"])
        self.driver_addr = int(state["driver"])
        self.device_addr = int(state["device"])
        self.last_avail = int(state["last_avail"]) & 0xFFFF
        self.used_idx = int(state["used_idx"]) & 0xFFFF
        broken = state.get("broken")
        self.broken = None if broken is None else str(broken)

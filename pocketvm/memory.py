"""Guest RAM: one contiguous, lazily committed buffer.

Guest physical address RAM_BASE is offset 0. Every access from the host side
(device DMA, loaders, snapshots) goes through bounds-checked helpers: a guest
that points a descriptor outside RAM gets a GuestMemoryError, which devices
turn into an error status for the guest, never a host crash.
"""

from __future__ import annotations

import mmap

import numpy as np

RAM_BASE = 0x8000_0000


class GuestMemoryError(Exception):
    """A guest-supplied physical address range is not inside RAM."""


def _anonymous(size: int) -> mmap.mmap:
    """Private anonymous memory, committed as the guest touches it. (Python's
    default for mmap(-1) is a shared mapping, shmem, whose first-touch faults
    cost a guest's first large copy a seventh of its time.)"""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class GuestRAM:
    def __init__(self, size: int, base: int = RAM_BASE, backing: mmap.mmap | None = None):
        if size <= 0 or size % 4096:
            raise ValueError("RAM size must be a positive multiple of 4 KiB")
        self.base = base
        self.size = size
        self._map = backing if backing is not None else _anonymous(size)
        self.u8 = np.frombuffer(self._map, dtype=np.uint8, count=size)
        self.u16 = self.u8.view(np.uint16)
        self.u32 = self.u8.view(np.uint32)
        self.u64 = self.u8.view(np.uint64)

    def contains(self, addr: int, length: int = 1) -> bool:
        return length >= 0 and self.base <= addr and addr + length <= self.base + self.size

    def _offset(self, addr: int, length: int) -> int:
        if not self.contains(addr, length):
            raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} is outside RAM")
        return addr - self.base

    def view(self, addr: int, length: int) -> np.ndarray:
        """Zero-copy uint8 view of guest memory (writes go to the guest)."""
        off = self._offset(addr, length)
        return self.u8[off : off + length]

    def read(self, addr: int, length: int) -> bytes:
        return self.view(addr, length).tobytes()

    def write(self, addr: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        self.view(addr, len(buf))[:] = buf

    def read_int(self, addr: int, size: int) -> int:
        return int.from_bytes(self.view(addr, size).tobytes(), "little")

    def write_int(self, addr: int, size: int, value: int) -> None:
        self.write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

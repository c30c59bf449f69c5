"""CLINT (SiFive / ACLINT layout): msip, mtimecmp and mtime registers.

The registers themselves live in the machine-wide array `sh` so that the
CPU core can raise MTIP/MSIP without leaving compiled code; this class is
only the guest's MMIO view of them.

`sh` holds int64. A 64-bit register is stored as its raw two's-complement
bit pattern (a guest writing mtimecmp = 2**64 - 1 stores -1), so the core
must compare mtime and mtimecmp as unsigned numbers.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from pocketvm.board.memmap import CLINT_MSIP, CLINT_MTIME, CLINT_MTIMECMP
from pocketvm.cpu.state import SH_MSIP, SH_MTIME, SH_MTIMECMP, SH_MTIMECMP_ADDR, SH_NHARTS
from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

MASK32 = 0xFFFF_FFFF
MASK64 = (1 << 64) - 1


def _to_i64(value: int) -> np.int64:
    value &= MASK64
    return np.int64(value - (1 << 64) if value >> 63 else value)


class Clint:
    name = "clint"

    def __init__(self, sh: np.ndarray, on_mtime_write: Callable[[int], None] | None = None):
        """`on_mtime_write(ticks)` lets the board move its time base when the
        guest sets mtime; without it the new value is stored in sh directly."""
        self.sh = sh
        self.nharts = int(sh[SH_NHARTS])
        self.on_mtime_write = on_mtime_write
        self._base = 0  # where the guest sees it, once the core serves mtimecmp stores

    def attach_to_core(self, base: int) -> None:
        """Let the core keep aligned 8-byte mtimecmp stores in `sh` itself
        (what `write` does with them), without leaving run()."""
        self._base = base
        self._arm()

    def _arm(self) -> None:
        # Set again after a restore: sh then holds whatever the snapshot had.
        self.sh[SH_MTIMECMP_ADDR] = self._base + CLINT_MTIMECMP if self._base else 0

    # --- register map ----------------------------------------------------------

    def _reg64(self, offset: int) -> int:
        """Index in sh of the 64-bit register containing `offset`, or -1."""
        if CLINT_MTIMECMP <= offset < CLINT_MTIMECMP + 8 * self.nharts:
            return SH_MTIMECMP + ((offset - CLINT_MTIMECMP) >> 3)
        if CLINT_MTIME <= offset < CLINT_MTIME + 8:
            return SH_MTIME
        return -1

    def _get64(self, index: int) -> int:
        return int(self.sh[index]) & MASK64

    def _set64(self, index: int, value: int) -> None:
        if index == SH_MTIME and self.on_mtime_write is not None:
            self.on_mtime_write(value & MASK64)
        else:
            self.sh[index] = _to_i64(value)

    # --- guest side ---------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset & (size - 1):
            guest_error(log, "clint: unsupported %d-byte read at %#x", size, offset)
            return 0
        if size == 8:
            return self._read32(offset) | (self._read32(offset + 4) << 32)
        return self._read32(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset & (size - 1):
            guest_error(log, "clint: unsupported %d-byte write at %#x", size, offset)
            return
        index = self._reg64(offset)
        if size == 8 and index >= 0:
            self._set64(index, value)  # whole register at once, never a torn value
        elif size == 8:
            self._write32(offset, value & MASK32)
            self._write32(offset + 4, (value >> 32) & MASK32)
        else:
            self._write32(offset, value & MASK32)

    def _read32(self, offset: int) -> int:
        if offset < CLINT_MSIP + 4 * self.nharts:
            return int(self.sh[SH_MSIP + (offset >> 2)]) & 1
        index = self._reg64(offset)
        if index < 0:
            return 0
        shift = 32 if offset & 4 else 0
        return (self._get64(index) >> shift) & MASK32

    def _write32(self, offset: int, value: int) -> None:
        if offset < CLINT_MSIP + 4 * self.nharts:
            self.sh[SH_MSIP + (offset >> 2)] = value & 1
            return
        index = self._reg64(offset)
        if index < 0:
            guest_error(log, "clint: write to unknown register %#x", offset, level=logging.DEBUG)
            return
        shift = 32 if offset & 4 else 0
        old = self._get64(index)
        self._set64(index, (old & ~(MASK32 << shift)) | (value << shift))

    # --- snapshots ------------------------------------------------------------------
    # mtime belongs to the board's time base and is saved with it.

    def save(self) -> dict[str, Any]:
        n = self.nharts
        return {
            "msip": [int(v) for v in self.sh[SH_MSIP : SH_MSIP + n]],
            "mtimecmp": [int(v) for v in self.sh[SH_MTIMECMP : SH_MTIMECMP + n]],
        }

    def load(self, state: dict[str, Any]) -> None:
        for hart, v in enumerate(state["msip"][: self.nharts]):
            self.sh[SH_MSIP + hart] = int(v) & 1
        for hart, v in enumerate(state["mtimecmp"][: self.nharts]):
            self.sh[SH_MTIMECMP + hart] = _to_i64(int(v))
        self._arm()

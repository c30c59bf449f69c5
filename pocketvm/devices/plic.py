"""SiFive PLIC (`sifive,plic-1.0.0`), laid out as on QEMU's virt board.

Context 2*h is hart h's M-mode, 2*h+1 its S-mode. All sources are level
triggered. The gateway forwards a source while its wire is high; once a
context claims it, it is "in service" and not pending again until that
context completes it (if the wire is still high then, it pends at once).
A source whose wire drops before it is claimed stops pending, so a driver
never claims an interrupt its device has already withdrawn.

Per-source state is kept as Python integers used as bitmasks (bit n =
source n): a snapshot is then a handful of plain ints.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from pocketvm.cpu.state import EXT_IRQ, IRQ_MEI, IRQ_SEI
from pocketvm.devices.base import IrqLine
from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

PRIORITY_BASE = 0x0
PENDING_BASE = 0x1000
ENABLE_BASE = 0x2000
ENABLE_STRIDE = 0x80
CONTEXT_BASE = 0x20_0000
CONTEXT_STRIDE = 0x1000
CONTEXT_THRESHOLD = 0x0
CONTEXT_CLAIM = 0x4

PRIORITY_MAX = 7  # 3 priority bits, as QEMU virt

ContextIrq = Callable[[int, bool, bool], None]


class Plic:
    name = "plic"

    def __init__(self, nharts: int, set_context_irq: ContextIrq, num_sources: int = 96):
        if not 1 <= num_sources <= 1024:
            raise ValueError("PLIC supports 1..1024 sources")
        self.nharts = nharts
        self.num_sources = num_sources
        self.ncontexts = 2 * nharts
        self.set_context_irq = set_context_irq
        # Source 0 does not exist: it is masked out of every bitmask.
        self._valid = ((1 << num_sources) - 1) & ~1
        self._levels = 0  # wires, driven by devices; survive a PLIC reset
        self._outputs = [False] * self.ncontexts
        self.reset()

    def reset(self) -> None:
        self.priority = [0] * self.num_sources
        self.claimed = 0
        self.enable = [0] * self.ncontexts
        self.threshold = [0] * self.ncontexts
        # A wire that is high keeps requesting after a reset.
        self.pending = self._levels & self._valid
        self._update(force=True)

    # --- device side -----------------------------------------------------------

    def irq_line(self, source: int) -> IrqLine:
        if not 1 <= source < self.num_sources:
            raise ValueError(f"PLIC source {source} out of range 1..{self.num_sources - 1}")
        return IrqLine(self.set_source_level, source)

    def set_source_level(self, source: int, level: bool) -> None:
        if not 1 <= source < self.num_sources:
            return
        bit = 1 << source
        if level:
            self._levels |= bit
            if not self.claimed & bit:
                self.pending |= bit
        else:
            self._levels &= ~bit
            self.pending &= ~bit
        self._update()

    # --- guest side -------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 4 or offset & 3:
            guest_error(log, "plic: unsupported %d-byte read at %#x", size, offset)
            return 0
        if offset < PENDING_BASE:
            src = offset >> 2
            return self.priority[src] if src < self.num_sources else 0
        if offset < ENABLE_BASE:
            return self._word(self.pending, (offset - PENDING_BASE) >> 2)
        if offset < CONTEXT_BASE:
            ctx, word = self._enable_index(offset)
            return self._word(self.enable[ctx], word) if ctx >= 0 else 0
        ctx, reg = divmod(offset - CONTEXT_BASE, CONTEXT_STRIDE)
        if ctx >= self.ncontexts:
            return 0
        if reg == CONTEXT_THRESHOLD:
            return self.threshold[ctx]
        if reg == CONTEXT_CLAIM:
            return self._claim(ctx)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset & 3:
            guest_error(log, "plic: unsupported %d-byte write at %#x", size, offset)
            return
        value &= 0xFFFF_FFFF
        if offset < PENDING_BASE:
            src = offset >> 2
            if 1 <= src < self.num_sources:
                self.priority[src] = min(value, PRIORITY_MAX)
        elif offset < ENABLE_BASE:
            return  # pending bits are read-only
        elif offset < CONTEXT_BASE:
            ctx, word = self._enable_index(offset)
            if ctx < 0:
                return
            shift = 32 * word
            mask = (0xFFFF_FFFF << shift) & self._valid
            self.enable[ctx] = (self.enable[ctx] & ~mask) | ((value << shift) & mask)
        else:
            ctx, reg = divmod(offset - CONTEXT_BASE, CONTEXT_STRIDE)
            if ctx >= self.ncontexts:
                return
            if reg == CONTEXT_THRESHOLD:
                self.threshold[ctx] = min(value, PRIORITY_MAX)
            elif reg == CONTEXT_CLAIM:
                self._complete(ctx, value)
        self._update()

    # --- internals ----------------------------------------------------------------

    def _word(self, mask: int, word: int) -> int:
        return (mask >> (32 * word)) & 0xFFFF_FFFF

    def _enable_index(self, offset: int) -> tuple[int, int]:
        ctx, rel = divmod(offset - ENABLE_BASE, ENABLE_STRIDE)
        word = rel >> 2
        if ctx >= self.ncontexts or 32 * word >= self.num_sources:
            return -1, 0
        return ctx, word

    def _best(self, ctx: int) -> tuple[int, int]:
        """(source, priority) of the highest-priority claimable source, (0, 0) if none."""
        candidates = self.pending & ~self.claimed & self.enable[ctx]
        best, best_prio = 0, 0
        while candidates:
            low = candidates & -candidates
            src = low.bit_length() - 1
            prio = self.priority[src]
            if prio > best_prio:  # ties go to the lowest source id
                best, best_prio = src, prio
            candidates ^= low
        return best, best_prio

    def _claim(self, ctx: int) -> int:
        src, _ = self._best(ctx)
        if src:
            bit = 1 << src
            self.pending &= ~bit
            self.claimed |= bit
            self._update()
        return src

    def _complete(self, ctx: int, src: int) -> None:
        if not 1 <= src < self.num_sources:
            guest_error(log, "plic: context %d completed invalid source %d", ctx, src)
            return
        bit = 1 << src
        # The specification ignores completions of sources the context has not enabled.
        if not self.enable[ctx] & bit:
            guest_error(log, "plic: context %d completed source %d it has not enabled", ctx, src, level=logging.DEBUG)
            return
        self.claimed &= ~bit
        if self._levels & bit:
            self.pending |= bit

    def _update(self, force: bool = False) -> None:
        for ctx in range(self.ncontexts):
            _, prio = self._best(ctx)
            level = prio > self.threshold[ctx]
            if force or level != self._outputs[ctx]:
                self._outputs[ctx] = level
                self.set_context_irq(ctx >> 1, bool(ctx & 1), level)

    # --- snapshots ------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "priority": list(self.priority),
            "pending": self.pending,
            "claimed": self.claimed,
            "levels": self._levels,
            "enable": list(self.enable),
            "threshold": list(self.threshold),
        }

    def load(self, state: dict[str, Any]) -> None:
        prio = [min(int(p), PRIORITY_MAX) for p in state["priority"]][: self.num_sources]
        self.priority = prio + [0] * (self.num_sources - len(prio))
        self.pending = int(state["pending"]) & self._valid
        self.claimed = int(state["claimed"]) & self._valid
        self._levels = int(state["levels"]) & self._valid
        enable = [int(e) & self._valid for e in state["enable"]][: self.ncontexts]
        self.enable = enable + [0] * (self.ncontexts - len(enable))
        thr = [min(int(t), PRIORITY_MAX) for t in state["threshold"]][: self.ncontexts]
        self.threshold = thr + [0] * (self.ncontexts - len(thr))
        self._update(force=True)


def hart_irq_setter(harts: Sequence[np.ndarray]) -> ContextIrq:
    """A `set_context_irq` that drives MEIP/SEIP in each hart's st[EXT_IRQ]."""

    def set_context_irq(hart: int, s_mode: bool, level: bool) -> None:
        bit = 1 << (IRQ_SEI if s_mode else IRQ_MEI)
        st = harts[hart]
        if level:
            st[EXT_IRQ] |= bit
        else:
            st[EXT_IRQ] &= ~bit

    return set_context_irq

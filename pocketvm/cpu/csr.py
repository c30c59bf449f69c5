"""Control and status registers: reads, writes and their side effects.

`n` is the number of instructions the core has retired in the current run()
call and not yet added to minstret/mcycle; counter reads add it in and
counter writes subtract it, so the core only touches memory at exit
(`retire`). A cycle is one instruction here, but mcycle and minstret are
separate registers: each can be written and inhibited (mcountinhibit) on
its own.
"""

from __future__ import annotations

from pocketvm.cpu.jit import core_jit

from pocketvm.cpu.alu import srl
from pocketvm.cpu.mmu import flush_tlb
from pocketvm.cpu.state import (
    CSR,
    CSR_FCSR,
    CSR_FFLAGS,
    CSR_FRM,
    CSR_MCOUNTEREN,
    CSR_MCOUNTINHIBIT,
    CSR_MCYCLE,
    CSR_MIDELEG,
    CSR_MIE,
    CSR_MINSTRET,
    CSR_MIP,
    CSR_MSTATUS,
    CSR_SATP,
    CSR_SCOUNTEREN,
    PRIV,
)
from pocketvm.cpu.trap import current_mip, update_mtime

MSTATUS_WRITABLE = (
    (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 8) | (3 << 11) | (3 << 13)
    | (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20) | (1 << 21) | (1 << 22)
)
SSTATUS_VISIBLE = (1 << 1) | (1 << 5) | (1 << 8) | (3 << 13) | (3 << 15) | (1 << 18) | (1 << 19) | (3 << 32) | (-(1 << 63))
SSTATUS_WRITABLE = (1 << 1) | (1 << 5) | (1 << 8) | (3 << 13) | (1 << 18) | (1 << 19)
S_INTERRUPTS = 0x222
ALL_INTERRUPTS = 0xAAA
MEDELEG_WRITABLE = 0xFFFF & ~((1 << 10) | (1 << 11) | (1 << 14))
FS_DIRTY = (3 << 13) | (-(1 << 63))


@core_jit(inline="always")
def fs_off(st):
    return (st[CSR + CSR_MSTATUS] & (3 << 13)) == 0


@core_jit(inline="always")
def mark_fs_dirty(st):
    st[CSR + CSR_MSTATUS] |= FS_DIRTY


@core_jit(inline="always")
def _counting(st, counter):
    """Whether mcycle (0xB00) or minstret (0xB02) counts: mcountinhibit bit 0 / 2 clear."""
    return ((st[CSR + CSR_MCOUNTINHIBIT] >> (counter & 31)) & 1) == 0


@core_jit(inline="always")
def _counter_value(st, counter, n):
    return st[CSR + counter] + (n if _counting(st, counter) else 0)


@core_jit(inline="always")
def _counter_write(st, counter, value, n):
    # The written value replaces this instruction's own increment: the next
    # instruction reads exactly `value`. Retiring adds n + 1 (this one too).
    st[CSR + counter] = value - (n + 1 if _counting(st, counter) else 0)


@core_jit
def _inhibit_write(st, value, n):
    """mcountinhibit takes effect after the writing instruction, which still
    counts under the old setting; a counter that stops or starts is rebased
    so that reads stay continuous."""
    for counter in (CSR_MCYCLE, CSR_MINSTRET):
        was = _counting(st, counter)
        now = ((value >> (counter & 31)) & 1) == 0
        if was and not now:
            st[CSR + counter] += n + 1
        elif now and not was:
            st[CSR + counter] -= n + 1
    st[CSR + CSR_MCOUNTINHIBIT] = value


@core_jit(inline="always")
def retire(st, n):
    """Add the instructions retired in a run() call to the counters that count."""
    if _counting(st, CSR_MINSTRET):
        st[CSR + CSR_MINSTRET] += n
    if _counting(st, CSR_MCYCLE):
        st[CSR + CSR_MCYCLE] += n


@core_jit
def _counter_allowed(st, csr):
    priv = st[PRIV]
    bit = 1 << (csr & 31)
    if priv < 3 and (st[CSR + CSR_MCOUNTEREN] & bit) == 0:
        return False
    if priv == 0 and (st[CSR + CSR_SCOUNTEREN] & bit) == 0:
        return False
    return True


@core_jit
def _with_sd(mstatus):
    if (mstatus & (3 << 13)) == (3 << 13):
        return mstatus | (-(1 << 63))
    return mstatus & ~(-(1 << 63))


@core_jit
def csr_read(st, sh, csr, n):
    """Returns (ok, value); ok False means illegal instruction."""
    if csr == CSR_FFLAGS or csr == CSR_FRM or csr == CSR_FCSR:
        if fs_off(st):
            return False, 0
        fcsr = st[CSR + CSR_FCSR]
        if csr == CSR_FFLAGS:
            return True, fcsr & 0x1F
        if csr == CSR_FRM:
            return True, (fcsr >> 5) & 7
        return True, fcsr & 0xFF
    if 0xC00 <= csr <= 0xC1F:
        if not _counter_allowed(st, csr):
            return False, 0
        if csr == 0xC01:
            return True, update_mtime(sh, n)
        if csr == 0xC00 or csr == 0xC02:  # cycle / instret: read-only shadows
            return True, _counter_value(st, csr - 0x100, n)
        return True, 0
    if csr == CSR_MCYCLE or csr == CSR_MINSTRET:
        return True, _counter_value(st, csr, n)
    if 0xB03 <= csr <= 0xB1F or 0x323 <= csr <= 0x33F:
        return True, 0  # hpm counters and events: hardwired to zero
    if csr == 0x100:  # sstatus
        return True, st[CSR + CSR_MSTATUS] & SSTATUS_VISIBLE
    if csr == 0x104:  # sie
        return True, st[CSR + CSR_MIE] & st[CSR + CSR_MIDELEG]
    if csr == 0x144:  # sip
        return True, current_mip(st, sh) & st[CSR + CSR_MIDELEG]
    if csr == CSR_MIP:
        return True, current_mip(st, sh)
    if (
        csr == 0x105 or csr == 0x106 or csr == 0x10A or csr == 0x140 or csr == 0x141
        or csr == 0x142 or csr == 0x143 or csr == CSR_SATP
        or (0x300 <= csr <= 0x306) or csr == 0x30A or csr == 0x320
        or (0x340 <= csr <= 0x343)
        or (0xF11 <= csr <= 0xF15)
        or (0x3B0 <= csr <= 0x3EF)
    ):
        if csr == CSR_SATP and st[PRIV] == 1 and (st[CSR + CSR_MSTATUS] & (1 << 20)):
            return False, 0  # TVM
        return True, st[CSR + csr]
    if 0x3A0 <= csr <= 0x3AF:
        if csr & 1:  # odd pmpcfg registers do not exist on RV64
            return False, 0
        return True, st[CSR + csr]
    return False, 0


@core_jit
def csr_write(st, sh, csr, value, n):
    """Write a CSR whose existence and privilege were already checked by csr_read.

    Returns False for an illegal write.
    """
    if csr == CSR_FFLAGS or csr == CSR_FRM or csr == CSR_FCSR:
        fcsr = st[CSR + CSR_FCSR]
        if csr == CSR_FFLAGS:
            fcsr = (fcsr & ~0x1F) | (value & 0x1F)
        elif csr == CSR_FRM:
            fcsr = (fcsr & 0x1F) | ((value & 7) << 5)
        else:
            fcsr = value & 0xFF
        st[CSR + CSR_FCSR] = fcsr
        mark_fs_dirty(st)
        return True
    if csr == CSR_MCYCLE or csr == CSR_MINSTRET:
        _counter_write(st, csr, value, n)
        return True
    if csr == CSR_MCOUNTINHIBIT:
        _inhibit_write(st, value, n)
        return True
    if 0xB03 <= csr <= 0xB1F or 0x323 <= csr <= 0x33F:
        return True
    if csr == CSR_MSTATUS:
        old = st[CSR + CSR_MSTATUS]
        new = (old & ~MSTATUS_WRITABLE) | (value & MSTATUS_WRITABLE)
        if ((new >> 11) & 3) == 2:  # reserved MPP value: keep the old one
            new = (new & ~(3 << 11)) | (old & (3 << 11))
        st[CSR + CSR_MSTATUS] = _with_sd(new)
        return True
    if csr == 0x100:  # sstatus
        old = st[CSR + CSR_MSTATUS]
        st[CSR + CSR_MSTATUS] = _with_sd((old & ~SSTATUS_WRITABLE) | (value & SSTATUS_WRITABLE))
        return True
    if csr == CSR_MIE:
        st[CSR + CSR_MIE] = value & ALL_INTERRUPTS
        return True
    if csr == 0x104:  # sie
        mask = st[CSR + CSR_MIDELEG] & S_INTERRUPTS
        st[CSR + CSR_MIE] = (st[CSR + CSR_MIE] & ~mask) | (value & mask)
        return True
    if csr == CSR_MIP:
        st[CSR + CSR_MIP] = (st[CSR + CSR_MIP] & ~S_INTERRUPTS) | (value & S_INTERRUPTS)
        return True
    if csr == 0x144:  # sip: only SSIP is writable from S-mode
        mask = st[CSR + CSR_MIDELEG] & 0x2
        st[CSR + CSR_MIP] = (st[CSR + CSR_MIP] & ~mask) | (value & mask)
        return True
    if csr == CSR_MIDELEG:
        st[CSR + csr] = value & S_INTERRUPTS
        return True
    if csr == 0x302:  # medeleg
        st[CSR + csr] = value & MEDELEG_WRITABLE
        return True
    if csr == 0x305 or csr == 0x105:  # mtvec / stvec: modes >= 2 are reserved, write ignored
        if (value & 3) < 2:
            st[CSR + csr] = value
        return True
    if csr == 0x341 or csr == 0x141:  # mepc / sepc
        st[CSR + csr] = value & ~1
        return True
    if csr == 0x306 or csr == 0x106:  # counteren
        st[CSR + csr] = value & 0xFFFFFFFF
        return True
    if csr == 0x30A or csr == 0x10A:  # menvcfg / senvcfg: only FIOM
        st[CSR + csr] = value & 1
        return True
    if csr == CSR_SATP:
        mode = srl(value, 60)
        if mode == 0 or mode == 8 or mode == 9:
            st[CSR + CSR_SATP] = value
            flush_tlb(st)
        return True
    if 0x3B0 <= csr <= 0x3EF:  # pmpaddr
        st[CSR + csr] = value & ((1 << 54) - 1)
        return True
    if 0x3A0 <= csr <= 0x3AF:  # pmpcfg
        st[CSR + csr] = value
        return True
    if csr == 0x140 or csr == 0x142 or csr == 0x143 or csr == 0x340 or csr == 0x342 or csr == 0x343:
        st[CSR + csr] = value
        return True
    # misa and the read-only ID registers ignore writes.
    return True

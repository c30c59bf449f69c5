"""Traps and interrupts: delegation, entry, return, and pending-interrupt choice."""

from __future__ import annotations

from pocketvm.cpu.jit import core_jit

from pocketvm.cpu.alu import INT64_MIN, ltu
from pocketvm.cpu.state import (
    CSR,
    CSR_MCAUSE,
    CSR_MEDELEG,
    CSR_MEPC,
    CSR_MIDELEG,
    CSR_MIE,
    CSR_MIP,
    CSR_MSTATUS,
    CSR_MTVAL,
    CSR_MTVEC,
    CSR_SCAUSE,
    CSR_SEPC,
    CSR_STVAL,
    CSR_STVEC,
    EXT_IRQ,
    HART_ID,
    PRIV,
    SH_DETERMINISTIC,
    SH_INSN_PER_TICK,
    SH_MSIP,
    SH_MTIME,
    SH_MTIMECMP,
    SH_SLICE_INSNS,
    SH_TIME_BASE,
)

# Interrupt priority, highest first (privileged spec 3.1.9).
_PRIORITY = (11, 3, 7, 9, 1, 5)


# Instructions per mtime tick between two host clock readings when guest time
# follows the host (not deterministic). It must make the interpolated clock
# slower than real time: were it faster, the guest clock would run ahead, and
# since time never goes back, a guest that then sleeps (poweroff waits 1 s)
# would wait for the host clock to catch up. 100 per tick = 1000 MIPS, more
# than the core does; the next host reading then moves the clock forward.
HOST_INSN_PER_TICK = 100


@core_jit
def update_mtime(sh, n):
    """Advance mtime from the host-set base plus instructions run since (never backwards)."""
    per_tick = sh[SH_INSN_PER_TICK] if sh[SH_DETERMINISTIC] else HOST_INSN_PER_TICK
    t = sh[SH_TIME_BASE] + (sh[SH_SLICE_INSNS] + n) // per_tick
    if t > sh[SH_MTIME]:
        sh[SH_MTIME] = t
    return sh[SH_MTIME]


@core_jit
def current_mip(st, sh):
    """mip as software sees it: stored bits, device lines, CLINT timer and software interrupt."""
    hart = st[HART_ID]
    mip = st[CSR + CSR_MIP] | st[EXT_IRQ]
    if not ltu(sh[SH_MTIME], sh[SH_MTIMECMP + hart]):
        mip |= 1 << 7
    if sh[SH_MSIP + hart] & 1:
        mip |= 1 << 3
    return mip


@core_jit
def pending_interrupt(st, sh):
    """The interrupt to take now, or -1."""
    pending = current_mip(st, sh) & st[CSR + CSR_MIE]
    if pending == 0:
        return -1
    priv = st[PRIV]
    mstatus = st[CSR + CSR_MSTATUS]
    mideleg = st[CSR + CSR_MIDELEG]
    m_pending = pending & ~mideleg
    if not (priv < 3 or (mstatus & (1 << 3))):
        m_pending = 0
    s_pending = pending & mideleg
    if not (priv < 1 or (priv == 1 and (mstatus & (1 << 1)))):
        s_pending = 0
    sel = m_pending if m_pending else s_pending
    if sel == 0:
        return -1
    for cause in _PRIORITY:
        if sel & (1 << cause):
            return cause
    return -1


@core_jit
def take_trap(st, cause, tval, epc, interrupt):
    """Enter the trap handler; returns the new pc."""
    priv = st[PRIV]
    deleg = st[CSR + CSR_MIDELEG] if interrupt else st[CSR + CSR_MEDELEG]
    mcause = cause | INT64_MIN if interrupt else cause
    mstatus = st[CSR + CSR_MSTATUS]
    if priv <= 1 and (deleg >> cause) & 1:
        st[CSR + CSR_SCAUSE] = mcause
        st[CSR + CSR_SEPC] = epc
        st[CSR + CSR_STVAL] = tval
        sie = (mstatus >> 1) & 1
        mstatus = (mstatus & ~((1 << 5) | (1 << 8) | (1 << 1))) | (sie << 5) | (priv << 8)
        st[CSR + CSR_MSTATUS] = mstatus
        st[PRIV] = 1
        tvec = st[CSR + CSR_STVEC]
    else:
        st[CSR + CSR_MCAUSE] = mcause
        st[CSR + CSR_MEPC] = epc
        st[CSR + CSR_MTVAL] = tval
        mie = (mstatus >> 3) & 1
        mstatus = (mstatus & ~((1 << 7) | (3 << 11) | (1 << 3))) | (mie << 7) | (priv << 11)
        st[CSR + CSR_MSTATUS] = mstatus
        st[PRIV] = 3
        tvec = st[CSR + CSR_MTVEC]
    base = tvec & ~3
    if interrupt and (tvec & 1):
        return base + 4 * cause
    return base


@core_jit
def mret(st):
    mstatus = st[CSR + CSR_MSTATUS]
    mpp = (mstatus >> 11) & 3
    mpie = (mstatus >> 7) & 1
    mstatus = (mstatus & ~((1 << 3) | (3 << 11))) | (mpie << 3) | (1 << 7)
    if mpp != 3:
        mstatus &= ~(1 << 17)  # MPRV
    st[CSR + CSR_MSTATUS] = mstatus
    st[PRIV] = mpp
    return st[CSR + CSR_MEPC]


@core_jit
def sret(st):
    mstatus = st[CSR + CSR_MSTATUS]
    spp = (mstatus >> 8) & 1
    spie = (mstatus >> 5) & 1
    mstatus = (mstatus & ~((1 << 1) | (1 << 8) | (1 << 17))) | (spie << 1) | (1 << 5)
    st[CSR + CSR_MSTATUS] = mstatus
    st[PRIV] = spp
    return st[CSR + CSR_SEPC]

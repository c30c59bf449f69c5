"""The RV64GC interpreter loop, compiled by numba.

`run()` executes one hart until something needs the monitor and returns an
exit reason, like KVM_RUN: an MMIO access (the details are in st[EXIT_*]),
a wfi with nothing pending, or the instruction budget used up. The caller
handles the exit and calls run() again.

Read it top to bottom: fetch (with a one-page fetch cache), expand compressed
instructions (table lookup), then one branch per major opcode. Traps are
taken in place (pc moves to the handler) and never leave the loop.

What keeps it fast:
- The common instructions (integer ALU, branches, jumps, loads and stores)
  are executed inline; rare ones (CSR/SYSTEM, AMO, misaligned or device
  accesses, TLB misses) are calls, so the hot loop stays small.
- A load or store that hits the TLB (or needs no translation) indexes RAM
  directly. What decides "translation on?" and the TLB tag bits (effective
  privilege, SUM, MXR) is kept in locals and recomputed only after something
  that can change it: a trap, mret/sret, a SYSTEM instruction, run() entry.
- The fetch cache (current code page) lives in locals, invalidated at the
  same points and on sfence.vma/satp writes (which are SYSTEM instructions).
- Registers are st[0..31]; x0 is forced back to 0 after every instruction,
  which is cheaper than a branch on rd in every write.
"""

from __future__ import annotations

import numpy as np

from pocketvm.cpu.alu import (
    MASK32,
    div_signed,
    div_unsigned,
    ltu,
    mulh,
    mulhsu,
    mulhu,
    rem_signed,
    rem_unsigned,
    sext32,
    srl,
)
from pocketvm.cpu.csr import csr_read, csr_write, fs_off, mark_fs_dirty, retire
from pocketvm.cpu.fpu import fp_execute
from pocketvm.cpu.jit import core_jit
from pocketvm.cpu.mmu import ACC_FETCH, ACC_LOAD, ACC_STORE, flush_tlb, flush_tlb_page, mode_bits, tlb_slot, translate
from pocketvm.cpu.state import (
    CSR,
    CSR_MIE,
    CSR_MSTATUS,
    CSR_SATP,
    EXIT_ADDR,
    EXIT_MMIO_LOAD,
    EXIT_MMIO_STORE,
    EXIT_PC,
    EXIT_RD,
    EXIT_REASON,
    EXIT_SIZE,
    EXIT_SLICE,
    EXIT_VADDR,
    EXIT_VALUE,
    EXIT_WFI,
    F,
    MAX_HARTS,
    PC,
    PRIV,
    RAM_BASE,
    RESERVATION,
    SH_CONST_ADDR,
    SH_CONST_VALUE,
    SH_MTIMECMP,
    SH_MTIMECMP_ADDR,
    SH_NHARTS,
    SH_SINK,
    SH_SINK_ADDR,
    SH_SINK_LEN,
    SH_SLICE_INSNS,
    SINK_BYTES,
    TLB,
    TLB_ENTRIES,
    WFI_FLAG,
)
from pocketvm.cpu.tier1.layout import (
    JT_COUNT,
    JT_FN,
    JT_HOT,
    JT_KEY,
    JT_LEFT,
    JT_MODE,
    JT_NATIVE,
    JT_PROBE,
    JT_CALLS,
    JT_QLEN,
    JT_QUEUE,
    JT_RESUME,
    JT_STALE,
    JT_THRESHOLD,
    MODE_ALL,
    QUEUE_SIZE,
    QUEUED,
    may_be_cached,
    set_of,
)
from pocketvm.cpu.tier1.native_call import call_block
from pocketvm.cpu.trap import current_mip, mret, pending_interrupt, sret, take_trap, update_mtime

# How many instructions run between two looks at pending interrupts and time.
# A look costs ~100 host cycles (time interpolation divides); at 128 it was
# 7% of a Linux boot. It also ends a run of translated code (tier 1 stops
# where the budget to the next look runs out and the interpreter takes over
# up to it): at 1024 that was a quarter of all returns from translated code
# in a Linux guest's dd read; at 4096 the read is ~10% faster, 96% of it
# translated instead of 91%. 4096 instructions are still microseconds of
# guest time, and whatever can unmask an interrupt (a CSR write, mret/sret,
# wfi, run() entry after the host raised a device line) forces a look at once.
CHECK_INTERVAL = 4096

_CAUSE_FETCH_ACCESS = 1
_CAUSE_ILLEGAL = 2
_CAUSE_BREAKPOINT = 3
_CAUSE_MISALIGNED_LOAD = 4
_CAUSE_LOAD_ACCESS = 5
_CAUSE_MISALIGNED_STORE = 6
_CAUSE_STORE_ACCESS = 7

_LOAD_TLB = TLB + ACC_LOAD * 2 * TLB_ENTRIES
_STORE_TLB = TLB + ACC_STORE * 2 * TLB_ENTRIES
_NO_PAGE = 1  # a fetch-cache page that no pc can have (pages are 4096-aligned)

# Results of the out-of-line helpers.
MEM_OK = 0
MEM_FAULT = 1  # value is the trap cause
MEM_MMIO = 2  # value is the physical address

SYS_NEXT = 0  # continue at the returned pc
SYS_RECHECK = 1  # continue, and look at interrupts before the next instruction
SYS_TRAPPED = 2  # a trap was taken; the returned pc is the handler
SYS_WFI = 3  # wfi with nothing pending: exit to the host


@core_jit(inline="always")
def _read_ram(ram, ram16, ram32, ram64, off, size):
    """Little-endian unsigned read of `size` bytes at a RAM offset (any alignment)."""
    if size == 8:
        if (off & 7) == 0:
            return ram64[off >> 3]
    elif size == 4:
        if (off & 3) == 0:
            return np.int64(ram32[off >> 2])
    elif size == 2:
        if (off & 1) == 0:
            return np.int64(ram16[off >> 1])
    else:
        return np.int64(ram[off])
    v = 0
    for i in range(size):
        v |= np.int64(ram[off + i]) << (8 * i)
    return v


@core_jit(inline="always")
def _write_ram(ram, ram16, ram32, ram64, off, size, value):
    if size == 8:
        if (off & 7) == 0:
            ram64[off >> 3] = value
            return
    elif size == 4:
        if (off & 3) == 0:
            ram32[off >> 2] = value & MASK32
            return
    elif size == 2:
        if (off & 1) == 0:
            ram16[off >> 1] = value & 0xFFFF
            return
    else:
        ram[off] = value & 0xFF
        return
    for i in range(size):
        ram[off + i] = (value >> (8 * i)) & 0xFF


@core_jit(inline="always")
def _u(i):
    """An index known to be >= 0, as unsigned: numba then skips the negative-index wraparound."""
    return np.uint64(i)


@core_jit(inline="always")
def _fast_off(st, ram_size, addr, size, translated, tag, table):
    """RAM offset of an aligned access that needs no page walk, or -1.

    `translated`/`tag` come from `_data_mode`, `table` is the TLB of the
    access type. Aligned means the access cannot cross a page, and RAM pages
    are whole, so the offset is valid for all `size` bytes.
    """
    if addr & (size - 1):
        return -1
    if translated:
        slot = table + ((addr >> 11) & (2 * TLB_ENTRIES - 2))
        if st[_u(slot)] == ((addr & -4096) | tag):
            return st[_u(slot + 1)] + (addr & 0xFFF)
        return -1
    off = addr - RAM_BASE
    if off >= 0 and off < ram_size:
        return off
    return -1


@core_jit(inline="always")
def _data_mode(st):
    """(translation on for loads and stores, their TLB tag bits)."""
    priv = st[PRIV]
    mstatus = st[CSR + CSR_MSTATUS]
    paging = (st[CSR + CSR_SATP] >> 60) != 0
    eff = priv
    if priv == 3 and (mstatus & (1 << 17)):  # MPRV
        eff = (mstatus >> 11) & 3
    return paging and eff != 3, mode_bits(eff, mstatus)


@core_jit
def _access(st, ram64, ram_size, addr, size, acc):
    """Translate an access of `size` bytes that stays within one page.

    Returns (ram_offset, physical_address, fault_cause): ram_offset is -1 for
    an address outside RAM (an MMIO access); fault_cause is -1 when there is
    no fault, and a fault's trap value is `addr`. Accesses that cross a page
    go through `_cross_page`, which knows which half faulted.
    """
    pa = translate(st, ram64, ram_size, addr, acc)
    if pa < 0:
        return -1, 0, -pa - 1
    off = pa - RAM_BASE
    if off >= 0 and off + size <= ram_size:
        return off, pa, -1
    return -1, pa, -1


@core_jit(inline="always")
def _record_mmio(st, pc, npc, vaddr, paddr, size):
    """What the monitor needs to perform an MMIO access; pc already moves past it."""
    st[PC] = npc
    st[EXIT_PC] = pc
    st[EXIT_VADDR] = vaddr
    st[EXIT_ADDR] = paddr
    st[EXIT_SIZE] = size


@core_jit(inline="always")
def _sink_store(sh, paddr, size, value):
    """Keep a device store in the sink instead of exiting (see state.SH_SINK_ADDR);
    False when this store is not one the monitor armed, or the sink is full."""
    n = sh[SH_SINK_LEN]
    if paddr != sh[SH_SINK_ADDR] or size != 1 or not 0 <= n < SINK_BYTES or paddr == 0:
        return False
    slot = SH_SINK + (n >> 3)
    shift = (n & 7) * 8
    if shift == 0:
        sh[slot] = value & 0xFF
    else:
        sh[slot] |= (value & 0xFF) << shift
    sh[SH_SINK_LEN] = n + 1
    return True


@core_jit(inline="always")
def _timer_store(sh, paddr, size, value):
    """Keep a store to a hart's mtimecmp in sh, as the CLINT does (see
    state.SH_MTIMECMP_ADDR); False for any other store, or while disarmed."""
    base = sh[SH_MTIMECMP_ADDR]
    rel = paddr - base
    harts = min(sh[SH_NHARTS], MAX_HARTS)
    if base == 0 or size != 8 or rel < 0 or rel >= 8 * harts or (rel & 7) != 0:
        return False
    sh[SH_MTIMECMP + (rel >> 3)] = value
    return True


@core_jit
def _cross_page(st, ram64, ram_size, addr, size, acc):
    """Both halves of a misaligned access that crosses a page boundary.

    The two virtual pages may map to unrelated physical pages, so each half is
    translated on its own; both must be RAM (a split MMIO access faults), and
    both translations succeed before anything is written.
    Returns (offset of the first half, offset of the second, length of the
    first, fault cause or -1, trap value). The privileged spec wants the
    trap value to be the virtual address of the portion that faulted: when
    the second page faults that is its first byte, not `addr`. (With `addr`,
    Linux finds the first page mapped, fixes nothing and the access faults
    again forever.)
    """
    len1 = 0x1000 - (addr & 0xFFF)
    addr2 = addr + len1
    pa1 = translate(st, ram64, ram_size, addr, acc)
    if pa1 < 0:
        return -1, -1, len1, -pa1 - 1, addr
    pa2 = translate(st, ram64, ram_size, addr2, acc)
    if pa2 < 0:
        return -1, -1, len1, -pa2 - 1, addr2
    off1 = pa1 - RAM_BASE
    off2 = pa2 - RAM_BASE
    access_fault = _CAUSE_LOAD_ACCESS if acc == ACC_LOAD else _CAUSE_STORE_ACCESS
    if off1 < 0 or off1 + len1 > ram_size:
        return -1, -1, len1, access_fault, addr
    if off2 < 0 or off2 + size - len1 > ram_size:
        return -1, -1, len1, access_fault, addr2
    return off1, off2, len1, -1, 0


@core_jit
def _load_slow(st, ram, ram16, ram32, ram64, addr, size):
    """A load the fast path could not do: (MEM_*, unsigned value | cause | physical address,
    trap value of a fault)."""
    if ((addr + size - 1) ^ addr) & ~0xFFF:
        off1, off2, len1, fault, tval = _cross_page(st, ram64, ram.shape[0], addr, size, ACC_LOAD)
        if fault >= 0:
            return MEM_FAULT, fault, tval
        v = 0
        for i in range(size):
            o = off1 + i if i < len1 else off2 + (i - len1)
            v |= np.int64(ram[o]) << (8 * i)
        return MEM_OK, v, 0
    off, pa, fault = _access(st, ram64, ram.shape[0], addr, size, ACC_LOAD)
    if fault >= 0:
        return MEM_FAULT, fault, addr
    if off < 0:
        return MEM_MMIO, pa, addr
    return MEM_OK, _read_ram(ram, ram16, ram32, ram64, off, size), 0


@core_jit
def _store_slow(st, ram, ram16, ram32, ram64, addr, size, value):
    """A store the fast path could not do: (MEM_*, 0 | cause | physical address,
    trap value of a fault)."""
    if ((addr + size - 1) ^ addr) & ~0xFFF:
        off1, off2, len1, fault, tval = _cross_page(st, ram64, ram.shape[0], addr, size, ACC_STORE)
        if fault >= 0:
            return MEM_FAULT, fault, tval
        for i in range(size):
            o = off1 + i if i < len1 else off2 + (i - len1)
            ram[o] = (value >> (8 * i)) & 0xFF
        return MEM_OK, 0, 0
    off, pa, fault = _access(st, ram64, ram.shape[0], addr, size, ACC_STORE)
    if fault >= 0:
        return MEM_FAULT, fault, addr
    if off < 0:
        return MEM_MMIO, pa, addr
    _write_ram(ram, ram16, ram32, ram64, off, size, value)
    return MEM_OK, 0, 0


@core_jit
def _amo(st, ram, ram16, ram32, ram64, insn, pc):
    """LR/SC and AMO*.W/D. Returns -1 on success, else the trap cause (tval is
    the address, except for an illegal instruction)."""
    f3 = (insn >> 12) & 7
    rd = (insn >> 7) & 31
    rs1 = (insn >> 15) & 31
    rs2 = (insn >> 20) & 31
    if f3 != 2 and f3 != 3:
        return _CAUSE_ILLEGAL
    size = 4 if f3 == 2 else 8
    funct5 = (insn >> 27) & 31
    addr = st[rs1]
    if funct5 == 2 and rs2 != 0:
        return _CAUSE_ILLEGAL
    if funct5 != 2 and funct5 != 3 and funct5 != 0 and funct5 != 1 and funct5 != 4:
        if funct5 != 0x0C and funct5 != 0x08 and funct5 != 0x10 and funct5 != 0x14:
            if funct5 != 0x18 and funct5 != 0x1C:
                return _CAUSE_ILLEGAL
    if addr & (size - 1):
        return _CAUSE_MISALIGNED_LOAD if funct5 == 2 else _CAUSE_MISALIGNED_STORE
    acc = ACC_LOAD if funct5 == 2 else ACC_STORE
    off, pa, fault = _access(st, ram64, ram.shape[0], addr, size, acc)
    if fault < 0 and off < 0:
        fault = _CAUSE_LOAD_ACCESS if funct5 == 2 else _CAUSE_STORE_ACCESS
    if fault >= 0:
        return fault
    if size == 4:
        old = sext32(np.int64(ram32[off >> 2]))
    else:
        old = ram64[off >> 3]
    b = st[rs2]
    if funct5 == 2:  # lr
        st[RESERVATION] = pa
        st[rd] = old
        return -1
    if funct5 == 3:  # sc
        if st[RESERVATION] == pa:
            _write_ram(ram, ram16, ram32, ram64, off, size, b)
            st[rd] = 0
        else:
            st[rd] = 1
        st[RESERVATION] = -1
        return -1
    if size == 4:
        b = sext32(b)
    if funct5 == 0:
        new = old + b
    elif funct5 == 1:
        new = b
    elif funct5 == 4:
        new = old ^ b
    elif funct5 == 0x0C:
        new = old & b
    elif funct5 == 0x08:
        new = old | b
    elif funct5 == 0x10:
        new = old if old < b else b
    elif funct5 == 0x14:
        new = old if old > b else b
    elif funct5 == 0x18:
        if size == 4:
            new = old if (old & MASK32) < (b & MASK32) else b
        else:
            new = old if ltu(old, b) else b
    else:  # 0x1C
        if size == 4:
            new = old if (old & MASK32) > (b & MASK32) else b
        else:
            new = b if ltu(old, b) else old
    _write_ram(ram, ram16, ram32, ram64, off, size, new)
    st[rd] = old
    return -1


@core_jit
def _system(st, sh, insn, pc, npc, n):
    """SYSTEM opcode: ecall/ebreak/xret/wfi/sfence.vma and the CSR instructions.

    Returns (pc to continue at, SYS_*). Traps are taken here.
    """
    rd = (insn >> 7) & 31
    f3 = (insn >> 12) & 7
    rs1 = (insn >> 15) & 31
    priv = st[PRIV]
    illegal = False
    code = SYS_NEXT
    if f3 == 0:
        if insn == 0x00000073:  # ecall
            return take_trap(st, 8 + priv, 0, pc, False), SYS_TRAPPED
        elif insn == 0x00100073:  # ebreak
            return take_trap(st, _CAUSE_BREAKPOINT, pc, pc, False), SYS_TRAPPED
        elif insn == 0x30200073:  # mret
            if priv < 3:
                illegal = True
            else:
                return mret(st), SYS_RECHECK
        elif insn == 0x10200073:  # sret
            if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 22))):
                illegal = True
            else:
                return sret(st), SYS_RECHECK
        elif insn == 0x10500073:  # wfi
            if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 21))):
                illegal = True
            else:
                update_mtime(sh, n)
                if (current_mip(st, sh) & st[CSR + CSR_MIE]) == 0:
                    st[WFI_FLAG] = 1
                    return npc, SYS_WFI
                code = SYS_RECHECK
        elif ((insn >> 25) & 0x7F) == 0x09 and rd == 0:  # sfence.vma
            if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 20))):
                illegal = True
            elif rs1 != 0:  # one address (of every address space: ASIDs are not kept apart)
                flush_tlb_page(st, st[rs1])
            else:
                flush_tlb(st)
        else:
            illegal = True
    elif f3 == 4:
        illegal = True
    else:
        csr = (insn >> 20) & 0xFFF
        if ((csr >> 8) & 3) > priv:
            illegal = True
        else:
            src = rs1 if f3 >= 5 else st[rs1]
            op = f3 & 3
            writes = op == 1 or rs1 != 0
            if writes and (csr >> 10) == 3:
                illegal = True
            else:
                ok, old = csr_read(st, sh, csr, n)
                if not ok:
                    illegal = True
                else:
                    if writes:
                        # A read-modify-write of mip/sip works on the
                        # software-writable bits, not on the device lines
                        # and timer bits ORed into what a read returns.
                        base = old
                        if csr == 0x344 or csr == 0x144:
                            base = st[CSR + 0x344]
                        if op == 1:
                            new = src
                        elif op == 2:
                            new = base | src
                        else:
                            new = base & ~src
                        csr_write(st, sh, csr, new, n)
                        code = SYS_RECHECK
                    st[rd] = old
    if illegal:
        return take_trap(st, _CAUSE_ILLEGAL, insn & MASK32, pc, False), SYS_TRAPPED
    return npc, code


@core_jit(inline="always")
def _fetch_fast(st, ram_size, pc):
    """`_fetch_page` where it needs no page walk (the fetch TLB has the page,
    or there is no translation), else -1: inline, the call with its array
    arguments cost more than the look-up (a guest dd read spent ~5% in it,
    calling it each time translated code handed back in another page)."""
    priv = st[PRIV]
    if priv != 3 and (st[CSR + CSR_SATP] >> 60) != 0:
        slot = tlb_slot(pc, ACC_FETCH)
        if st[_u(slot)] == ((pc & -4096) | mode_bits(priv, st[CSR + CSR_MSTATUS])):
            return st[_u(slot + 1)]
        return -1
    off = (pc & -4096) - RAM_BASE
    if off >= 0 and off < ram_size:
        return off
    return -1


@core_jit
def _fetch_page(st, ram64, ram_size, pc):
    """RAM offset of pc's page for the fetch cache, or -(cause + 1)."""
    pa = translate(st, ram64, ram_size, pc, ACC_FETCH)
    if pa < 0:
        return pa
    off = pa - RAM_BASE
    if off < 0 or off >= ram_size:
        return -(_CAUSE_FETCH_ACCESS + 1)
    return off - (pc & 0xFFF)


@core_jit(inline="always")
def _credit(jt, ram16, cset, ckey, ran):
    """Count `ran` more instructions interpreted from the entry of block `ckey`
    (of set `cset`, -1: none) and queue it when that makes it hot (True then):
    at JT_THRESHOLD if the cache index may have it, else at JT_PROBE (`layout`)."""
    if cset >= 0 and ran > 0:
        hot = jt[_u(JT_COUNT + cset)] + ran
        jt[_u(JT_COUNT + cset)] = hot
        if (
            hot >= jt[JT_THRESHOLD]
            and jt[JT_QLEN] < QUEUE_SIZE
            and (hot >= jt[JT_PROBE] or may_be_cached(jt, ram16, ckey))
        ):
            jt[_u(JT_QUEUE + jt[JT_QLEN])] = ckey
            jt[JT_QLEN] += 1
            jt[_u(JT_COUNT + cset)] = QUEUED
            return True
    return False


@core_jit(inline="always")
def _after_miss(jc):
    """Where to look next when no block ran at this pc (see `jc` in run())."""
    if jc == 2:
        return 4
    if jc == 1:
        return 0
    return 3


@core_jit
def run(st, stf64, stf32, sh, ram, ram16, ram32, ram64, ctab, budget, jt):
    """Run the hart for at most `budget` instructions. Returns an exit reason.

    `ctab` is `pocketvm.cpu.rvc.expansion_table()`. Traps count against the
    budget too, so a guest stuck in a trap loop still comes back to the host.
    `jt` is the tier-1 translation table (`pocketvm.cpu.tier1.layout`).
    """
    ram_size = ram.shape[0]
    pc = st[PC]
    n = 0
    limit = 0  # next look at interrupts and time, at n == limit (<= budget)
    # Tier 1: `jc` says where to look for a translated block: 0 not here,
    # 1 at this pc (a block entry: jump target, trap handler, ...), counting
    # an entry on a miss. Where translated code handed back control (2) the
    # interpreter counts entries here and at the next instruction (4: a
    # block may stop before an instruction it does not translate), then
    # looks at every instruction without counting (3) until the next jump:
    # it is in straight-line code that translated blocks cover further on
    # (a long body cut at a region's size, where the next block starts a
    # few instructions on, or the rest of a block the budget stopped),
    # which it used to interpret up to the next taken branch.
    jon = 1 if jt[JT_MODE] != 0 else 0
    jc = jon
    if jon and jt[JT_RESUME] > 0:  # continuing after an early stop (see JT_LEFT)
        limit = jt[JT_RESUME]
        jt[JT_RESUME] = 0
    reason = EXIT_SLICE
    dx, dtag = _data_mode(st)
    fpage = _NO_PAGE  # virtual page (address) of the fetch cache
    fdelta = 0  # RAM offset minus virtual address within that page
    trap_cause = -1
    trap_tval = 0
    # The block whose entry was counted last (its set, its key, n then): the
    # instructions interpreted from there until the next counted entry or
    # call of translated code count towards it, so a long body entered
    # rarely gets as hot as a short one entered often.
    cset = -1
    ckey = 0
    cn = 0
    while True:
        # --- budget, interrupts and time (one compare per instruction) -------
        if n >= limit:
            if n >= budget:
                break
            limit = min(n + CHECK_INTERVAL, budget)
            update_mtime(sh, n)
            cause = pending_interrupt(st, sh)
            if cause >= 0:
                pc = take_trap(st, cause, 0, pc, True)
                st[WFI_FLAG] = 0
                dx, dtag = _data_mode(st)
                fpage = _NO_PAGE
                jc = jon

        # --- fetch ----------------------------------------------------------
        if (pc & -4096) != fpage:
            base = _fetch_fast(st, ram_size, pc)
            if base < 0:
                base = _fetch_page(st, ram64, ram_size, pc)
            if base < 0:
                trap_cause = -base - 1
                trap_tval = pc
            else:
                fpage = pc & -4096
                fdelta = base - fpage
        if trap_cause < 0:
            off = pc + fdelta
            if jc != 0:
                jset = set_of(off)
                jslot = 2 * jset
                jkey = off * 2 + (1 if dx else 0)
                if jt[_u(JT_KEY + jslot)] != jkey:
                    jslot += 1  # the table is 2-way set associative (`layout`)
                if jt[_u(JT_KEY + jslot)] == jkey:
                    jfn = jt[_u(JT_FN + jslot)]
                    if jfn != 0:
                        _credit(jt, ram16, cset, ckey, n - cn - 1)
                        cset = -1
                        r = call_block(jfn, st, ram, ram_size, pc, 1 if dx else 0, dtag, limit - n, jt, off)
                        jt[JT_CALLS] += 1
                        if r > 0:
                            # Instructions run from this entry: the VM has blocks that ran
                            # JT_UPGRADE of them compiled better (`Tier1._ask_for_upgrades`).
                            jt[_u(JT_HOT + jslot)] += r
                            jt[JT_NATIVE] += r
                            n += r
                            pc = st[PC]
                            jc = 2
                            continue
                        if r < 0:  # the code changed: translate it again once hot
                            jt[_u(JT_KEY + jslot)] = -1
                            jt[_u(JT_HOT + jslot)] = 0
                            jt[JT_STALE] += 1
                    jc = _after_miss(jc)
                elif jc == 3:
                    pass  # looking on, not counting
                else:
                    jc = _after_miss(jc)
                    _credit(jt, ram16, cset, ckey, n - cn - 1)
                    cset = jset
                    ckey = jkey
                    cn = n
                    if _credit(jt, ram16, jset, jkey, 1) and jt[JT_MODE] == MODE_ALL:
                        # Translate it now: Hart.run() installs it and calls run() again.
                        jt[JT_LEFT] = budget - n
                        jt[JT_RESUME] = limit - n
                        break
            insn = np.int64(ram16[_u(off >> 1)])
            if (insn & 3) == 3:
                if (pc & 0xFFF) == 0xFFE:
                    base = _fetch_page(st, ram64, ram_size, pc + 2)
                    if base < 0:
                        trap_cause = -base - 1
                        trap_tval = pc + 2
                    else:
                        hi = np.int64(ram16[(base + ((pc + 2) & 0xFFF)) >> 1])
                        insn |= ((hi << 48) >> 32)
                else:
                    insn |= (np.int64(ram16[_u((off >> 1) + 1)]) << 48) >> 32
                npc = pc + 4
            else:
                raw = insn
                insn = np.int64(ctab[insn])
                if insn == 0:
                    trap_cause = _CAUSE_ILLEGAL
                    trap_tval = raw
                npc = pc + 2

        if trap_cause < 0:
            # insn holds the 32-bit instruction sign-extended, so the I/S/B/J/U
            # immediates come out signed from arithmetic shifts.
            opcode = insn & 0x7F
            rd = (insn >> 7) & 31
            f3 = (insn >> 12) & 7
            rs1 = (insn >> 15) & 31
            rs2 = (insn >> 20) & 31
            illegal = False

            if opcode == 0x13:  # OP-IMM
                a = st[rs1]
                imm = insn >> 20
                if f3 == 0:
                    st[rd] = a + imm
                elif f3 == 1:
                    if ((insn >> 26) & 0x3F) != 0:
                        illegal = True
                    else:
                        st[rd] = a << (imm & 63)
                elif f3 == 2:
                    st[rd] = 1 if a < imm else 0
                elif f3 == 3:
                    st[rd] = 1 if ltu(a, imm) else 0
                elif f3 == 4:
                    st[rd] = a ^ imm
                elif f3 == 5:
                    top = (insn >> 26) & 0x3F
                    if top == 0:
                        st[rd] = srl(a, imm & 63)
                    elif top == 0x10:
                        st[rd] = a >> (imm & 63)
                    else:
                        illegal = True
                elif f3 == 6:
                    st[rd] = a | imm
                else:
                    st[rd] = a & imm
            elif opcode == 0x03:  # LOAD
                addr = st[rs1] + (insn >> 20)
                if f3 == 7:
                    illegal = True
                else:
                    size = 1 << (f3 & 3)
                    off = _fast_off(st, ram_size, addr, size, dx, dtag, _LOAD_TLB)
                    if off >= 0:
                        if size == 8:
                            v = ram64[_u(off >> 3)]
                        elif size == 4:
                            v = np.int64(ram32[_u(off >> 2)])
                        elif size == 2:
                            v = np.int64(ram16[_u(off >> 1)])
                        else:
                            v = np.int64(ram[_u(off)])
                    else:
                        kind, v, tval = _load_slow(st, ram, ram16, ram32, ram64, addr, size)
                        if kind == MEM_FAULT:
                            trap_cause = v
                            trap_tval = tval
                        elif kind == MEM_MMIO:
                            if v == sh[SH_CONST_ADDR] and size == 1 and v != 0:
                                v = sh[SH_CONST_VALUE]
                            else:
                                _record_mmio(st, pc, npc, addr, v, size)
                                st[EXIT_RD] = rd | (256 if f3 < 4 else 0)
                                reason = EXIT_MMIO_LOAD
                                n += 1
                                break
                    if f3 == 0:
                        v = ((v & 0xFF) ^ 0x80) - 0x80
                    elif f3 == 1:
                        v = ((v & 0xFFFF) ^ 0x8000) - 0x8000
                    elif f3 == 2:
                        v = sext32(v)
                    if trap_cause < 0:
                        st[rd] = v
            elif opcode == 0x23:  # STORE
                addr = st[rs1] + (((insn >> 25) << 5) | ((insn >> 7) & 31))
                if f3 > 3:
                    illegal = True
                else:
                    size = 1 << f3
                    v = st[rs2]
                    off = _fast_off(st, ram_size, addr, size, dx, dtag, _STORE_TLB)
                    if off >= 0:
                        if size == 8:
                            ram64[_u(off >> 3)] = v
                        elif size == 4:
                            ram32[_u(off >> 2)] = v & MASK32
                        elif size == 2:
                            ram16[_u(off >> 1)] = v & 0xFFFF
                        else:
                            ram[_u(off)] = v & 0xFF
                    else:
                        kind, pa, tval = _store_slow(st, ram, ram16, ram32, ram64, addr, size, v)
                        if kind == MEM_FAULT:
                            trap_cause = pa
                            trap_tval = tval
                        elif kind == MEM_MMIO and not _sink_store(sh, pa, size, v) and not _timer_store(sh, pa, size, v):
                            _record_mmio(st, pc, npc, addr, pa, size)
                            st[EXIT_VALUE] = v
                            reason = EXIT_MMIO_STORE
                            n += 1
                            break
            elif opcode == 0x33:  # OP
                a = st[rs1]
                b = st[rs2]
                f7 = (insn >> 25) & 0x7F
                if f7 == 0:
                    if f3 == 0:
                        st[rd] = a + b
                    elif f3 == 1:
                        st[rd] = a << (b & 63)
                    elif f3 == 2:
                        st[rd] = 1 if a < b else 0
                    elif f3 == 3:
                        st[rd] = 1 if ltu(a, b) else 0
                    elif f3 == 4:
                        st[rd] = a ^ b
                    elif f3 == 5:
                        st[rd] = srl(a, b & 63)
                    elif f3 == 6:
                        st[rd] = a | b
                    else:
                        st[rd] = a & b
                elif f7 == 0x20:
                    if f3 == 0:
                        st[rd] = a - b
                    elif f3 == 5:
                        st[rd] = a >> (b & 63)
                    else:
                        illegal = True
                elif f7 == 1:
                    if f3 == 0:
                        st[rd] = a * b
                    elif f3 == 1:
                        st[rd] = mulh(a, b)
                    elif f3 == 2:
                        st[rd] = mulhsu(a, b)
                    elif f3 == 3:
                        st[rd] = mulhu(a, b)
                    elif f3 == 4:
                        st[rd] = div_signed(a, b)
                    elif f3 == 5:
                        st[rd] = div_unsigned(a, b)
                    elif f3 == 6:
                        st[rd] = rem_signed(a, b)
                    else:
                        st[rd] = rem_unsigned(a, b)
                else:
                    illegal = True
            elif opcode == 0x63:  # BRANCH
                a = st[rs1]
                b = st[rs2]
                if f3 == 0:
                    taken = a == b
                elif f3 == 1:
                    taken = a != b
                elif f3 == 4:
                    taken = a < b
                elif f3 == 5:
                    taken = a >= b
                elif f3 == 6:
                    taken = ltu(a, b)
                elif f3 == 7:
                    taken = not ltu(a, b)
                else:
                    illegal = True
                    taken = False
                if taken:
                    jc = jon
                    npc = pc + (
                        ((insn >> 31) << 12)
                        | (((insn >> 7) & 1) << 11)
                        | (((insn >> 25) & 0x3F) << 5)
                        | (((insn >> 8) & 0xF) << 1)
                    )
            elif opcode == 0x1B:  # OP-IMM-32
                a = st[rs1]
                imm = insn >> 20
                if f3 == 0:
                    st[rd] = sext32(a + imm)
                elif f3 == 1:
                    if ((insn >> 25) & 0x7F) != 0:
                        illegal = True
                    else:
                        st[rd] = sext32(a << (imm & 31))
                elif f3 == 5:
                    f7 = (insn >> 25) & 0x7F
                    if f7 == 0:
                        st[rd] = sext32(srl(a & MASK32, imm & 31))
                    elif f7 == 0x20:
                        st[rd] = sext32(a) >> (imm & 31)
                    else:
                        illegal = True
                else:
                    illegal = True
            elif opcode == 0x3B:  # OP-32
                a = st[rs1]
                b = st[rs2]
                f7 = (insn >> 25) & 0x7F
                if f7 == 0:
                    if f3 == 0:
                        st[rd] = sext32(a + b)
                    elif f3 == 1:
                        st[rd] = sext32(a << (b & 31))
                    elif f3 == 5:
                        st[rd] = sext32(srl(a & MASK32, b & 31))
                    else:
                        illegal = True
                elif f7 == 0x20:
                    if f3 == 0:
                        st[rd] = sext32(a - b)
                    elif f3 == 5:
                        st[rd] = sext32(a) >> (b & 31)
                    else:
                        illegal = True
                elif f7 == 1:
                    if f3 == 0:
                        st[rd] = sext32(a * b)
                    elif f3 == 4:
                        # 64-bit division of the sign-extended halves gives the
                        # 32-bit results, overflow and division by zero included.
                        st[rd] = sext32(div_signed(sext32(a), sext32(b)))
                    elif f3 == 5:
                        st[rd] = sext32(div_unsigned(a & MASK32, b & MASK32))
                    elif f3 == 6:
                        st[rd] = sext32(rem_signed(sext32(a), sext32(b)))
                    elif f3 == 7:
                        st[rd] = sext32(rem_unsigned(a & MASK32, b & MASK32))
                    else:
                        illegal = True
                else:
                    illegal = True
            elif opcode == 0x37:  # LUI
                st[rd] = insn & -4096
            elif opcode == 0x17:  # AUIPC
                st[rd] = pc + (insn & -4096)
            elif opcode == 0x6F:  # JAL
                jc = jon
                st[rd] = npc
                npc = pc + (
                    ((insn >> 31) << 20)
                    | (insn & 0xFF000)
                    | (((insn >> 20) & 1) << 11)
                    | (((insn >> 21) & 0x3FF) << 1)
                )
            elif opcode == 0x67:  # JALR
                if f3 != 0:
                    illegal = True
                else:
                    target = (st[rs1] + (insn >> 20)) & -2
                    st[rd] = npc
                    npc = target
                    jc = jon
            elif opcode == 0x2F:  # AMO
                cause = _amo(st, ram, ram16, ram32, ram64, insn, pc)
                if cause == _CAUSE_ILLEGAL:
                    illegal = True
                elif cause >= 0:
                    trap_cause = cause
                    trap_tval = st[rs1]
            elif opcode == 0x0F:  # MISC-MEM: fence / fence.i (no caches to sync)
                if f3 > 1:
                    illegal = True
            elif opcode == 0x73:  # SYSTEM
                npc, code = _system(st, sh, insn, pc, npc, n)
                dx, dtag = _data_mode(st)
                fpage = _NO_PAGE
                # Tier 1 translates no SYSTEM instruction: what follows is where
                # translated code goes on, as after a hand-back (`jc` above).
                jc = jon + jon
                if code == SYS_TRAPPED:
                    st[0] = 0
                    pc = npc
                    budget -= 1
                    limit = min(limit, budget)
                    continue
                if code == SYS_WFI:
                    st[PC] = npc
                    reason = EXIT_WFI
                    n += 1
                    break
                if code == SYS_RECHECK:
                    limit = n + 1  # after this instruction retires
            elif opcode == 0x07:  # LOAD-FP
                if (f3 != 2 and f3 != 3) or fs_off(st):
                    illegal = True
                else:
                    addr = st[rs1] + (insn >> 20)
                    size = 4 if f3 == 2 else 8
                    off = _fast_off(st, ram_size, addr, size, dx, dtag, _LOAD_TLB)
                    if off >= 0:
                        v = ram64[off >> 3] if size == 8 else np.int64(ram32[off >> 2])
                    else:
                        kind, v, tval = _load_slow(st, ram, ram16, ram32, ram64, addr, size)
                        if kind != MEM_OK:
                            # FP accesses to devices are not offered: an access fault.
                            trap_cause = v if kind == MEM_FAULT else _CAUSE_LOAD_ACCESS
                            trap_tval = tval
                    if trap_cause < 0:
                        if size == 4:
                            v = (v & MASK32) | (-1 << 32)
                        st[F + rd] = v
                        mark_fs_dirty(st)
            elif opcode == 0x27:  # STORE-FP
                if (f3 != 2 and f3 != 3) or fs_off(st):
                    illegal = True
                else:
                    addr = st[rs1] + (((insn >> 25) << 5) | ((insn >> 7) & 31))
                    size = 4 if f3 == 2 else 8
                    v = st[F + rs2]
                    off = _fast_off(st, ram_size, addr, size, dx, dtag, _STORE_TLB)
                    if off >= 0:
                        if size == 8:
                            ram64[off >> 3] = v
                        else:
                            ram32[off >> 2] = v & MASK32
                    else:
                        kind, pa, tval = _store_slow(st, ram, ram16, ram32, ram64, addr, size, v)
                        if kind != MEM_OK:
                            trap_cause = pa if kind == MEM_FAULT else _CAUSE_STORE_ACCESS
                            trap_tval = tval
            elif opcode == 0x53 or opcode == 0x43 or opcode == 0x47 or opcode == 0x4B or opcode == 0x4F:
                if fs_off(st) or fp_execute(st, stf64, stf32, insn & MASK32) != 0:
                    illegal = True
            else:
                illegal = True

            if illegal:
                trap_cause = _CAUSE_ILLEGAL
                trap_tval = insn & MASK32 if npc == pc + 4 else np.int64(ram16[(pc + fdelta) >> 1])

        if trap_cause >= 0:
            st[0] = 0
            pc = take_trap(st, trap_cause, trap_tval, pc, False)
            trap_cause = -1
            dx, dtag = _data_mode(st)
            fpage = _NO_PAGE
            jc = jon
            budget -= 1
            limit = min(limit, budget)
            continue
        st[0] = 0
        pc = npc
        n += 1

    st[0] = 0
    if reason == EXIT_SLICE:
        st[PC] = pc
    st[EXIT_REASON] = reason
    retire(st, n)
    sh[SH_SLICE_INSNS] += n
    return reason


@core_jit(nogil=True)
def run_released(st, stf64, stf32, sh, ram, ram16, ram32, ram64, ctab, budget, jt):
    """run() without holding the GIL, for harts with tier 1 (its compiler
    thread runs meanwhile). Without tier 1 the GIL stays held, as devices
    and other threads have always seen it."""
    return run(st, stf64, stf32, sh, ram, ram16, ram32, ram64, ctab, budget, jt)

"""Address translation: Sv39/Sv48 page-table walker and a software TLB.

The TLB is direct mapped, one table per access type (fetch, load, store),
living inside the hart's state array at st[TLB:]. An entry is two int64s:
the tag, which is the virtual page address ORed with `mode_bits` (the
effective privilege and mstatus.SUM/MXR), and the RAM offset of the physical
page. Folding the mode into the tag means toggling SUM (Linux does around
every user copy) never needs a flush; only satp writes and sfence.vma do.

An entry covers one 4 KiB page even when its leaf PTE maps a superpage;
st[TLB_SPAN] records the size of that leaf for each entry, so that an
sfence.vma for one address drops every entry made from the leaf that maps
it (the whole superpage) and nothing else: Linux fences single kernel
addresses (fixmap updates) tens of thousands of times in a boot, and
flushing the whole TLB each time made the hot kernel pages miss again.
Looking at every entry for such a fence costs microseconds at 3 x 1024
entries, so the hart also keeps the range of virtual addresses that its
superpage entries map (st[TLB_BIG_LO..TLB_BIG_HI], Linux's linear map and
kernel image): a fence outside it can only concern an entry made from a
4 KiB leaf, which is in the one slot of each table its address indexes.

Only pages in RAM are entered, so the core's inlined fast path (see
`pocketvm.cpu.core`) can index RAM with a hit directly; device pages are
walked on every access, which is rare. A store entry is only filled once the
PTE's D bit is set, so a store that hits the TLB never needs to update the
page table.

Like QEMU, the walker sets A and D in hardware instead of faulting.
"""

from __future__ import annotations

from pocketvm.cpu.jit import core_jit

from pocketvm.cpu.alu import srl
from pocketvm.cpu.state import (
    CSR,
    CSR_MSTATUS,
    CSR_SATP,
    NO_BIG_HI,
    NO_BIG_LO,
    PRIV,
    TLB_BIG_HI,
    TLB_BIG_LO,
    RAM_BASE,
    TLB,
    TLB_ENTRIES,
    TLB_SIZE,
    TLB_SPAN,
)

ACC_FETCH = 0
ACC_LOAD = 1
ACC_STORE = 2

PTE_V = 1
PTE_R = 2
PTE_W = 4
PTE_X = 8
PTE_U = 16
PTE_A = 64
PTE_D = 128

PPN_MASK = (1 << 44) - 1
# Fault results are negative: -(cause + 1).
FAULT_BASE = -1


@core_jit
def flush_tlb(st):
    for i in range(TLB, TLB + TLB_SIZE):
        st[i] = -1
    st[TLB_BIG_LO] = NO_BIG_LO
    st[TLB_BIG_HI] = NO_BIG_HI


@core_jit
def flush_tlb_page(st, vaddr):
    """sfence.vma for one address: drop the entries made from a leaf PTE that maps `vaddr`."""
    if vaddr < st[TLB_BIG_LO] or vaddr > st[TLB_BIG_HI]:
        # No superpage entry maps it: only a 4 KiB one can, in its slot of each table.
        for acc in range(3):
            slot = tlb_slot(vaddr, acc)
            if st[slot] != -1 and ((st[slot] ^ vaddr) >> 12) == 0:
                st[slot] = -1
        return
    for e in range(TLB_SIZE // 2):
        tag = st[TLB + 2 * e]
        if tag == -1:
            continue
        shift = st[TLB_SPAN + e]
        if shift < 12 or shift > 63:  # not recorded (cannot happen after a fill): assume the largest
            shift = 63
        if ((tag ^ vaddr) >> shift) == 0:
            st[TLB + 2 * e] = -1


@core_jit(inline="always")
def _page_fault(acc):
    if acc == ACC_FETCH:
        return -(12 + 1)
    if acc == ACC_LOAD:
        return -(13 + 1)
    return -(15 + 1)


@core_jit(inline="always")
def _access_fault(acc):
    if acc == ACC_FETCH:
        return -(1 + 1)
    if acc == ACC_LOAD:
        return -(5 + 1)
    return -(7 + 1)


@core_jit(inline="always")
def effective_priv(st, acc):
    priv = st[PRIV]
    if acc != ACC_FETCH and priv == 3:
        mstatus = st[CSR + CSR_MSTATUS]
        if mstatus & (1 << 17):  # MPRV
            priv = (mstatus >> 11) & 3
    return priv


@core_jit(inline="always")
def mode_bits(priv, mstatus):
    """The low bits of a TLB tag: privilege and mstatus.SUM/MXR."""
    return (priv << 2) | (((mstatus >> 18) & 1) << 1) | ((mstatus >> 19) & 1)


@core_jit(inline="always")
def tlb_slot(vaddr, acc):
    """Index in st of the TLB entry for a virtual address."""
    return TLB + acc * (2 * TLB_ENTRIES) + ((vaddr >> 11) & (2 * TLB_ENTRIES - 2))


@core_jit
def translate(st, ram64, ram_size, vaddr, acc):
    """Virtual -> physical address, or a negative fault code -(cause + 1)."""
    priv = effective_priv(st, acc)
    if priv == 3:
        return vaddr
    satp = st[CSR + CSR_SATP]
    mode = srl(satp, 60)
    if mode == 0:
        return vaddr
    mstatus = st[CSR + CSR_MSTATUS]
    tag = (vaddr & -4096) | mode_bits(priv, mstatus)
    slot = tlb_slot(vaddr, acc)
    if st[slot] == tag:
        return RAM_BASE + st[slot + 1] + (vaddr & 0xFFF)
    page, span = walk(st, ram64, ram_size, vaddr, acc, priv, (mstatus >> 18) & 1, (mstatus >> 19) & 1, mode)
    if page < 0:
        return page
    off = page - RAM_BASE
    if off >= 0 and off < ram_size:
        st[slot] = tag
        st[slot + 1] = off
        st[TLB_SPAN + ((slot - TLB) >> 1)] = span
        if span > 12:
            lo = vaddr & -(1 << span)
            if lo < st[TLB_BIG_LO]:
                st[TLB_BIG_LO] = lo
            hi = vaddr | ((1 << span) - 1)
            if hi > st[TLB_BIG_HI]:
                st[TLB_BIG_HI] = hi
    return page | (vaddr & 0xFFF)


@core_jit
def walk(st, ram64, ram_size, vaddr, acc, priv, sum_, mxr, mode):
    """Walk the page table; returns (the physical page address or a fault code,
    log2 of the size of the page the leaf PTE maps: 12, 21, 30 or 39).

    `ram64` is an int64 view of guest RAM.
    """
    if mode != 8 and mode != 9:
        return _page_fault(acc), 12
    levels = 3 if mode == 8 else 4
    va_bits = 12 + 9 * levels
    # The upper bits must all equal the top bit of the virtual address.
    top = vaddr >> (va_bits - 1)
    if top != 0 and top != -1:
        return _page_fault(acc), 12
    a = (st[CSR + CSR_SATP] & PPN_MASK) << 12
    i = levels - 1
    while True:
        vpn_i = (vaddr >> (12 + 9 * i)) & 0x1FF
        off = a + vpn_i * 8 - RAM_BASE
        if off < 0 or off >= ram_size:
            return _access_fault(acc), 12
        pte = ram64[off >> 3]
        if (pte & PTE_V) == 0 or (pte & (PTE_R | PTE_W)) == PTE_W:
            return _page_fault(acc), 12
        if pte & (PTE_R | PTE_X):
            break
        if i == 0:
            return _page_fault(acc), 12
        # Reserved, PBMT and N bits: none of those extensions is offered.
        if srl(pte, 54) != 0:
            return _page_fault(acc), 12
        a = (srl(pte, 10) & PPN_MASK) << 12
        i -= 1
    if srl(pte, 54) != 0:
        return _page_fault(acc), 12
    if pte & PTE_U:
        if priv == 1 and (acc == ACC_FETCH or sum_ == 0):
            return _page_fault(acc), 12
    elif priv == 0:
        return _page_fault(acc), 12
    if acc == ACC_FETCH:
        if (pte & PTE_X) == 0:
            return _page_fault(acc), 12
    elif acc == ACC_LOAD:
        if (pte & PTE_R) == 0 and not (mxr and (pte & PTE_X)):
            return _page_fault(acc), 12
    elif (pte & PTE_W) == 0:
        return _page_fault(acc), 12
    ppn = srl(pte, 10) & PPN_MASK
    low_mask = (1 << (9 * i)) - 1
    if ppn & low_mask:  # misaligned superpage
        return _page_fault(acc), 12
    want = PTE_A | (PTE_D if acc == ACC_STORE else 0)
    if (pte & want) != want:
        ram64[off >> 3] = pte | want
    vpn = srl(vaddr, 12)
    return ((ppn & ~low_mask) | (vpn & low_mask)) << 12, 12 + 9 * i

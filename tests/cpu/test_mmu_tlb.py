"""The soft TLB and sfence.vma for one address (`pocketvm.cpu.mmu`).

Architectural results of fences are compared with QEMU by the guest
programs (tests/guest: sfence.c, vm.c); these tests pin down what the
programs cannot see: which entries a fence drops, also when it takes the
short way (an address that no superpage entry maps looks at three slots).
"""

from __future__ import annotations

import numpy as np

from pocketvm.cpu import state as S
from pocketvm.cpu.mmu import ACC_LOAD, flush_tlb, flush_tlb_page, translate

V, R, W, X, A, D = 1, 2, 4, 8, 64, 128
RAM_SIZE = 4 << 20
ROOT, L1, L0 = 0x1000, 0x2000, 0x3000  # RAM offsets of the page tables
SMALL = 0x5000  # a 4 KiB page ...
SMALL_PA = S.RAM_BASE + 0x10000
BIG = 0x200000  # ... and a 2 MiB superpage
BIG_PA = S.RAM_BASE + 0x200000


def pte(pa: int, flags: int) -> int:
    return ((pa >> 12) << 10) | flags


def hart_with_tables() -> tuple[np.ndarray, np.ndarray]:
    ram64 = np.zeros(RAM_SIZE // 8, dtype=np.int64)
    ram64[ROOT // 8 + 0] = pte(S.RAM_BASE + L1, V)
    ram64[L1 // 8 + 0] = pte(S.RAM_BASE + L0, V)
    ram64[L1 // 8 + 1] = pte(BIG_PA, V | R | W | X | A | D)
    ram64[L0 // 8 + SMALL // 4096] = pte(SMALL_PA, V | R | W | X | A | D)
    st = S.new_hart_state(0)
    st[S.PRIV] = 1
    st[S.CSR + S.CSR_SATP] = ((8 << 60) | ((S.RAM_BASE + ROOT) >> 12)) - (1 << 64)  # Sv39 (as int64)
    return st, ram64


def slot(vaddr: int) -> int:
    return S.TLB + ACC_LOAD * 2 * S.TLB_ENTRIES + ((vaddr >> 11) & (2 * S.TLB_ENTRIES - 2))


def cached(st: np.ndarray, vaddr: int) -> bool:
    return ((int(st[slot(vaddr)]) ^ vaddr) >> 12) == 0


def test_translations_fill_the_tlb_and_record_where_superpages_are() -> None:
    st, ram64 = hart_with_tables()
    assert translate(st, ram64, RAM_SIZE, SMALL + 8, ACC_LOAD) == SMALL_PA + 8
    assert st[S.TLB_BIG_LO] > st[S.TLB_BIG_HI]  # no superpage entry yet
    assert translate(st, ram64, RAM_SIZE, BIG + 0x3008, ACC_LOAD) == BIG_PA + 0x3008
    assert cached(st, SMALL) and cached(st, BIG + 0x3000)
    assert (st[S.TLB_BIG_LO], st[S.TLB_BIG_HI]) == (BIG, BIG + (2 << 20) - 1)
    flush_tlb(st)
    assert not cached(st, SMALL) and not cached(st, BIG + 0x3000)
    assert st[S.TLB_BIG_LO] > st[S.TLB_BIG_HI]


def test_a_fence_for_one_address_drops_the_entries_of_its_leaf_only() -> None:
    st, ram64 = hart_with_tables()
    for vaddr in (SMALL, BIG, BIG + 0x3000, BIG + 0x1FF000):
        translate(st, ram64, RAM_SIZE, vaddr, ACC_LOAD)
    flush_tlb_page(st, SMALL + 0x10)  # outside every superpage: the short way
    assert not cached(st, SMALL)
    assert cached(st, BIG) and cached(st, BIG + 0x3000) and cached(st, BIG + 0x1FF000)
    translate(st, ram64, RAM_SIZE, SMALL, ACC_LOAD)
    flush_tlb_page(st, BIG + 0x7000)  # a page of the superpage that is not in the TLB: all of the superpage goes
    assert not cached(st, BIG) and not cached(st, BIG + 0x3000) and not cached(st, BIG + 0x1FF000)
    assert cached(st, SMALL)
    flush_tlb_page(st, 0x7000)  # an address nothing maps: nothing goes
    assert cached(st, SMALL)

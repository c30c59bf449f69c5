"""Misaligned accesses that cross into a page mapped somewhere else entirely.

Linux maps neighbouring virtual pages to unrelated physical pages, and
BusyBox's string routines store 8 bytes at any alignment; each half of such
an access must go to its own physical page.
"""

from __future__ import annotations

import numpy as np

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.memory import GuestRAM

RAM = S.RAM_BASE
ROOT, L1, L0 = RAM + 0x10000, RAM + 0x11000, RAM + 0x12000
PAGE_A, PAGE_B = RAM + 0x30000, RAM + 0x50000  # not contiguous
V, R, W, X, A, D = 1, 2, 4, 8, 64, 128


def _pte(pa: int, flags: int) -> int:
    return ((pa >> 12) << 10) | flags


def _hart_with_split_mapping() -> Hart:
    ram = GuestRAM(1 << 20)
    q = ram.u8.view(np.int64)

    def put(addr: int, value: int) -> None:
        q[(addr - RAM) >> 3] = value

    put(ROOT + 8 * 2, _pte(RAM, V | R | W | X | A | D))  # 1 GiB identity map for the code
    put(ROOT + 8 * 1, _pte(L1, V))  # VA 0x4000_0000.. -> L1
    put(L1 + 0, _pte(L0, V))
    put(L0 + 0, _pte(PAGE_A, V | R | W | A | D))  # VA 0x4000_0000
    put(L0 + 8, _pte(PAGE_B, V | R | W | A | D))  # VA 0x4000_1000
    code = [
        (11 << 20) | (10 << 15) | (3 << 12) | 0x23,  # sd a1, 0(a0)
        (10 << 15) | (3 << 12) | (12 << 7) | 0x03,  # ld a2, 0(a0)
        (10 << 15) | (2 << 12) | (13 << 7) | 0x03,  # lw a3, 0(a0)
        0x0000006F,  # j .
    ]
    ram.u32[: len(code)] = code
    hart = Hart(0, ram, S.new_shared_state(1))
    hart.st[S.PRIV] = 1
    hart.st[S.CSR + S.CSR_SATP] = np.uint64((8 << 60) | (ROOT >> 12)).view(np.int64)
    hart.pc = RAM
    return hart


def test_misaligned_store_and_load_across_unrelated_pages():
    hart = _hart_with_split_mapping()
    hart.set_x(10, 0x4000_0FFC)
    hart.set_x(11, 0x1122_3344_5566_7788)
    hart.run(3)
    assert hart.pc == RAM + 12, "the accesses trapped"
    ram = hart.ram
    assert ram.read(PAGE_A + 0xFFC, 4) == bytes([0x88, 0x77, 0x66, 0x55])
    assert ram.read(PAGE_B, 4) == bytes([0x44, 0x33, 0x22, 0x11])
    assert hart.x(12) == 0x1122_3344_5566_7788
    assert hart.x(13) == 0x5566_7788

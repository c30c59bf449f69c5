"""A hostile guest: random instruction words, random page tables, random CSRs.

Whatever a guest puts in its registers, memory and page tables, the core
must keep running guest code (taking traps) and hand back only well-formed
exits: no host exception, no access outside guest RAM (which would crash the
process), no runaway loop past the instruction budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.memory import GuestRAM

RAM_SIZE = 1 << 20
VALID_EXITS = {S.EXIT_SLICE, S.EXIT_MMIO_LOAD, S.EXIT_MMIO_STORE, S.EXIT_WFI}


def _hostile_hart(seed: int) -> tuple[Hart, np.random.Generator]:
    rng = np.random.default_rng(seed)
    ram = GuestRAM(RAM_SIZE)
    words = rng.integers(0, 2**32, RAM_SIZE // 4, dtype=np.uint64).astype(np.uint32)
    # Sprinkle valid page-table-looking entries so walks go deep and hit RAM.
    ptes = rng.integers(0, RAM_SIZE // 4096, RAM_SIZE // 64, dtype=np.int64)
    idx = rng.integers(0, RAM_SIZE // 8, ptes.size)
    ram.u32[:] = words
    ram.u8.view(np.int64)[idx] = (((S.RAM_BASE >> 12) + ptes) << 10) | rng.integers(0, 256, ptes.size)
    sh = S.new_shared_state(1)
    hart = Hart(0, ram, sh)
    st = hart.st
    st[S.X + 1 : S.X + 32] = rng.integers(-(2**63), 2**63 - 1, 31, dtype=np.int64)
    # Point some registers into RAM so loads and stores do land there.
    for r in rng.integers(1, 32, 8):
        st[S.X + r] = S.RAM_BASE + int(rng.integers(0, RAM_SIZE))
    st[S.PC] = S.RAM_BASE + 2 * int(rng.integers(0, RAM_SIZE // 2))
    st[S.PRIV] = int(rng.choice([0, 1, 3]))
    st[S.CSR + S.CSR_MTVEC] = S.RAM_BASE + 4 * int(rng.integers(0, RAM_SIZE // 4))
    st[S.CSR + S.CSR_STVEC] = S.RAM_BASE + 4 * int(rng.integers(0, RAM_SIZE // 4))
    st[S.CSR + S.CSR_MEDELEG] = int(rng.integers(0, 1 << 16))
    st[S.CSR + S.CSR_MSTATUS] |= int(rng.integers(0, 1 << 23)) & ~(3 << 11) | (1 << 13)
    mode = int(rng.choice([0, 8, 9]))
    satp = (mode << 60) | ((S.RAM_BASE >> 12) + int(rng.integers(0, RAM_SIZE // 4096)))
    st[S.CSR + S.CSR_SATP] = np.uint64(satp).view(np.int64)
    return hart, rng


@pytest.mark.parametrize("seed", range(40))
def test_random_code_never_escapes_the_guest(seed):
    hart, rng = _hostile_hart(seed)
    for _ in range(200):
        before = int(hart.st[S.CSR + S.CSR_MINSTRET])
        reason = hart.run(5_000)
        retired = int(hart.st[S.CSR + S.CSR_MINSTRET]) - before
        assert reason in VALID_EXITS
        assert 0 <= retired <= 5_000
        if reason == S.EXIT_MMIO_LOAD:
            assert not (S.RAM_BASE <= int(hart.st[S.EXIT_ADDR]) < S.RAM_BASE + RAM_SIZE)
            hart.complete_mmio_load(int(rng.integers(0, 2**32)))
        elif reason == S.EXIT_MMIO_STORE:
            assert not (S.RAM_BASE <= int(hart.st[S.EXIT_ADDR]) < S.RAM_BASE + RAM_SIZE)
            if rng.random() < 0.5:
                hart.raise_access_fault(store=True)
        elif reason == S.EXIT_WFI:
            hart.st[S.WFI_FLAG] = 0
        assert hart.st[S.X] == 0
        assert hart.priv in (0, 1, 3)

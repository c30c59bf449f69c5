from __future__ import annotations

import numpy as np

from pocketvm.cpu.state import SH_MSIP, SH_MTIME, SH_MTIMECMP, new_shared_state
from pocketvm.devices.clint import Clint

MTIMECMP, MTIME = 0x4000, 0xBFF8


def test_mtimecmp_64_and_32_bit_halves():
    sh = new_shared_state(2)
    clint = Clint(sh)
    clint.write(MTIMECMP + 8, 8, 0x1122_3344_5566_7788)
    assert sh[SH_MTIMECMP + 1] == 0x1122_3344_5566_7788
    assert clint.read(MTIMECMP + 8, 4) == 0x5566_7788
    assert clint.read(MTIMECMP + 12, 4) == 0x1122_3344
    # RV32-style update: high word first to all-ones, then low.
    clint.write(MTIMECMP, 4, 0xFFFF_FFFF)
    clint.write(MTIMECMP + 4, 4, 0xFFFF_FFFF)
    assert clint.read(MTIMECMP, 8) == 0xFFFF_FFFF_FFFF_FFFF
    assert sh[SH_MTIMECMP] == -1  # raw bit pattern in the int64 array
    clint.write(MTIMECMP, 4, 0x10)
    assert clint.read(MTIMECMP, 8) == 0xFFFF_FFFF_0000_0010
    assert sh[SH_MTIMECMP + 1] == 0x1122_3344_5566_7788  # hart 1 untouched


def test_mtime_reads_shared_array():
    sh = new_shared_state(1)
    clint = Clint(sh)
    sh[SH_MTIME] = 0x0000_0001_8000_0002
    assert clint.read(MTIME, 8) == 0x1_8000_0002
    assert clint.read(MTIME, 4) == 0x8000_0002
    assert clint.read(MTIME + 4, 4) == 1


def test_mtime_write_goes_to_board_hook_or_array():
    sh = new_shared_state(1)
    Clint(sh).write(MTIME, 8, 12345)
    assert sh[SH_MTIME] == 12345
    seen: list[int] = []
    clint = Clint(sh, on_mtime_write=seen.append)
    clint.write(MTIME + 4, 4, 2)
    assert seen == [(2 << 32) | 12345]
    assert sh[SH_MTIME] == 12345  # the board decides how time moves


def test_msip_per_hart_single_bit():
    sh = new_shared_state(2)
    clint = Clint(sh)
    clint.write(4, 4, 0xFFFF_FFFF)
    assert sh[SH_MSIP + 1] == 1 and sh[SH_MSIP] == 0
    assert clint.read(4, 4) == 1
    clint.write(0, 8, 1 | (0 << 32))  # one 8-byte store covers both harts
    assert list(sh[SH_MSIP : SH_MSIP + 2]) == [1, 0]
    clint.write(8, 4, 1)  # hart 2 does not exist
    assert sh[SH_MSIP + 2] == 0
    assert clint.read(8, 4) == 0


def test_bad_sizes_and_alignment_are_ignored():
    sh = new_shared_state(1)
    before = sh.copy()
    clint = Clint(sh)
    for off, size in ((MTIMECMP, 1), (MTIMECMP, 2), (MTIMECMP + 4, 8), (MTIMECMP + 2, 4), (0x8000, 4), (0xFFFC, 8)):
        clint.write(off, size, 0xDEAD)
        assert clint.read(off, size) in (0, 0xDEAD)
    assert np.array_equal(sh, before)


def test_save_load():
    sh = new_shared_state(2)
    clint = Clint(sh)
    clint.write(MTIMECMP + 8, 8, 0xFFFF_FFFF_FFFF_FFF0)
    clint.write(0, 4, 1)
    state = clint.save()
    sh2 = new_shared_state(2)
    clint2 = Clint(sh2)
    clint2.load(state)
    assert clint2.read(MTIMECMP + 8, 8) == 0xFFFF_FFFF_FFFF_FFF0
    assert clint2.read(0, 4) == 1
    assert clint2.read(4, 4) == 0


def test_core_keeps_mtimecmp_stores_once_attached_and_after_a_restore():
    """The core serves aligned 8-byte mtimecmp stores itself, as `write` would
    do them; a snapshot's value of the arming slot is never trusted."""
    from pocketvm.cpu import state as S
    from pocketvm.cpu.hart import Hart
    from pocketvm.memory import GuestRAM

    base = 0x0200_0000
    hart = Hart(0, GuestRAM(1 << 16), S.new_shared_state(1))
    sd_a0_0_t0 = (10 << 20) | (5 << 15) | (3 << 12) | 0x23
    for at in (0, 4):
        hart.ram.write_int(S.RAM_BASE + at, 4, sd_a0_0_t0)
    hart.pc = S.RAM_BASE
    hart.set_x(5, base + MTIMECMP)
    clint = Clint(hart.sh)
    hart.set_x(10, 12345)
    assert hart.run(1) == S.EXIT_MMIO_STORE  # not attached: an exit, as before
    clint.attach_to_core(base)
    assert hart.sh[S.SH_MTIMECMP_ADDR] == base + MTIMECMP
    assert hart.run(1) == S.EXIT_SLICE
    assert clint.read(MTIMECMP, 8) == 12345
    state = clint.save()
    hart.sh[S.SH_MTIMECMP_ADDR] = 0x1000  # what a hostile snapshot may hold
    clint.load(state)
    assert hart.sh[S.SH_MTIMECMP_ADDR] == base + MTIMECMP

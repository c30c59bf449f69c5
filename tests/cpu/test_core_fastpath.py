"""The core's shortcuts must not change what the guest sees.

The core expands compressed instructions from a precomputed table, does
loads and stores that hit the TLB inline with the translation mode cached in
locals, counts traps against the budget and interpolates time between host
clock readings. Each test pins one of those down on a hand-built hart.
"""

from __future__ import annotations

import numpy as np

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.rvc import expand, expansion_table
from pocketvm.cpu.trap import HOST_INSN_PER_TICK, update_mtime
from pocketvm.memory import GuestRAM

RAM_SIZE = 1 << 20
MSTATUS_MPRV = 1 << 17
MSTATUS_SUM = 1 << 18
MPP_S = 1 << 11
PTE_VRWAD_U = 0x1 | 0x2 | 0x4 | 0x40 | 0x80 | 0x10
A0, T0, T1 = 10, 5, 6
USER_VA = 0x4000_0000  # gigapage 1, mapped onto RAM by the page table below


def i64(v: int) -> np.int64:
    return np.int64(np.uint64(v & (2**64 - 1)).view(np.int64))


def ld(rd: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (3 << 12) | (rd << 7) | 0x03


def sd(rs2: int, rs1: int, imm: int) -> int:
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (3 << 12) | ((imm & 0x1F) << 7) | 0x23


def new_hart() -> Hart:
    return Hart(0, GuestRAM(RAM_SIZE), S.new_shared_state(1))


def put32(hart: Hart, addr: int, word: int) -> None:
    hart.ram.write_int(addr, 4, word)


def paged_hart() -> Hart:
    """M-mode hart with Sv39 on: VA 0x4000_0000 (a user gigapage) -> RAM base."""
    hart = new_hart()
    root = S.RAM_BASE + 0x8_0000
    hart.ram.write_int(root + 8 * 1, 8, ((S.RAM_BASE >> 12) << 10) | PTE_VRWAD_U)
    hart.st[S.CSR + S.CSR_SATP] = i64((8 << 60) | (root >> 12))
    hart.st[S.CSR + S.CSR_MTVEC] = S.RAM_BASE + 0x4000
    return hart


def run_one(hart: Hart, pc: int) -> int:
    hart.pc = pc
    return hart.run(1)


def test_expansion_table_is_expand():
    table = expansion_table()
    assert table.dtype == np.int32 and table.shape == (65536,)
    for h in range(65536):
        want = 0 if h & 3 == 3 else int(expand(h))
        assert int(table[h]) & 0xFFFF_FFFF == want, hex(h)


def test_mprv_load_store_follow_sum_through_the_tlb():
    hart = paged_hart()
    code = S.RAM_BASE + 0x1000
    put32(hart, code, ld(A0, T0, 0x100))
    put32(hart, code + 4, sd(T1, T0, 0x108))
    hart.ram.write_int(S.RAM_BASE + 0x100, 8, 0x1122_3344_5566_7788)
    hart.set_x(T0, USER_VA)
    hart.set_x(T1, 0xCAFE)
    mstatus = int(hart.st[S.CSR + S.CSR_MSTATUS]) & ~(3 << 11)

    # MPRV with MPP=S: data accesses are S-mode accesses to a user page.
    hart.st[S.CSR + S.CSR_MSTATUS] = mstatus | MSTATUS_MPRV | MPP_S | MSTATUS_SUM
    assert run_one(hart, code) == S.EXIT_SLICE
    assert hart.x(A0) == 0x1122_3344_5566_7788
    assert run_one(hart, code + 4) == S.EXIT_SLICE
    assert hart.ram.read_int(S.RAM_BASE + 0x108, 8) == 0xCAFE

    # Same pages, SUM now clear: the TLB entries filled above must not hit.
    hart.set_x(A0, 0)
    hart.st[S.CSR + S.CSR_MSTATUS] = mstatus | MSTATUS_MPRV | MPP_S
    run_one(hart, code)
    assert hart.pc == S.RAM_BASE + 0x4000 and hart.priv == 3
    assert int(hart.st[S.CSR + S.CSR_MCAUSE]) == S.CAUSE_LOAD_PAGE_FAULT
    assert int(hart.st[S.CSR + S.CSR_MTVAL]) == USER_VA + 0x100
    assert hart.x(A0) == 0

    # Without MPRV, M-mode does not translate: 0x4000_0100 is no RAM, so a device access.
    hart.st[S.CSR + S.CSR_MSTATUS] = mstatus | MSTATUS_SUM
    assert run_one(hart, code) == S.EXIT_MMIO_LOAD
    assert int(hart.st[S.EXIT_ADDR]) == USER_VA + 0x100


def test_trap_loop_still_returns_to_the_host():
    # RAM is zeros: 0x0000 is an illegal compressed instruction, and mtvec
    # points at it again, so every step traps and none retires.
    hart = new_hart()
    hart.pc = S.RAM_BASE
    hart.st[S.CSR + S.CSR_MTVEC] = S.RAM_BASE
    assert hart.run(1000) == S.EXIT_SLICE
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) == 0
    assert int(hart.st[S.CSR + S.CSR_MCAUSE]) == S.CAUSE_ILLEGAL_INSN


def test_mtime_interpolation_never_outruns_the_host_clock():
    sh = S.new_shared_state(1)
    sh[S.SH_TIME_BASE] = 1000
    sh[S.SH_MTIME] = 1000
    # Host time: a million instructions move the clock at most as a 1000 MIPS hart would.
    assert update_mtime(sh, 1_000_000) == 1000 + 1_000_000 // HOST_INSN_PER_TICK
    # Deterministic time: the configured rate, whatever the host does.
    sh[S.SH_DETERMINISTIC] = 1
    sh[S.SH_MTIME] = 1000
    assert update_mtime(sh, 1_000_000) == 1000 + 1_000_000 // int(sh[S.SH_INSN_PER_TICK])


def sb(rs2: int, rs1: int, imm: int) -> int:
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (0 << 12) | ((imm & 0x1F) << 7) | 0x23


def lb(rd: int, rs1: int, imm: int, unsigned: bool = False) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | ((4 if unsigned else 0) << 12) | (rd << 7) | 0x03


DEVICE = 0x1000_0000  # outside RAM: every access is an MMIO access


def device_hart(code: list[int]) -> Hart:
    hart = new_hart()
    for i, word in enumerate(code):
        put32(hart, S.RAM_BASE + 4 * i, word)
    hart.pc = S.RAM_BASE
    hart.set_x(T0, DEVICE)
    return hart


def sink_bytes(sh: np.ndarray) -> bytes:
    n = int(sh[S.SH_SINK_LEN])
    return sh[S.SH_SINK : S.SH_SINK + (n + 7) // 8].tobytes()[:n]


def test_armed_byte_stores_go_to_the_sink_in_order_without_an_exit():
    hart = device_hart([sb(A0, T0, 0)] * 20)
    hart.sh[S.SH_SINK_ADDR] = DEVICE
    for i in range(20):
        hart.set_x(A0, 0x41 + i + 0x100)  # only the low byte is stored
        assert hart.run(1) == S.EXIT_SLICE
    assert sink_bytes(hart.sh) == bytes(range(0x41, 0x41 + 20))
    assert hart.pc == S.RAM_BASE + 80


def test_a_full_sink_or_another_store_exits_as_before():
    hart = device_hart([sb(A0, T0, 0), sb(A0, T0, 1), sd(A0, T0, 0)])
    hart.sh[S.SH_SINK_ADDR] = DEVICE
    hart.sh[S.SH_SINK_LEN] = S.SINK_BYTES
    assert hart.run(1) == S.EXIT_MMIO_STORE  # full: the monitor drains, then does this one
    hart.sh[S.SH_SINK_LEN] = 0
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_ADDR]) == DEVICE + 1
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_SIZE]) == 8
    hart.sh[S.SH_SINK_LEN] = -8  # never trusted
    hart.pc = S.RAM_BASE
    assert hart.run(1) == S.EXIT_MMIO_STORE
    assert int(hart.sh[S.SH_SINK_LEN]) == -8


def test_a_disarmed_sink_exits_even_at_address_zero():
    hart = device_hart([sb(A0, 0, 0)])
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_ADDR]) == 0
    assert int(hart.sh[S.SH_SINK_LEN]) == 0


def test_armed_byte_loads_read_the_constant_with_the_loads_sign_extension():
    hart = device_hart([lb(A0, T0, 5), lb(A1 := 11, T0, 5, unsigned=True), lb(A0, T0, 4), ld(A0, T0, 5)])
    hart.sh[S.SH_CONST_ADDR] = DEVICE + 5
    hart.sh[S.SH_CONST_VALUE] = 0xE1
    assert hart.run(2) == S.EXIT_SLICE
    assert hart.x(A0) == 2**64 - 0x1F  # lb: 0xE1 sign-extended
    assert hart.x(A1) == 0xE1
    assert hart.run(1) == S.EXIT_MMIO_LOAD and int(hart.st[S.EXIT_ADDR]) == DEVICE + 4
    assert hart.run(1) == S.EXIT_MMIO_LOAD and int(hart.st[S.EXIT_SIZE]) == 8


def sw(rs2: int, rs1: int, imm: int) -> int:
    return (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (2 << 12) | ((imm & 0x1F) << 7) | 0x23


def test_armed_mtimecmp_stores_stay_in_the_core_and_raise_the_timer_as_before():
    """An aligned 8-byte store to a hart's mtimecmp is kept in sh without an
    exit; any other store near it (a half, another hart's beyond the count,
    misaligned) exits as before, and so does every store while disarmed."""
    hart = device_hart([sd(A0, T0, 0), sd(A0, T0, 8), sw(A0, T0, 0), sd(A0, T0, 4), sd(A0, T0, 0)])
    hart.sh[S.SH_MTIMECMP_ADDR] = DEVICE
    hart.set_x(A0, 2**64 - 2)
    assert hart.run(1) == S.EXIT_SLICE
    assert int(hart.sh[S.SH_MTIMECMP]) == -2  # the raw bit pattern, as the CLINT keeps it
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_ADDR]) == DEVICE + 8  # one hart only
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_SIZE]) == 4
    hart.pc += 4
    hart.sh[S.SH_MTIMECMP_ADDR] = 0
    assert hart.run(1) == S.EXIT_MMIO_STORE and int(hart.st[S.EXIT_ADDR]) == DEVICE
    assert int(hart.sh[S.SH_MTIMECMP]) == -2
    # The timer interrupt follows the stored value at the core's next look.
    from pocketvm.cpu.trap import current_mip

    hart.sh[S.SH_MTIME] = 100
    hart.sh[S.SH_MTIMECMP] = 50
    assert current_mip(hart.st, hart.sh) & (1 << 7)

"""Running a hand-assembled program interpreted and translated side by side.

The tier-1 tests of kernel-style code (`test_tier1_atomics`, `test_tier1_csr`)
build small programs from the encoders here, run them on two harts, one with
tier 1 off and one translating every block at once (mode "all"), in the same
budget chunks, and compare everything the guest can see after every chunk:
registers, pc, privilege, the LR/SC reservation, CSRs, the counters, the
data pages and mtime. Guest time is deterministic (from instruction counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.memory import GuestRAM

MASK64 = (1 << 64) - 1
RAM_SIZE = 1 << 17
CODE = S.RAM_BASE + 0x1000  # the program (a loop)
HANDLER = S.RAM_BASE + 0x3000  # mtvec
DATA = S.RAM_BASE + 0x8000  # two pages the program works on
PAGE_TABLE = S.RAM_BASE + 0xC000  # Sv39 root, when the program runs paged
READ_ONLY_ALIAS = 0x4000_0000  # paged: RAM again, readable and executable, not writable

PTE_V, PTE_R, PTE_W, PTE_X, PTE_A, PTE_D = 1, 2, 4, 8, 0x40, 0x80


def to_i64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


# --- encoders -------------------------------------------------------------------------
def r_type(f7: int, rs2: int, rs1: int, f3: int, rd: int, opcode: int) -> int:
    return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opcode


def i_type(imm: int, rs1: int, f3: int, rd: int, opcode: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opcode


def addi(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 0, rd, 0x13)


def add(rd: int, rs1: int, rs2: int) -> int:
    return r_type(0, rs2, rs1, 0, rd, 0x33)


def xor(rd: int, rs1: int, rs2: int) -> int:
    return r_type(0, rs2, rs1, 4, rd, 0x33)


def slli(rd: int, rs1: int, shamt: int) -> int:
    return i_type(shamt & 63, rs1, 1, rd, 0x13)


def ld(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 3, rd, 0x03)


def s_type(imm: int, rs2: int, rs1: int, f3: int) -> int:
    return ((imm >> 5 & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23


def sd(rs2: int, rs1: int, imm: int) -> int:
    return s_type(imm, rs2, rs1, 3)


def amo(funct5: int, size: int, rd: int, rs1: int, rs2: int, aq: int = 0, rl: int = 0) -> int:
    return r_type((funct5 << 2) | (aq << 1) | rl, rs2, rs1, 2 if size == 4 else 3, rd, 0x2F)


def csr(f3: int, rd: int, number: int, rs1_or_uimm: int) -> int:
    """csrrw 1, csrrs 2, csrrc 3, csrrwi 5, csrrsi 6, csrrci 7."""
    return i_type(number, rs1_or_uimm, f3, rd, 0x73)


def branch(f3: int, rs1: int, rs2: int, offset: int) -> int:
    o = offset & 0x1FFF
    return (
        ((o >> 12) << 31) | (((o >> 5) & 0x3F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12)
        | (((o >> 1) & 0xF) << 8) | (((o >> 11) & 1) << 7) | 0x63
    )  # fmt: skip


def jal(rd: int, offset: int) -> int:
    o = offset & 0x1FFFFF
    return (
        ((o >> 20) << 31) | (((o >> 1) & 0x3FF) << 21) | (((o >> 11) & 1) << 20) | (((o >> 12) & 0xFF) << 12)
        | (rd << 7) | 0x6F
    )  # fmt: skip


MRET = 0x30200073
SFENCE_VMA_ALL = 0x12000073
FENCE = 0x0FF0000F
CSRR_MCAUSE_X30 = csr(2, 30, S.CSR_MCAUSE, 0)


def trap_handler() -> list[int]:
    """M-mode handler: an exception counts in x31 and skips its (4-byte) instruction;
    an interrupt counts in x31 (+1024), masks the timer in mie (the host unmasks it
    between chunks) and returns to the interrupted instruction."""
    return [
        CSRR_MCAUSE_X30,
        branch(4, 30, 0, 6 * 4),  # blt x30, x0, interrupt
        addi(31, 31, 1),
        csr(2, 30, S.CSR_MEPC, 0),
        addi(30, 30, 4),
        csr(1, 0, S.CSR_MEPC, 30),
        MRET,
        # interrupt:
        addi(31, 31, 1024),
        addi(30, 0, 0x80),
        csr(3, 0, S.CSR_MIE, 30),
        MRET,
    ]


@dataclass
class Setup:
    program: list[int]  # at CODE; should end in a jump back
    regs: dict[int, int] = field(default_factory=dict)
    data: bytes = b""  # at DATA
    paged: bool = False  # S-mode with Sv39 (RAM identity mapped, and read-only at READ_ONLY_ALIAS)
    priv: int = 3  # when not paged
    mstatus: int = 0  # bits to set in mstatus (besides UXL/SXL)
    csrs: dict[int, int] = field(default_factory=dict)
    timer_every: int = 0  # > 0: a timer interrupt this many ticks after each chunk starts
    ad: bool = True  # paged: leaf PTEs with A and D set (else the first accesses set them)


def make_hart(setup: Setup, jit: str) -> Hart:
    hart = Hart(0, GuestRAM(RAM_SIZE), S.new_shared_state(1), jit=jit)
    hart.sh[S.SH_DETERMINISTIC] = 1
    st = hart.st
    for i, word in enumerate(setup.program):
        hart.ram.write_int(CODE + 4 * i, 4, word)
    for i, word in enumerate(trap_handler()):
        hart.ram.write_int(HANDLER + 4 * i, 4, word)
    hart.ram.write(DATA, setup.data)
    st[S.CSR + S.CSR_MTVEC] = HANDLER
    st[S.CSR + S.CSR_MSTATUS] |= setup.mstatus
    for number, value in setup.csrs.items():
        st[S.CSR + number] = to_i64(value)
    if setup.paged:
        root = PAGE_TABLE
        leaf = PTE_V | (PTE_A | PTE_D if setup.ad else 0)
        hart.ram.write_int(root + 8 * 2, 8, ((S.RAM_BASE >> 12) << 10) | leaf | PTE_R | PTE_W | PTE_X)
        hart.ram.write_int(root + 8 * 1, 8, ((S.RAM_BASE >> 12) << 10) | leaf | PTE_R | PTE_X)
        st[S.CSR + S.CSR_SATP] = to_i64((8 << 60) | (root >> 12))
        st[S.PRIV] = 1
    else:
        st[S.PRIV] = setup.priv
    for r, value in setup.regs.items():
        hart.set_x(r, value)
    hart.pc = CODE
    return hart


def observed(hart: Hart) -> dict[str, object]:
    st = hart.st
    return {
        "x/f/pc/priv/reservation": np.array(st[: S.RESERVATION + 1]).tobytes(),
        "csrs": np.array(st[S.CSR : S.CSR + 0x1000]).tobytes(),
        "ram": hart.ram.view(S.RAM_BASE, RAM_SIZE).tobytes(),  # data, page tables (A/D bits)
        "mtime": int(hart.sh[S.SH_MTIME]),
    }


def run_side_by_side(
    setup: Setup,
    chunks: int = 40,
    budget: int = 997,
    between: Callable[[Hart], None] | None = None,
) -> tuple[Hart, Hart]:
    """Run `setup` interpreted and translated in the same chunks, comparing after each.
    Returns (interpreted, translated)."""
    plain, fast = make_hart(setup, "off"), make_hart(setup, "all")
    for chunk in range(chunks):
        for hart in (plain, fast):
            if setup.timer_every:
                hart.sh[S.SH_MTIMECMP] = hart.sh[S.SH_MTIME] + setup.timer_every
                hart.st[S.CSR + S.CSR_MIE] |= 0x80
            if between is not None:
                between(hart)
            hart.run(budget)
        a, b = observed(plain), observed(fast)
        for what in a:
            assert a[what] == b[what], f"chunk {chunk}: {what} differs ({describe(plain, fast)})"
    return plain, fast


def describe(plain: Hart, fast: Hart) -> str:
    diffs = [f"pc {plain.pc:#x} vs {fast.pc:#x}"]
    for i in range(S.RESERVATION + 1):
        if plain.st[i] != fast.st[i]:
            diffs.append(f"st[{i}] {int(plain.st[i]) & MASK64:#x} vs {int(fast.st[i]) & MASK64:#x}")
    for i in range(0x1000):
        if plain.st[S.CSR + i] != fast.st[S.CSR + i]:
            diffs.append(f"csr {i:#x} {int(plain.st[S.CSR + i]) & MASK64:#x} vs {int(fast.st[S.CSR + i]) & MASK64:#x}")
    return ", ".join(diffs[:12])


def native_share(hart: Hart) -> float:
    """The share of the instructions retired that ran translated."""
    assert hart.tier1 is not None
    return int(hart.tier1.table[L.JT_NATIVE]) / max(int(hart.st[S.CSR + S.CSR_MINSTRET]), 1)

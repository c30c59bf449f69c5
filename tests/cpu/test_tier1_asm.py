"""Regions written as assembly (`asmgen`) give exactly the interpreter's results.

Random programs of every integer instruction tier 1 translates (OP, OP-32,
OP-IMM, OP-IMM-32 with the M extension's edge cases: division by zero, the
most negative number by -1, the high halves of products, shifts by a
register), loads and stores of every size and extension (aligned,
misaligned, into a read-only mapping, into the
program's own code page), LUI/AUIPC, branches forward, JAL and JALR, run
interpreted and translated side by side (`tier1_diff`), without and with
Sv39, with and without timer interrupts. Every region is assembled there;
the same programs through LLVM's IR (POCKETVM_JIT_ASM=0) must agree too.
(LR/SC and the AMOs: `test_tier1_atomics`, assembled as well.)
"""

from __future__ import annotations

import random

import pytest
from tier1_diff import (
    CODE,
    DATA,
    READ_ONLY_ALIAS,
    Setup,
    branch,
    i_type,
    jal,
    native_share,
    r_type,
    run_side_by_side,
    s_type,
)

VALUES = (0, 1, -1, 2, 63, 64, 0x7FFFFFFF, 0x80000000, -0x80000000, 0xFFFFFFFF, 1 << 63, (1 << 63) - 1, 0x123456789ABCDEF0)
OP = [(f7, f3) for f7 in (0, 1) for f3 in range(8)] + [(0x20, 0), (0x20, 5)]
OP32 = [(0, 0), (0, 1), (0, 5), (0x20, 0), (0x20, 5), (1, 0), (1, 4), (1, 5), (1, 6), (1, 7)]
LOADS = (0, 1, 2, 3, 4, 5, 6)


def random_program(rng: random.Random, paged: bool, length: int = 60) -> list[int]:
    """x1 = DATA, x2 = DATA + 3 (misaligned), x3 = read-only (Sv39) or misaligned, x4 = the
    end of the code's page (stores there leave for the interpreter); x5..x12
    hold edge values and are only read (x5 moves on each round), results go
    to x13..x26; x27/x28 for a jalr, x29 counts the loop; x30/x31 belong to
    the trap handler."""

    def src() -> int:
        return 0 if rng.random() < 0.08 else rng.randrange(5, 13) if rng.random() < 0.6 else rng.randrange(13, 27)

    def dst() -> int:
        return 0 if rng.random() < 0.05 else rng.randrange(13, 27)

    body: list[int] = []
    while len(body) < length:
        kind = rng.random()
        if kind < 0.3:
            f7, f3 = rng.choice(OP)
            body.append(r_type(f7, src(), src(), f3, dst(), 0x33))
        elif kind < 0.42:
            f7, f3 = rng.choice(OP32)
            body.append(r_type(f7, src(), src(), f3, dst(), 0x3B))
        elif kind < 0.55:
            f3 = rng.randrange(8)
            imm = rng.randrange(-2048, 2048)
            if f3 == 1:
                imm = rng.randrange(64)
            elif f3 == 5:
                imm = rng.randrange(64) | (0x400 if rng.random() < 0.5 else 0)
            body.append(i_type(imm, src(), f3, dst(), 0x13))
        elif kind < 0.62:
            f3 = rng.choice((0, 1, 5))
            imm = rng.randrange(-2048, 2048) if f3 == 0 else rng.randrange(32) | (0x400 if f3 == 5 and rng.random() < 0.5 else 0)
            body.append(i_type(imm, src(), f3, dst(), 0x1B))
        elif kind < 0.66:
            body.append((rng.getrandbits(20) << 12) | (dst() << 7) | rng.choice((0x37, 0x17)))
        elif kind < 0.8:
            base = rng.choices((1, 2, 3), (80, 12, 3))[0]
            body.append(i_type(rng.randrange(0, 64), base, rng.choice(LOADS), dst(), 0x03))
        elif kind < 0.92:
            base = rng.choices((1, 2, 3, 4), (80, 10, 3, 3))[0]
            body.append(s_type(rng.randrange(0, 64), src(), base, rng.randrange(4)))
        elif len(body) < length - 2:  # a branch over the next two instructions
            body.append(branch(rng.choice((0, 1, 4, 5, 6, 7)), src(), src(), 12))
    # x28 <- the address after the jalr (a call there and back), then the loop goes round
    body.append((0 << 12) | (28 << 7) | 0x17)  # auipc x28, 0
    body.append(i_type(12, 28, 0, 28, 0x13))  # addi x28, x28, 12
    body.append(i_type(0, 28, 0, 27, 0x67))  # jalr x27, 0(x28)
    body.append(i_type(1, 29, 0, 29, 0x13))  # addi x29, x29, 1
    body.append(i_type(7, 5, 0, 5, 0x13))  # addi x5, x5, 7
    body.append(jal(0, -4 * len(body)))
    return body


def random_setup(seed: int, paged: bool, **kwargs) -> Setup:
    rng = random.Random(seed)
    regs = {r: rng.choice(VALUES) for r in range(5, 13)}
    regs |= {r: rng.choice(VALUES) ^ (rng.getrandbits(64) if rng.random() < 0.3 else 0) for r in range(13, 27)}
    regs[1], regs[2], regs[4] = DATA, DATA + 3, CODE + 0xF00
    regs[3] = READ_ONLY_ALIAS + 0x8000 if paged else DATA + 0x7FD  # (no RAM: a device access, which ends the run)
    data = rng.randbytes(128)
    return Setup(random_program(rng, paged), regs, data, paged=paged, **kwargs)


@pytest.mark.parametrize("assemble", [True, False], ids=["assembled", "llvm-ir"])
@pytest.mark.parametrize("paged", [False, True], ids=["bare", "sv39"])
@pytest.mark.parametrize("seed", range(1, 6))
def test_random_integer_code_matches_the_interpreter(seed: int, paged: bool, assemble: bool, monkeypatch) -> None:
    from pocketvm.cpu.tier1 import translator

    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")  # objects made otherwise than VERSION says
    monkeypatch.setattr(translator, "ASSEMBLE", assemble)
    _, fast = run_side_by_side(random_setup(seed, paged))
    assert fast.tier1 is not None
    stats = fast.tier1.stats
    assert (stats.assembled > 0) == assemble and stats.assembled <= stats.blocks
    assert native_share(fast) > 0.3


@pytest.mark.parametrize("seed", (7, 8))
def test_assembled_code_with_timer_interrupts_matches_the_interpreter(seed: int, monkeypatch) -> None:
    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")
    run_side_by_side(random_setup(seed, True, timer_every=37), budget=301)


def test_regions_with_floating_point_are_left_to_llvm() -> None:
    from pocketvm.cpu.tier1.asmgen import can_assemble
    from pocketvm.cpu.tier1.decode import Insn, Region, SubBlock

    def region(*words: int) -> Region:
        insns = [Insn(4 * i, 4, w, w) for i, w in enumerate(words)]
        return Region({0: SubBlock(0, insns, None)}, insns)

    add = r_type(0, 2, 1, 0, 3, 0x33)
    assert can_assemble(region(add), bmi2=True)
    assert can_assemble(region(add, 0x0020A1AF), bmi2=True)  # amoadd.w
    assert not can_assemble(region(add, 0x02208053), bmi2=True)  # fadd.d
    sll = r_type(0, 2, 1, 1, 3, 0x33)
    assert can_assemble(region(sll), bmi2=True) and not can_assemble(region(sll), bmi2=False)


EDGES = (0, 1, -1, 1 << 63, (1 << 63) - 1, -0x80000000, 0x7FFFFFFF, 0x123456789ABCDEF0)  # in x5..x12
IMM_OPS = [(f3, imm) for f3 in (0, 2, 3, 4, 6, 7) for imm in (-2048, -1, 0, 1, 2047)]
IMM_OPS += [(1, sh) for sh in (0, 1, 31, 32, 63)] + [(5, sh | kind) for sh in (0, 1, 31, 32, 63) for kind in (0, 0x400)]
IMM32_OPS = [(0, imm) for imm in (-2048, -1, 0, 1, 2047)] + [(1, sh) for sh in (0, 1, 31)]
IMM32_OPS += [(5, sh | kind) for sh in (0, 1, 31) for kind in (0, 0x400)]


def edge_program(words: list[int]) -> list[int]:
    """Each instruction's result (in x13) stored, in turn, from DATA on; then round again."""
    assert len(words) <= 255
    body = [part for k, word in enumerate(words) for part in (word, s_type(8 * k, 13, 1, 3))]
    return body + [jal(0, -4 * len(body))]


def all_pairs(opcode: int, ops: list[tuple[int, int]]) -> list[int]:
    return [r_type(f7, b, a, f3, 13, opcode) for f7, f3 in ops for a in range(5, 13) for b in range(5, 13)]


EDGE_CASES = {
    "op-base": all_pairs(0x33, [op for op in OP if op[0] != 1]),
    "op-m": all_pairs(0x33, [op for op in OP if op[0] == 1]),
    "op32": all_pairs(0x3B, OP32),
    "imm": [i_type(imm, a, f3, 13, opcode) for opcode, ops in ((0x13, IMM_OPS), (0x1B, IMM32_OPS))
            for f3, imm in ops for a in range(5, 13)],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_every_integer_operation_on_edge_values_matches_the_interpreter(case: str, monkeypatch) -> None:
    """(In slices of 24: a long straight run of code is translated only from
    where the interpreter finds an entry, and these must run translated.)"""
    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")
    regs = {5 + k: value for k, value in enumerate(EDGES)}
    words = EDGE_CASES[case]
    for at in range(0, len(words), 24):
        _, fast = run_side_by_side(Setup(edge_program(words[at : at + 24]), regs), chunks=3, budget=997)
        assert fast.tier1 is not None and fast.tier1.stats.assembled > 0
        assert native_share(fast) > 0.3

"""AMOs and LR/SC in translated code give exactly the interpreter's results.

Random programs of AMOs (every operation, .w and .d), LR/SC pairs (matching,
to another address, without LR, with a trap or an interrupt between them),
plain loads and stores and ALU instructions run interpreted and translated
side by side (`tier1_diff`), in M-mode without translation and in S-mode
under Sv39 (where an AMO to a read-only mapping takes a store page fault
and an LR there does not). Misaligned AMOs, and AMOs to an address where
there is no RAM, leave translated code for the interpreter, which traps
with the exact mepc and mtval. The guest suite's `amo` program compares
the AMOs' results with QEMU's under tier 1 as well (`test_guest_tier1`).
"""

from __future__ import annotations

import random

import pytest
from tier1_diff import (
    CODE,
    DATA,
    READ_ONLY_ALIAS,
    Setup,
    add,
    addi,
    amo,
    jal,
    ld,
    native_share,
    run_side_by_side,
    sd,
    slli,
    xor,
)

from pocketvm.cpu import state as S
from pocketvm.cpu.core import CHECK_INTERVAL

AMO_OPS = (0x00, 0x01, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C)  # add swap xor or and min max minu maxu
LR, SC = 0x02, 0x03
VALUES = (0, 1, -1, 0x7FFFFFFF, 0x80000000, -0x80000000, 0xFFFFFFFF, 1 << 63, (1 << 63) - 1, 0x123456789ABCDEF0)


def random_program(rng: random.Random, length: int = 48) -> list[int]:
    """x1 = DATA, x2 = DATA + 8, x3 = DATA + 0x14 (misaligned for .d), x4 = somewhere an AMO traps;
    values in x5..x29; x30/x31 belong to the trap handler."""

    def base() -> int:
        return rng.choices((1, 2, 3, 4), (40, 30, 20, 6))[0]

    def value_reg() -> int:
        return rng.randrange(5, 30)

    body: list[int] = []
    while len(body) < length:
        kind = rng.random()
        size = rng.choice((4, 8))
        if kind < 0.55:
            rd = 0 if rng.random() < 0.1 else value_reg()
            body.append(amo(rng.choice(AMO_OPS), size, rd, base(), rng.randrange(0, 32), rng.randrange(2), rng.randrange(2)))
        elif kind < 0.75:  # lr ... sc, sometimes to another address or size, sometimes something between
            b = base()
            body.append(amo(LR, size, value_reg(), b, 0))
            if rng.random() < 0.4:
                body.append(add(value_reg(), value_reg(), value_reg()))
            if rng.random() < 0.15:  # a trap between them (misaligned, or no RAM)
                body.append(amo(0x00, 8, value_reg(), rng.choice((3, 4)), value_reg()))
            if rng.random() < 0.15:  # a plain store to the reserved address
                body.append(sd(value_reg(), b, 0))
            sc_base = b if rng.random() < 0.75 else base()
            sc_size = size if rng.random() < 0.85 else 12 - size
            body.append(amo(SC, sc_size, value_reg(), sc_base, value_reg()))
        elif kind < 0.8:
            body.append(amo(SC, size, value_reg(), base(), value_reg()))  # no LR right before
        elif kind < 0.9:
            r = rng.random()
            rd, a, b = value_reg(), value_reg(), value_reg()
            body.append(add(rd, a, b) if r < 0.4 else xor(rd, a, b) if r < 0.7 else slli(rd, a, rng.randrange(64)))
        else:
            body.append(ld(value_reg(), rng.choice((1, 2)), 0) if rng.random() < 0.5 else sd(value_reg(), rng.choice((1, 2)), 0))
    body.append(addi(29, 29, 1))
    body.append(jal(0, -4 * len(body)))
    return body


def random_setup(seed: int, paged: bool, **kwargs) -> Setup:
    rng = random.Random(seed)
    regs = {r: rng.choice(VALUES) ^ (rng.getrandbits(64) if rng.random() < 0.5 else 0) for r in range(5, 30)}
    regs[1], regs[2], regs[3] = DATA, DATA + 8, DATA + 0x14
    regs[4] = READ_ONLY_ALIAS + 0x8000 if paged else 0x1000  # read-only page / no RAM
    data = b"".join((v & ((1 << 64) - 1)).to_bytes(8, "little") for v in (rng.choice(VALUES) for _ in range(8)))
    return Setup(random_program(rng), regs, data, paged=paged, **kwargs)


@pytest.mark.parametrize("seed", range(1, 7))
@pytest.mark.parametrize("paged", [False, True], ids=["bare", "sv39"])
def test_random_atomics_match_the_interpreter(seed: int, paged: bool) -> None:
    plain, fast = run_side_by_side(random_setup(seed, paged))
    assert plain.x(31) > 0, "no trap was taken"
    assert native_share(fast) > 0.3, "the atomics did not run translated"


@pytest.mark.parametrize("seed", range(1, 4))
def test_random_atomics_setting_a_and_d_bits_match_the_interpreter(seed: int) -> None:
    """Leaf PTEs without A/D: the first access through each sets them (translated code leaves for the walk)."""
    _, fast = run_side_by_side(random_setup(50 + seed, True, ad=False))
    assert native_share(fast) > 0.3


@pytest.mark.parametrize("seed", range(1, 4))
@pytest.mark.parametrize("paged", [False, True], ids=["bare", "sv39"])
def test_random_atomics_with_timer_interrupts_match_the_interpreter(seed: int, paged: bool) -> None:
    setup = random_setup(100 + seed, paged, mstatus=S.MSTATUS_MIE, timer_every=7)
    plain, _ = run_side_by_side(setup, chunks=40, budget=5 * CHECK_INTERVAL - 21)  # interrupts are looked at every CHECK_INTERVAL
    assert plain.x(31) >= 1024 * 30, "too few interrupts"


def test_a_loop_of_atomics_runs_translated() -> None:
    program = [amo(op, size, 5 + i % 20, 1, 5 + (i * 7) % 20) for i, (op, size) in enumerate((op, s) for op in AMO_OPS for s in (4, 8))]
    program += [amo(LR, 8, 25, 2, 0), amo(SC, 8, 26, 2, 27), amo(LR, 4, 28, 2, 0), amo(SC, 4, 29, 1, 27)]
    program.append(jal(0, -4 * len(program)))
    regs = {r: VALUES[r % len(VALUES)] for r in range(5, 30)} | {1: DATA, 2: DATA + 16}
    plain, fast = run_side_by_side(Setup(program, regs), chunks=10)
    assert native_share(fast) > 0.9
    assert plain.x(26) == 0 and plain.x(29) == 1  # sc after lr of the same address / of another one


@pytest.mark.parametrize(
    ("insn", "address", "cause"),
    [
        (amo(0x00, 8, 5, 6, 7), DATA + 4, S.CAUSE_MISALIGNED_STORE),
        (amo(0x1C, 4, 5, 6, 7), DATA + 2, S.CAUSE_MISALIGNED_STORE),
        (amo(LR, 8, 5, 6, 0), DATA + 4, S.CAUSE_MISALIGNED_LOAD),
        (amo(SC, 4, 5, 6, 7), DATA + 1, S.CAUSE_MISALIGNED_STORE),
        (amo(0x01, 8, 5, 6, 7), 0x1000_0000, S.CAUSE_STORE_ACCESS),  # a device address: no AMOs there
        (amo(LR, 4, 5, 6, 0), 0x1000_0000, S.CAUSE_LOAD_ACCESS),
    ],
    ids=["amoadd.d+4", "amomaxu.w+2", "lr.d+4", "sc.w+1", "amoswap.d-mmio", "lr.w-mmio"],
)
def test_an_atomic_that_cannot_run_translated_traps_exactly(insn: int, address: int, cause: int) -> None:
    """In the middle of a hot translated loop: the interpreter takes the trap at that instruction."""
    program = [addi(8, 8, 1), amo(0x00, 8, 9, 1, 8), insn, addi(10, 10, 1)]
    program.append(jal(0, -4 * len(program)))
    plain, fast = run_side_by_side(Setup(program, {1: DATA, 6: address, 7: 0x55}), chunks=5)
    for hart in (plain, fast):
        assert int(hart.st[S.CSR + S.CSR_MCAUSE]) == cause
        assert int(hart.st[S.CSR + S.CSR_MEPC]) == CODE + 8
        assert int(hart.st[S.CSR + S.CSR_MTVAL]) == address
        assert hart.x(5) == 0  # rd untouched
    assert native_share(fast) > 0.3


@pytest.mark.parametrize(
    "settings",
    [(0, "sroa", True), (0, "sroa", False), (2, "gvn", False), (2, "gvn", True), (2, "o2", False)],
    ids=["quick", "quick-in-allocas", "hot", "hot-in-state", "hot-o2"],
)
@pytest.mark.parametrize("paged", [False, True], ids=["bare", "sv39"])
def test_every_way_to_compile_matches_the_interpreter(settings: tuple, paged: bool, monkeypatch) -> None:
    """Mode "all" compiles quickly (guest registers in st, -O0); hot code is
    compiled with the registers in allocas, GVN and -O2 code generation
    (or LLVM's whole -O2 pipeline: POCKETVM_JIT_HOT_PIPELINE=o2). Each way of laying out
    and compiling a region, forced onto every block, gives the interpreter's results."""
    from pocketvm.cpu.tier1 import translator

    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")  # objects made with other settings than VERSION says
    monkeypatch.setitem(translator._SETTINGS, translator.QUICK, settings)
    monkeypatch.setattr(translator, "ASSEMBLE", False)  # (else `asmgen` writes these regions, whatever the settings)
    for seed in (3, 4):
        _, fast = run_side_by_side(random_setup(seed, paged))
        assert native_share(fast) > 0.5

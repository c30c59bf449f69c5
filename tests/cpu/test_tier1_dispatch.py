"""How control gets into translated code: the table's slots, chaining, and
the interpreter finding a block after translated code handed back.

Results must be the interpreter's whatever tier 1 does; these tests also pin
down that the fast paths are taken (instructions retired in translated code,
calls of translated code from the interpreter), since a slot hash that the
core, the host and translated code did not agree on, or an interpreter that
stopped looking for blocks, would still give right results, only slowly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.memory import GuestRAM

A0, A1, A2, T0 = 10, 11, 12, 5
CODE = 0x1000  # RAM offset of the programs below


def addi(rd: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (rd << 7) | 0x13


def jal(offset: int) -> int:
    """jal x0, offset (bytes, either direction)."""
    imm = offset & 0x1FFFFF
    return (
        (((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3FF) << 21) | (((imm >> 11) & 1) << 20)
        | (((imm >> 12) & 0xFF) << 12) | 0x6F
    )  # fmt: skip


def csrr_mscratch(rd: int) -> int:
    """csrrs rd, mscratch, x0: a CSR instruction, which tier 1 leaves to the interpreter."""
    return (0x340 << 20) | (2 << 12) | (rd << 7) | 0x73


def hart_with(jit: str, code: dict[int, list[int]]) -> Hart:
    """A hart whose RAM holds each list of instructions at its RAM offset, pc at CODE."""
    hart = Hart(0, GuestRAM(1 << 16), S.new_shared_state(1), jit=jit)
    for off, insns in code.items():
        for i, insn in enumerate(insns):
            hart.ram.write_int(S.RAM_BASE + off + 4 * i, 4, insn)
    hart.pc = S.RAM_BASE + CODE
    return hart


def same_state(a: Hart, b: Hart) -> bool:
    return bool(np.array_equal(a.st[: S.PC + 1], b.st[: S.PC + 1])) and int(a.st[S.CSR + S.CSR_MINSTRET]) == int(
        b.st[S.CSR + S.CSR_MINSTRET]
    )


def test_the_core_the_host_and_translated_code_agree_on_sets() -> None:
    set_of = njit(lambda off: L.set_of(off))
    rng = np.random.default_rng(7)
    offs = np.concatenate([np.arange(0, 64, 2), rng.integers(0, 1 << 34, 2000) & ~1]).astype(np.int64)
    core = [int(set_of(o)) for o in offs]
    assert core == [L.set_index(int(o)) for o in offs] == L.set_indices(offs).tolist()
    assert all(0 <= s < L.SETS for s in core)


def test_what_a_request_says_was_seen_in_a_page_is_each_halfword_looked_up() -> None:
    """`seen_in_page` (slices of the run of sets a page falls in) against each
    halfword's own set: a count there, or a block installed at that offset."""
    rng = np.random.default_rng(11)
    table = L.new_table(L.MODE_ON)
    table[L.JT_COUNT + rng.integers(0, L.SETS, 4000)] = 9
    for key in rng.integers(0, 1 << 27, 30000):
        L.install(table, int(key), 1)  # (odd keys: paged blocks, same offset)
    halfwords = np.arange(0, 4096, 2, dtype=np.int64)
    pages = [0, 1 << 16, 15 << 12, 17 << 16] + [int(p) << 12 for p in rng.integers(0, 1 << 15, 200)]
    seen_anywhere = 0
    for page_off in pages:
        offs = page_off + halfwords
        want = [
            table[L.JT_COUNT + L.set_index(o)] != 0 or L.find(table, 2 * o) >= 0 or L.find(table, 2 * o + 1) >= 0
            for o in offs.tolist()
        ]
        got = L.seen_in_page(table, page_off)
        assert got.dtype == np.bool_ and got.tolist() == want, hex(page_off)
        seen_anywhere += sum(want)
    assert seen_anywhere > 1000  # (the table is full enough to tell)


def test_blocks_in_two_pages_chain_to_each_other() -> None:
    """A loop over two pages: each page's block jumps straight into the other's
    (through the table, as translated code finds its targets), so the
    interpreter calls translated code about once per look at interrupts."""
    code = {CODE: [addi(A0, A0, 1), jal(0x1000)], CODE + 0x1000: [addi(A1, A1, 1), jal(-0x1004)]}
    fast, plain = hart_with("all", code), hart_with("off", code)
    for budget in (1000, 1000, 100_000, 100_000, 100_000):
        calls = int(fast.tier1.table[L.JT_CALLS])
        native = int(fast.tier1.table[L.JT_NATIVE])
        fast.run(budget)
        plain.run(budget)
        assert same_state(fast, plain)
    assert int(fast.tier1.table[L.JT_NATIVE]) - native > 0.99 * 100_000
    assert int(fast.tier1.table[L.JT_CALLS]) - calls < 2 * (100_000 // 4096 + 2)


def test_two_hot_blocks_of_one_set_both_stay_installed() -> None:
    """Two blocks whose RAM offsets fall in the same set of the table take
    its two ways and chain to each other; direct mapped, each entry of one
    evicted the other (a loop over both ran interpreted, installing them by
    turns)."""
    other = CODE + 0x10002
    assert L.set_index(other) == L.set_index(CODE)
    code = {CODE: [addi(A0, A0, 1), jal(other - CODE - 4)], other: [addi(A1, A1, 1), jal(CODE - other - 4)]}
    fast = Hart(0, GuestRAM(1 << 17), S.new_shared_state(1), jit="all")
    plain = Hart(0, GuestRAM(1 << 17), S.new_shared_state(1), jit="off")
    for hart in (fast, plain):
        for off, insns in code.items():
            for i, insn in enumerate(insns):
                hart.ram.write_int(S.RAM_BASE + off + 4 * i, 4, insn)
        hart.pc = S.RAM_BASE + CODE
    table = fast.tier1.table
    for budget in (1000, 1000, 100_000):
        native = int(table[L.JT_NATIVE])
        fast.run(budget)
        plain.run(budget)
        assert same_state(fast, plain)
    assert L.find(table, 2 * CODE) >= 0 and L.find(table, 2 * other) >= 0
    assert int(table[L.JT_NATIVE]) - native > 0.99 * 100_000


def test_a_set_keeps_the_two_blocks_installed_last() -> None:
    table = L.new_table(L.MODE_ON)
    offs = np.arange(0, 1 << 20, 2, dtype=np.int64)
    a, b, c, d = (2 * int(o) for o in offs[L.set_indices(offs) == L.set_index(CODE)][:4])  # four blocks of one set
    for key, fn in ((a, 10), (b, 20)):
        L.install(table, key, fn)
    assert L.find(table, a) >= 0 and L.find(table, b) >= 0
    L.install(table, c, 30)  # a, the older, goes
    assert L.find(table, a) < 0 and table[L.JT_FN + L.find(table, b)] == 20 and table[L.JT_FN + L.find(table, c)] == 30
    L.install(table, b, 21)  # new code for a block replaces its own
    assert table[L.JT_FN + L.find(table, b)] == 21 and L.find(table, c) >= 0
    L.install(table, d, 0)  # a place with nothing to run: b, the older, goes
    assert L.find(table, b) < 0 and L.find(table, c) >= 0 and table[L.JT_FN + L.find(table, d)] == 0
    L.install(table, a, 11)  # the place with nothing to run goes before a block that runs
    assert L.find(table, d) < 0 and L.find(table, a) >= 0 and L.find(table, c) >= 0
    assert L.installed(table, np.array([a, b, c, d])).tolist() == [L.find(table, k) for k in (a, b, c, d)]


def test_the_interpreter_finds_a_block_further_on_in_straight_line_code() -> None:
    """Translated code hands back before a CSR instruction; no block starts at
    it or at the next two instructions, one starts after them: the
    interpreter looks on past the places where it counts entries and runs
    the rest of the loop translated, not up to its jump."""
    body = [addi(A0, A0, 1)] * 4 + [csrr_mscratch(T0), addi(A1, A1, 1), addi(A1, A1, 1)] + [addi(A2, A2, 1)] * 20
    loop = body + [jal(-4 * len(body))]
    further_on = CODE + 4 * 7  # after the CSR instruction and the two below it
    fast, plain = hart_with("all", {CODE: loop}), hart_with("off", {CODE: loop})
    for hart in (fast, plain):
        hart.run(10 * len(loop))  # every place control arrived at gets its block (mode "all")
        hart.pc = S.RAM_BASE + further_on
        hart.run(1)  # ... and the place further on too
        hart.pc = S.RAM_BASE + CODE
    table = fast.tier1.table
    assert L.find(table, 2 * further_on) >= 0, "no block further on"
    table[L.JT_THRESHOLD] = 1 << 40  # no new blocks from here on
    for after_csr in (CODE + 4 * 5, CODE + 4 * 6):  # drop the blocks that start right after the CSR instruction
        slot = L.find(table, 2 * after_csr)
        if slot >= 0:
            table[L.JT_KEY + slot] = -1
    native = int(table[L.JT_NATIVE])
    iterations = 1000
    fast.run(iterations * len(loop))
    plain.run(iterations * len(loop))
    assert same_state(fast, plain)
    # Per iteration three instructions are interpreted (the CSR instruction and
    # the two after it), the 25 others run translated.
    assert int(table[L.JT_NATIVE]) - native > 0.85 * iterations * len(loop)


def test_a_block_gets_hot_by_the_instructions_run_from_it_not_its_entries() -> None:
    """A block's count is its entries plus the instructions interpreted after
    them up to the next block entry: a long body entered a few times is queued
    for translation, a short one entered as often is not. (Counting entries
    only, a 1200-instruction body called 2000 times a boot was never compiled.)"""

    def entered_ten_times(body: int) -> Hart:
        # Ten entries of a straight body (a jump in, a jump back to the loop).
        loop = [addi(A0, A0, 1), jal(0x800)]
        block = [addi(A1, A1, 1)] * body + [jal(-0x800 - 4 * body - 4)]
        hart = hart_with("off", {CODE: loop, CODE + 0x804: block})
        hart._jt = L.new_table(L.MODE_ON, threshold=1000)
        hart.run(10 * (body + 3))
        return hart

    def queued(hart: Hart) -> list[int]:
        jt = hart._jt
        return [int(k) >> 1 for k in jt[L.JT_QUEUE : L.JT_QUEUE + jt[L.JT_QLEN]]]

    long_body, short_body = entered_ten_times(150), entered_ten_times(10)
    assert int(long_body.st[A1]) == 10 * 150 and int(short_body.st[A1]) == 10 * 10
    assert queued(long_body) == [CODE + 0x804]
    assert queued(short_body) == []


def test_a_block_the_cache_index_cannot_have_counts_on_to_the_probe_count() -> None:
    """With a cache index, a block is queued for a look-up there at the table's
    threshold only if the index's filter may have its entry key; one it rules
    out counts on to the probe count (where the service is asked) without a
    trip through the host."""
    from pocketvm.cpu.tier1.translator import entry_key_in_ram

    body = 150
    loop = [addi(A0, A0, 1), jal(0x800)]
    block = [addi(A1, A1, 1)] * body + [jal(-0x800 - 4 * body - 4)]

    def queued_after(entries: int, in_index: bool) -> list[int]:
        hart = hart_with("off", {CODE: loop, CODE + 0x804: block})
        hart._jt = jt = L.new_table(L.MODE_ON, threshold=1000)
        off = CODE + 0x804
        # (else the index has another block: the one after it)
        cached = [entry_key_in_ram(hart.ram.u16, off if in_index else off + 4, False)]
        L.set_filter(jt, np.array(cached, dtype=np.int64), probe=4000)
        hart.run(entries * (body + 3))
        return [int(k) >> 1 for k in jt[L.JT_QUEUE : L.JT_QUEUE + jt[L.JT_QLEN]]]

    assert queued_after(10, in_index=True) == [CODE + 0x804]  # 1500 instructions: looked up
    assert queued_after(10, in_index=False) == []  # ruled out: counting on
    assert queued_after(30, in_index=False) == [CODE + 0x804]  # 4500: the service is asked

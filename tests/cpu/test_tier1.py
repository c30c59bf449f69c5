"""Tier 1 (translated code) gives exactly the interpreter's results.

The guest suite compares translated runs with QEMU (tests/guest/
test_guest_tier1.py); these tests pin down what QEMU cannot show: the exact
instruction count, code changed behind the CPU's back (as a device's DMA
does), and whole deterministic runs being identical with and without tier 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tier1_diff import branch

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.memory import GuestRAM

A0 = 10
GUEST_BUILD = Path(__file__).resolve().parents[1] / "guest" / "build.py"


def addi(rd: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (rd << 7) | 0x13


def jal_back(bytes_back: int) -> int:
    imm = -bytes_back & 0x1FFFFF
    return (
        (((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3FF) << 21) | (((imm >> 11) & 1) << 20)
        | (((imm >> 12) & 0xFF) << 12) | 0x6F
    )  # fmt: skip


def loop_hart(jit: str) -> Hart:
    """An endless loop at RAM + 0x1000: addi a0, a0, 1; j back."""
    hart = Hart(0, GuestRAM(1 << 16), S.new_shared_state(1), jit=jit)
    hart.ram.write_int(S.RAM_BASE + 0x1000, 4, addi(A0, A0, 1))
    hart.ram.write_int(S.RAM_BASE + 0x1004, 4, jal_back(4))
    hart.pc = S.RAM_BASE + 0x1000
    return hart


def test_translated_loop_counts_exactly_and_sees_code_written_behind_its_back() -> None:
    hart = loop_hart("all")
    for _ in range(5):
        hart.run(1000)
    assert hart.x(A0) == 2500
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) == 5000
    assert int(hart.tier1.table[L.JT_NATIVE]) > 4000, "the loop did not run translated"
    # The host (a device's DMA) rewrites the loop's first instruction.
    hart.ram.write_int(S.RAM_BASE + 0x1000, 4, addi(A0, A0, 7))
    hart.run(1000)
    assert hart.x(A0) == 2500 + 7 * 500
    assert int(hart.tier1.table[L.JT_STALE]) >= 1
    for _ in range(3):
        hart.run(1000)
    assert hart.x(A0) == 2500 + 7 * 2000
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) == 9000


@pytest.mark.parametrize("budget", [1, 2, 3, 7, 1001])
def test_budget_is_never_overrun(budget: int) -> None:
    plain, fast = loop_hart("off"), loop_hart("all")
    for _ in range(20):
        plain.run(budget)
        fast.run(budget)
        assert fast.pc == plain.pc and fast.x(A0) == plain.x(A0)
        assert int(fast.st[S.CSR + S.CSR_MINSTRET]) == int(plain.st[S.CSR + S.CSR_MINSTRET])


# A loop with a branch forward inside it (x10 counts, x11/x12 alternate the path):
#  0: addi a0, a0, 1      4: addi a1, a1, 1     8: bne a1, a2, +8 (to 16)
# 12: addi a3, a3, 1     16: addi a4, a4, 1    20: bne a4, x0, -20 (to 0)
BRANCHY = [addi(10, 10, 1), addi(11, 11, 1), branch(1, 11, 12, 8), addi(13, 13, 1), addi(14, 14, 1),
           branch(1, 14, 0, -20)]


def test_a_region_checks_its_budget_only_where_a_loop_may_come_back() -> None:
    """At its entry and at the targets of jumps back, each for the longest way
    forward from there (0 -> 12 -> 16: 3 + 1 + 2 instructions)."""
    from pocketvm.cpu.rvc import expansion_table
    from pocketvm.cpu.tier1.codegen import BlockCodegen
    from pocketvm.cpu.tier1.decode import decode_region

    page = np.zeros(2048, dtype=np.uint16)
    page[: 2 * len(BRANCHY)] = np.array(BRANCHY, dtype=np.uint32).view(np.uint16)
    region = decode_region(page, expansion_table(), 0)
    assert sorted(region.blocks) == [0, 12, 16]
    assert BlockCodegen("f", 0, False, region).budget_checks() == {0: 6}


@pytest.mark.parametrize("budget", [1, 2, 5, 6, 7, 13, 1000])
def test_a_branchy_loop_never_overruns_its_budget(budget: int) -> None:
    harts = []
    for jit in ("off", "all"):
        hart = Hart(0, GuestRAM(1 << 16), S.new_shared_state(1), jit=jit)
        for i, insn in enumerate(BRANCHY):
            hart.ram.write_int(S.RAM_BASE + 0x1000 + 4 * i, 4, insn)
        hart.set_x(12, 3)
        hart.set_x(14, 1)
        hart.pc = S.RAM_BASE + 0x1000
        harts.append(hart)
    plain, fast = harts
    for _ in range(30):
        plain.run(budget)
        fast.run(budget)
        assert fast.pc == plain.pc and [fast.x(r) for r in range(10, 15)] == [plain.x(r) for r in range(10, 15)]
        assert int(fast.st[S.CSR + S.CSR_MINSTRET]) == int(plain.st[S.CSR + S.CSR_MINSTRET])
    if budget == 1000:
        assert int(fast.tier1.table[L.JT_NATIVE]) > 20000, "the loop did not run translated"


def _build_guest(name: str) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("guest_build_for_tier1", GUEST_BUILD)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.build_all([name])[name]


@pytest.mark.parametrize("name", ["tier1", "cprog", "priv"])
def test_deterministic_runs_are_identical_with_and_without_tier1(name: str) -> None:
    from pocketvm.console import CapturedConsole
    from pocketvm.machine import VirtualMachine, VMConfig

    elf = _build_guest(name)
    outcomes = {}
    for jit in ("off", "on", "all"):
        console = CapturedConsole()
        vm = VirtualMachine(
            VMConfig(memory=64 << 20, kernel=elf, bios=None, rng=False, deterministic=True, jit=jit), console
        )
        try:
            vm.load_boot_files()
            status = vm.run(max_instructions=200_000_000)
        finally:
            vm.close()
        hart = vm.harts[0]
        outcomes[jit] = (
            status.code,
            bytes(console.output),
            int(hart.st[S.CSR + S.CSR_MINSTRET]),
            int(vm.sh[S.SH_MTIME]),
            np.array(hart.st[: S.PC + 1]).tobytes(),
        )
    assert outcomes["on"] == outcomes["off"]
    assert outcomes["all"] == outcomes["off"]


@pytest.mark.parametrize(("saved_with", "restored_with"), [("all", "off"), ("off", "all"), ("on", "all")])
def test_snapshot_taken_with_one_tier_restores_with_the_other(
    saved_with: str, restored_with: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots hold no translated code: a restored VM translates again (or not) and goes on exactly."""
    from pocketvm.console import CapturedConsole
    from pocketvm.machine import VirtualMachine, VMConfig
    from pocketvm.snapshot.restore import restore_vm
    from pocketvm.snapshot.save import save_snapshot

    elf = _build_guest("cprog")

    def start(jit: str, console: CapturedConsole) -> VirtualMachine:
        vm = VirtualMachine(
            VMConfig(memory=64 << 20, kernel=elf, bios=None, rng=False, deterministic=True, jit=jit, name="t"), console
        )
        vm.load_boot_files()
        return vm

    reference_console = CapturedConsole()
    reference = start("off", reference_console)
    try:
        assert reference.run(max_instructions=200_000_000).code == 0
    finally:
        reference.close()
    total = int(reference.harts[0].st[S.CSR + S.CSR_MINSTRET])

    first_console = CapturedConsole()
    first = start(saved_with, first_console)
    try:
        assert first.run(max_instructions=total // 2).reason == "limit"
        save_snapshot(first, tmp_path / "snap")
    finally:
        first.close()
    monkeypatch.setenv("POCKETVM_JIT", restored_with)
    console = CapturedConsole()
    restored = restore_vm(tmp_path / "snap", console, "r", tmp_path / "disks")
    try:
        assert restored.vm.harts[0].tier1 is None if restored_with == "off" else restored.vm.harts[0].tier1 is not None
        assert restored.vm.run(max_instructions=200_000_000).code == 0
    finally:
        restored.vm.close()
        restored.disks.finish()
    assert bytes(first_console.output) + bytes(console.output) == bytes(reference_console.output)
    assert int(restored.vm.harts[0].st[S.CSR + S.CSR_MINSTRET]) == total

"""`VirtualMachine.run(max_instructions=N)` returns, whatever the guest does.

A guest that traps forever retires no instruction: its first instruction
is illegal and the trap vector (mtvec = 0 at reset) has no memory behind
it, so every step is a fetch fault taken at once. The limit must count
those steps too, or a bare-metal test of a broken program (`run_elf`)
never ends. A guard sets the console's quit flag if the run hangs.
"""

from __future__ import annotations

from pathlib import Path

from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, VirtualMachine, VMConfig

HANG_GUARD_S = 60.0


def test_a_guest_that_only_traps_still_reaches_the_limit(tmp_path: Path, hang_guard) -> None:
    program = tmp_path / "illegal.bin"
    program.write_bytes(bytes(4))  # 0x00000000: illegal; then mtvec = 0 -> fetch faults forever
    console = CapturedConsole()
    vm = VirtualMachine(VMConfig(memory=16 * MiB, kernel=program, bios=None, rng=False, deterministic=True), console)
    try:
        vm.load_boot_files()
        with hang_guard(console, HANG_GUARD_S):
            status = vm.run(max_instructions=3_000_000)
    finally:
        vm.close()
    assert (status.code, status.reason) == (124, "limit"), status

"""Run a bare-metal program (ELF or raw binary at 0x8000_0000) in M-mode.

This is what `pocket run --bios none --kernel PROGRAM.elf` does, as a Python
API for tests: the UART output is captured and the exit code is the one the
program wrote to the test device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pocketvm.console import CapturedConsole
from pocketvm.cpu.tier1 import layout
from pocketvm.machine import MiB, VirtualMachine, VMConfig


@dataclass
class BareMetalResult:
    exit_code: int
    output: bytes
    reason: str


def run_elf(
    path: str | Path,
    max_instructions: int = 200_000_000,
    memory: int = 128 * MiB,
    cpus: int = 1,
    input_data: bytes = b"",
    jit: str | None = None,
) -> BareMetalResult:
    """`jit`: tier 1 "off", "on" or "all" (every block translated at once);
    None = $POCKETVM_JIT or off (as a bare `Hart`: the tests' runs stay
    interpreted unless they ask, while `pocket run` has it on by default)."""
    if jit is None:
        jit = layout.MODE_NAMES[layout.mode_from_env()]
    console = CapturedConsole(input_data)
    cfg = VMConfig(memory=memory, cpus=cpus, kernel=Path(path), bios=None, rng=False, deterministic=True, jit=jit)
    vm = VirtualMachine(cfg, console)
    try:
        vm.load_boot_files()
        status = vm.run(max_instructions=max_instructions)
    finally:
        vm.close()
    return BareMetalResult(status.code, bytes(console.output), status.reason)

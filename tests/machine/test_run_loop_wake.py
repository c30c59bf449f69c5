"""Console input wakes a guest sleeping in wfi without the run loop sleeping first.

After feeding console input to the UART, whose receive interrupt wakes the
hart, the run loop used to go to sleep until the next guest timer event
anyway (commit 25b1502): every keystroke waited up to a timer tick, and with
no timer armed, 50 ms.

Nothing here measures time. `VirtualMachine._idle_wait`, where the loop
sleeps, is replaced by a recorder of the machine's state at each call. When
the guest has read everything, the recorder types the next piece of input,
as someone at the console would.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

from pocketvm.console import CapturedConsole
from pocketvm.cpu import state as S
from pocketvm.cpu.trap import current_mip
from pocketvm.machine import MiB, VirtualMachine, VMConfig

HERE = Path(__file__).resolve().parent

# The guest program is built with the tests/guest runtime by its build
# module, loaded by path because test folders are not packages.
_spec = importlib.util.spec_from_file_location("guest_build", HERE.parent / "guest" / "build.py")
assert _spec is not None and _spec.loader is not None
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)

TYPED = [b"hello", b" again", b" and quit: q"]
# Two per piece of input would already be a bug; far more means the guest
# never woke up and the loop would spin forever.
MAX_IDLE_WAITS = 50
# Only against a hang if the loop stops calling _idle_wait; never reached.
HANG_GUARD_S = 120.0


@dataclass(frozen=True)
class IdleWait:
    unread_input: bool  # bytes fed to the UART that the guest has not read yet
    wakes_a_hart: bool  # an interrupt pending and enabled at a hart: wfi ends


@pytest.fixture(scope="module")
def wfi_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return guest_build.build_source(HERE / "guest" / "wfi_echo.c", tmp_path_factory.mktemp("wfi_echo"))


def _state(vm: VirtualMachine) -> IdleWait:
    return IdleWait(
        unread_input=not vm.uart.wants_input(),
        wakes_a_hart=any(current_mip(h.st, vm.sh) & h.st[S.CSR + S.CSR_MIE] for h in vm.harts),
    )


def test_fed_input_wakes_the_guest_without_an_idle_wait(
    wfi_echo: Path, monkeypatch: pytest.MonkeyPatch, hang_guard
) -> None:
    console = CapturedConsole()
    config = VMConfig(memory=16 * MiB, kernel=wfi_echo, bios=None, rng=False, deterministic=True)
    vm = VirtualMachine(config, console)
    waits: list[IdleWait] = []
    to_type = list(TYPED)

    def idle_wait(self: VirtualMachine) -> None:
        state = _state(self)
        waits.append(state)
        if len(waits) > MAX_IDLE_WAITS:
            raise AssertionError(f"the guest never woke up: {bytes(console.output)!r}")
        if to_type and not state.unread_input and not console.has_input():
            console.send(to_type.pop(0))

    monkeypatch.setattr(VirtualMachine, "_idle_wait", idle_wait)
    try:
        vm.load_boot_files()
        with hang_guard(console, HANG_GUARD_S):
            status = vm.run(max_instructions=20_000_000)
    finally:
        vm.close()

    assert (status.code, status.reason) == (0, "poweroff"), (status, bytes(console.output))
    assert bytes(console.output) == b"ready\n" + b"".join(TYPED)
    # The guest slept before each piece of input: the recorder did the typing.
    assert sum(not w.unread_input for w in waits) >= len(TYPED)
    assert [w for w in waits if w.unread_input and w.wakes_a_hart] == [], waits

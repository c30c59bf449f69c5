"""An idle guest costs the host nothing, whatever state the console is in.

The console's event says "input arrived". It used to stay set once stdin
reached its end (`pocket run < /dev/null`, or a pipe that closed), and
every idle wait of the run loop returned at once: an idle VM spun a host
core at full speed. Nothing here measures time: the console event is
replaced by one that records whether each wait returned because the event
was set (a wake-up) or because its timeout ran out (a real sleep).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_run_loop_wake import HANG_GUARD_S, guest_build

from pocketvm.console import HostConsole
from pocketvm.machine import MiB, VirtualMachine, VMConfig

HERE = Path(__file__).resolve().parent
SLEEPS = 4  # idle waits to watch before quitting


class RecordingEvent(threading.Event):
    def __init__(self, on_wait):
        super().__init__()
        self.results: list[bool] = []
        self._on_wait = on_wait

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        self.results.append(woke)
        self._on_wait(self)
        return woke


@pytest.fixture(scope="module")
def wfi_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return guest_build.build_source(HERE / "guest" / "wfi_echo.c", tmp_path_factory.mktemp("wfi_echo_idle"))


def test_an_idle_guest_does_not_spin_after_stdin_ends(wfi_echo: Path, hang_guard) -> None:
    r, w = os.pipe()
    os.close(w)  # stdin at its end before the guest even starts
    stdin = os.fdopen(r, "rb", buffering=0)
    stdout = open(os.devnull, "wb")
    console = HostConsole(stdin=stdin, stdout=stdout, interactive=False)

    def on_wait(event: RecordingEvent) -> None:
        if len(event.results) >= SLEEPS:
            console.quit_requested = True

    console.event = RecordingEvent(on_wait)
    # The guest sits in wfi with no timer armed, waiting for input that never comes.
    vm = VirtualMachine(VMConfig(memory=16 * MiB, kernel=wfi_echo, bios=None, rng=False), console)
    try:
        vm.load_boot_files()
        with console, hang_guard(console, HANG_GUARD_S):
            console._thread.join(10)  # the reader has seen the end of stdin
            assert console.eof
            status = vm.run()
    finally:
        vm.close()
        stdin.close()
        stdout.close()
    assert status.reason == "quit"
    # Every wait was a sleep that ran its course, none a wake-up by a stale event.
    assert console.event.results == [False] * SLEEPS

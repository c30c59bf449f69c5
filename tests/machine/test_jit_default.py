"""Tier 1 (the JIT) by default: on for a VM where the host gives it a
second CPU for the translation service, off where it has one or may not
start programs (a sandbox VM); $POCKETVM_JIT and `--jit` decide first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pocketvm.console import CapturedConsole
from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.machine import MiB, VirtualMachine, VMConfig, VMError
from pocketvm.memory import GuestRAM


def tier1_mode(config: VMConfig) -> int:
    vm = VirtualMachine(config, CapturedConsole())
    try:
        tier1 = vm.harts[0].tier1
        return L.MODE_OFF if tier1 is None else tier1.mode
    finally:
        vm.close()


@pytest.mark.parametrize(
    "cpus, env, jit, expected",
    [
        (2, None, None, L.MODE_ON),
        (8, None, None, L.MODE_ON),
        (1, None, None, L.MODE_OFF),  # the niced service would get ~3% of the hart's CPU
        (2, "off", None, L.MODE_OFF),
        (1, "on", None, L.MODE_ON),
        (2, None, "off", L.MODE_OFF),
        (1, "off", "on", L.MODE_ON),
    ],
)
def test_a_vms_tier1_mode(monkeypatch: pytest.MonkeyPatch, cpus: int, env: str | None, jit: str | None, expected: int):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    if env is None:
        monkeypatch.delenv(L.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(L.ENV_VAR, env)
    assert tier1_mode(VMConfig(memory=16 * MiB, bios=None, rng=False, jit=jit)) == expected


def test_a_misspelt_environment_variable_is_a_vm_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(L.ENV_VAR, "fast")
    with pytest.raises(VMError, match="POCKETVM_JIT='fast': expected one of off, on, all"):
        VirtualMachine(VMConfig(memory=16 * MiB, bios=None, rng=False), CapturedConsole())


def test_a_bare_hart_stays_interpreted_unless_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv(L.ENV_VAR, raising=False)
    assert Hart(0, GuestRAM(1 << 20), S.new_shared_state(1)).tier1 is None


def test_a_hardened_vm_process_defaults_to_interpreted_and_keeps_an_explicit_choice():
    code = (
        "from pocketvm.manager.harden import harden; applied = harden();"
        "from pocketvm.cpu.tier1 import layout;"
        "print(int('seccomp' in applied), layout.vm_default_mode())"
    )
    env = {k: v for k, v in os.environ.items() if k != L.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "0":
        pytest.skip("no seccomp filter on this host (libseccomp missing)")
    assert out[1] == str(L.MODE_OFF)  # it could not start the translation service: no execve
    env[L.ENV_VAR] = "on"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == str(L.MODE_ON)

"""The guest profiler (POCKETVM_GUEST_PROFILE) samples where guest instructions go.

A program runs a loop of 3,000,000 iterations in one function and the same
loop 1,000,000 times in another: the samples must name those two functions
(by the ELF's symbol table, as `python -m pocketvm.guestprof` names kernel
functions from kallsyms) in about that proportion.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_run_loop_wake import guest_build

from pocketvm import guestprof
from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, VirtualMachine, VMConfig

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def two_loops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return guest_build.build_source(HERE / "guest" / "two_loops.c", tmp_path_factory.mktemp("two_loops"))


def symbols_as_kallsyms(elf: Path, out: Path) -> Path:
    nm = subprocess.run([guest_build.compiler().replace("gcc", "nm"), str(elf)], capture_output=True, text=True,
                        check=True).stdout
    out.write_text(nm)
    return out


def test_samples_land_in_the_functions_in_proportion(two_loops: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    profile = tmp_path / "profile"
    monkeypatch.setenv(guestprof.ENV_VAR, str(profile))
    vm = VirtualMachine(VMConfig(memory=16 * MiB, kernel=two_loops, bios=None, rng=False), CapturedConsole())
    try:
        vm.load_boot_files()
        status = vm.run(max_instructions=200_000_000)
    finally:
        vm.close()
    assert status.code == 0, status
    assert guestprof.main([str(profile), "--symbols", str(symbols_as_kallsyms(two_loops, tmp_path / "syms"))]) == 0
    shares = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        pct, name = line.split()
        shares[name.split(".")[0]] = float(pct.rstrip("%"))  # gcc may name them heavy.constprop.0
    assert shares["heavy"] + shares["light"] > 90, shares
    assert 2.5 < shares["heavy"] / shares["light"] < 3.5, shares
    assert guestprof.main([str(tmp_path / "missing")]) == 1

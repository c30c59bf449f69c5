"""The prebuilt CPU core (`pocketvm.cpu.native`) runs guests exactly as
numba's core does, and `pocket` runs it without importing numba."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketvm.cpu import native, numba_cache_dir
from pocketvm.cpu import state as S

from test_tier1 import _build_guest


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return native.build(tmp_path_factory.mktemp("core") / "core.so")


def _run(elf: Path, jit: str, core: native.NativeCore | None) -> tuple:
    from pocketvm.console import CapturedConsole
    from pocketvm.machine import VirtualMachine, VMConfig

    console = CapturedConsole()
    vm = VirtualMachine(VMConfig(memory=64 << 20, kernel=elf, bios=None, rng=False, deterministic=True, jit=jit), console)
    try:
        for hart in vm.harts:
            hart._native = core
        vm.load_boot_files()
        status = vm.run(max_instructions=200_000_000)
    finally:
        vm.close()
    hart = vm.harts[0]
    return (
        status.code,
        bytes(console.output),
        int(hart.st[S.CSR + S.CSR_MINSTRET]),
        int(vm.sh[S.SH_MTIME]),
        np.array(hart.st[: S.PC + 1]).tobytes(),  # (not RAM: the device tree holds a random seed)
    )


@pytest.mark.parametrize("jit", ["off", "all"])
@pytest.mark.parametrize("name", ["cprog", "priv", "tier1"])
def test_a_guest_runs_the_same_on_the_prebuilt_core(name: str, jit: str, library: Path) -> None:
    elf = _build_guest(name)
    core = native.NativeCore(ctypes.CDLL(str(library)), library)
    numba_run = _run(elf, jit, None)
    prebuilt_run = _run(elf, jit, core)
    assert prebuilt_run[:3] == numba_run[:3]  # exit, console output, instructions: the readable part first
    assert prebuilt_run == numba_run


def test_pocket_runs_the_prebuilt_core_without_numba(library: Path, tmp_path: Path, monkeypatch) -> None:
    """... and numba's where it is turned off or cannot be built (a one-line note at -v, same output);
    a damaged (or missing, or stale) library is built again first, with a line saying so."""
    elf = _build_guest("cprog")
    tables = numba_cache_dir()  # the instruction-expansion table is cached there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = native.library_path()
    path.parent.mkdir(parents=True)
    env = {**os.environ, "POCKETVM_LAUNCHER": "off", "NUMBA_CACHE_DIR": str(tables)}
    env.pop("POCKETVM_NATIVE_CORE", None)
    cmd = [sys.executable, "-X", "importtime", "-m", "pocketvm", "-v", "run", "--bios", "none", "--kernel", str(elf),
           "--memory", "64M", "--vsock", "none"]
    no_linker = tmp_path / "bin"  # a PATH without ld
    no_linker.mkdir()
    outputs = {}
    for case in ("prebuilt", "turned off", "no linker", "damaged"):
        run_env = dict(env)
        if case == "prebuilt":
            shutil.copy(library, path)
            shutil.copy(native.digest_path(library), native.digest_path(path))
        elif case == "turned off":
            run_env["POCKETVM_NATIVE_CORE"] = "off"
        else:
            path.write_bytes(library.read_bytes()[:4096])  # a truncated copy: loading it would be a SIGBUS
            if case == "no linker":
                run_env["PATH"] = str(no_linker)
        done = subprocess.run(cmd, env=run_env, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, err[-2000:]
        assert "Traceback" not in err
        imported = [line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
        if case in ("prebuilt", "damaged"):
            assert f"CPU core: prebuilt ({path})" in err
            assert not [m for m in imported if m.split(".")[0] == "numba"]
            assert ("building the CPU core" in err) == (case == "damaged")
        else:
            assert "CPU core: numba's" in err
            assert "numba" in imported
            assert ("no linker to build one" in err) == (case == "no linker")
        outputs[case] = done.stdout
    assert native._intact(path)  # built again, whole
    assert b"sorted" in outputs["prebuilt"]
    assert outputs["prebuilt"] == outputs["turned off"] == outputs["no linker"] == outputs["damaged"]


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        (["run"], True),
        (["-v", "restore", "snap"], True),
        (["image", "build", "debian"], False),
        (["run", "--help"], False),
        (["launcher", "start"], True),
        (["launcher", "stop"], False),
        (["image", "ls"], False),
        (["disk", "info", "x.qcow2"], False),
        (["--help"], False),
        ([], False),
    ],
)
def test_only_commands_that_run_a_vm_build_a_missing_core(argv: list[str], runs: bool) -> None:
    from pocketvm.main import runs_a_vm

    assert runs_a_vm(argv) is runs

"""Run guest programs under QEMU (the oracle) and pocketvm, and compare.

QEMU results are cached per ELF (keyed by its SHA-256, the QEMU version and
the command line) in build/qemu-cache/, so a repeated run costs nothing.
pocketvm runs in-process through `pocketvm.baremetal.run_elf` (the numba
core compiles once per process); set POCKETVM_GUEST_RUNNER=cli to go
through `python -m pocketvm run` instead.

As a script, runs programs under both and prints the first difference:
    .venv/bin/python tests/guest/harness.py [--qemu-only] NAME_OR_ELF ...
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
QEMU = os.environ.get("GUEST_QEMU", "qemu-system-riscv64")
QEMU_ARGS = ["-M", "virt", "-m", "128M", "-bios", "none", "-nographic", "-serial", "stdio", "-monitor", "none"]
QEMU_TIMEOUT = 30.0  # seconds; programs finish in well under one
MAX_INSTRUCTIONS = 200_000_000
RUNNER_ENV = "POCKETVM_GUEST_RUNNER"


def sibling(name: str) -> ModuleType:
    """Import tests/guest/<name>.py under a private module name, so that
    other test folders' modules of the same name cannot shadow it."""
    modname = f"guest_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


build = sibling("build")
CACHE_DIR = build.BUILD_DIR / "qemu-cache"


class HarnessError(RuntimeError):
    """A run could not complete (timeout, missing tool)."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output: bytes
    runner: str

    def text(self) -> str:
        return self.output.decode("latin-1")


# --- QEMU ------------------------------------------------------------------
@functools.cache
def qemu_version() -> str:
    try:
        proc = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise HarnessError(f"{QEMU} not found: install qemu-system-misc (Debian package)") from None
    return proc.stdout.splitlines()[0] if proc.stdout else "unknown"


def qemu_command(elf: Path) -> list[str]:
    return [QEMU, *QEMU_ARGS, "-kernel", str(elf)]


def _cache_key(elf: Path) -> str:
    h = hashlib.sha256()
    h.update(Path(elf).read_bytes())
    h.update(qemu_version().encode())
    h.update("\0".join(QEMU_ARGS).encode())
    return h.hexdigest()


def run_qemu(elf: Path, use_cache: bool = True) -> RunResult:
    """Run an ELF under QEMU; the test device's exit code is QEMU's."""
    key = _cache_key(elf)
    entry = CACHE_DIR / f"{key}.json"
    if use_cache and entry.exists():
        data = json.loads(entry.read_text())
        return RunResult(data["exit_code"], bytes.fromhex(data["output"]), "qemu(cached)")
    try:
        proc = subprocess.run(
            qemu_command(elf), stdin=subprocess.DEVNULL, capture_output=True, timeout=QEMU_TIMEOUT
        )
    except subprocess.TimeoutExpired as e:
        raise HarnessError(
            f"QEMU did not finish {elf} within {QEMU_TIMEOUT}s; output so far:\n"
            + (e.stdout or b"").decode("latin-1")[-2000:]
        ) from None
    if proc.stderr and not proc.stdout:
        # QEMU could not start the program (bad ELF, bad option).
        raise HarnessError(f"QEMU failed on {elf} (exit {proc.returncode}):\n{proc.stderr.decode('latin-1')}")
    result = RunResult(proc.returncode, proc.stdout, "qemu")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"exit_code": result.exit_code, "output": result.output.hex(), "elf": str(elf)}))
    tmp.replace(entry)
    return result


# --- pocketvm --------------------------------------------------------------
def _run_elf_api():
    try:
        from pocketvm.baremetal import run_elf
    except ImportError as e:
        raise ImportError(
            "pocketvm.baremetal.run_elf is not available (has the CPU core landed?); "
            f"the guest suite cannot run pocketvm: {e}"
        ) from e
    return run_elf


def run_pocketvm(elf: Path, max_instructions: int = MAX_INSTRUCTIONS, jit: str | None = None) -> RunResult:
    """Run an ELF under pocketvm (in-process by default). `jit`: tier 1 mode
    ("off", "on", "all"); None leaves it to $POCKETVM_JIT (default off, as
    `run_elf`; `pocket run` alone would have it on)."""
    if os.environ.get(RUNNER_ENV, "api") == "cli":
        cmd = [sys.executable, "-m", "pocketvm", "run", "--bios", "none", "--kernel", str(elf)]
        from pocketvm.cpu.tier1 import layout  # (as run_elf resolves None)

        mode = jit or layout.MODE_NAMES[layout.mode_from_env()]
        if mode != "all":  # ("all" has no flag: $POCKETVM_JIT=all reaches the process)
            cmd += ["--jit", mode]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"pocketvm did not finish {elf} within 600s") from None
        return RunResult(proc.returncode, proc.stdout, "pocketvm(cli)")
    run_elf = _run_elf_api()
    result = run_elf(str(elf), max_instructions=max_instructions, jit=jit)
    return RunResult(int(result.exit_code), bytes(result.output), "pocketvm" if jit is None else f"pocketvm(jit {jit})")


# --- verdicts --------------------------------------------------------------
def self_check_problems(result: RunResult) -> list[str]:
    """What is wrong with a run judged by the program's own checks."""
    problems = []
    lines = result.text().splitlines()
    problems += [line for line in lines if line.startswith("FAIL")]
    if result.exit_code != 0:
        problems.append(f"exit code {result.exit_code}")
    if not lines or lines[-1] != "PASS":
        problems.append(f"last line is {lines[-1]!r}, not 'PASS'" if lines else "no output")
    return problems


def difference(expected: RunResult, actual: RunResult, context: int = 3) -> str | None:
    """None when both runs agree byte for byte, else a readable account of
    the first differing line (with some context) and of the exit codes."""
    report = []
    if expected.output != actual.output:
        exp_lines = expected.output.splitlines(keepends=True)
        act_lines = actual.output.splitlines(keepends=True)
        n = 0
        while n < min(len(exp_lines), len(act_lines)) and exp_lines[n] == act_lines[n]:
            n += 1
        report.append(f"output differs at line {n + 1} ({expected.runner} vs {actual.runner}):")
        for k in range(max(0, n - context), n):
            report.append(f"    {exp_lines[k].decode('latin-1').rstrip()}")
        for tag, lines in (("-", exp_lines), ("+", act_lines)):
            shown = lines[n : n + context]
            report += [f"  {tag} {line.decode('latin-1')!r}" for line in shown] or [f"  {tag} <end>"]
        report.append(
            f"  ({len(expected.output)} bytes from {expected.runner}, {len(actual.output)} from {actual.runner})"
        )
    if expected.exit_code != actual.exit_code:
        report.append(f"exit code: {expected.runner} {expected.exit_code}, {actual.runner} {actual.exit_code}")
    return "\n".join(report) if report else None


def resolve(name_or_path: str) -> Path:
    """A program name (built on demand) or a path to an ELF."""
    path = Path(name_or_path)
    if path.suffix == ".elf" and path.exists():
        return path
    return build.build_all([name_or_path])[name_or_path]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("programs", nargs="+", help="program names from src/ or ELF paths")
    ap.add_argument("--qemu-only", action="store_true", help="only run QEMU and the self-checks")
    ap.add_argument("--show", action="store_true", help="print the QEMU output")
    ap.add_argument("--no-cache", action="store_true", help="run QEMU even if a cached result exists")
    args = ap.parse_args(argv)
    status = 0
    for prog in args.programs:
        try:
            elf = resolve(prog)
        except build.BuildError as e:
            print(f"{prog}: build failed: {e}")
            status = 1
            continue
        ref = run_qemu(elf, use_cache=not args.no_cache)
        if args.show:
            sys.stdout.write(ref.text())
        problems = self_check_problems(ref)
        print(f"{prog}: qemu self-check {'ok' if not problems else 'FAILED'}")
        for p in problems:
            print(f"    {p}")
        status |= bool(problems)
        if not args.qemu_only:
            diff = difference(ref, run_pocketvm(elf))
            print(f"{prog}: pocketvm {'matches' if diff is None else 'DIFFERS'}")
            if diff:
                print(diff)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmarks: bare-metal programs in pocketvm and in QEMU TCG, side by side.

    .venv/bin/python benchmarks/cpu.py [--scale N] [--only NAME ...] [--no-compile-time]

Each program in benchmarks/guest/ is built with riscv64-linux-gnu-gcc, run
in pocketvm (in-process, on the CPU core `pocket` runs: the prebuilt one
if setup.sh built it, else numba's from its warm cache) and in QEMU (`-M virt -bios none`),
and must print the same `result` line in both. pocketvm runs each three
times: interpreter only, with tier 1 (`--jit on`) and an empty translation
cache, then with tier 1 again and the cache the first run filled. Printed
per program: guest
instructions (counted by pocketvm: QEMU's minstret is not an instruction
count without -icount), pocketvm MIPS, QEMU's net wall time (minus the wall
time of an empty program, i.e. QEMU's start-up and exit) and the ratio
pocketvm/QEMU. QEMU is so much faster that it times a build with
--qemu-factor times the work and the result is divided back, which keeps its
start-up noise out of the ratio; a same-size build checks the result line. The one-off numba compile time is measured in a subprocess
with an empty, temporary NUMBA_CACHE_DIR.

Ratios, not absolute times, are what to compare between machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# tests/guest/build.py holds the cross-compiler flags the bare-metal
# programs share; it is a script in a test folder, not a package, so it is
# loaded by path.
_spec = importlib.util.spec_from_file_location("guest_build", REPO / "tests" / "guest" / "build.py")
assert _spec is not None and _spec.loader is not None
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)

GUEST_DIR = Path(__file__).resolve().parent / "guest"
CROSS = guest_build.CROSS
QEMU = os.environ.get("GUEST_QEMU", "qemu-system-riscv64")
MEMORY = 128 << 20
QEMU_ARGS = ["-M", "virt", "-m", "128M", "-bios", "none", "-nographic", "-serial", "stdio", "-monitor", "none"]
PROGRAMS = {
    "hash": "integer hash loop (loads, multiply, xor-shift)",
    "sort": "quicksort + merge of 32-bit keys",
    "fpu": "n-body step (double) + float dot product",
    "vm": "hash table in S-mode, Sv39 4 KiB pages",
}


@dataclass
class Result:
    name: str
    instructions: int
    pocket_s: float  # interpreter only
    jit_s: float  # with tier 1, empty translation cache (translation included)
    warm_s: float  # with tier 1, the cache the first JIT run filled
    qemu_s: float

    @property
    def mips(self) -> float:
        return self.instructions / self.pocket_s / 1e6

    @property
    def jit_mips(self) -> float:
        return self.instructions / self.jit_s / 1e6

    @property
    def ratio(self) -> float:
        return self.pocket_s / self.qemu_s if self.qemu_s > 0 else float("inf")

    @property
    def jit_ratio(self) -> float:
        return self.jit_s / self.qemu_s if self.qemu_s > 0 else float("inf")

    @property
    def warm_ratio(self) -> float:
        return self.warm_s / self.qemu_s if self.qemu_s > 0 else float("inf")


def build(name: str, scale: int, out_dir: Path) -> Path:
    sources = [GUEST_DIR / "start.S", GUEST_DIR / "bench.c", GUEST_DIR / f"{name}.c"]
    try:
        return guest_build.cross_compile(
            sources, out_dir / f"{name}.elf", GUEST_DIR / "link.ld", [f"-DSCALE={scale}", f"-I{GUEST_DIR}"]
        )
    except guest_build.BuildError as e:
        raise SystemExit(f"build of {name} failed: {e}") from None


def result_line(output: bytes) -> str:
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("result "):
            return line
    return "(no result) " + output.decode(errors="replace")[-200:]


@dataclass
class JitInfo:
    blocks: int = 0
    compile_s: float = 0.0
    invalidated: int = 0


def run_pocketvm(elf: Path, jit: str = "off", info: JitInfo | None = None) -> tuple[int, float, str]:
    """(instructions, seconds in the run loop, result line); `info` gets tier-1 statistics."""
    from pocketvm.console import CapturedConsole
    from pocketvm.cpu import state as S
    from pocketvm.machine import VirtualMachine, VMConfig

    console = CapturedConsole()
    vm = VirtualMachine(
        VMConfig(memory=MEMORY, kernel=elf, bios=None, rng=False, deterministic=True, jit=jit), console
    )
    try:
        vm.load_boot_files()
        tier1 = vm.harts[0].tier1
        if tier1 is not None:  # set-up, not the guest's run: cached code installed, the translation service started
            tier1.start(vm.ram.u16)
        t0 = time.perf_counter()
        status = vm.run(max_instructions=50_000_000_000)
        dt = time.perf_counter() - t0
    finally:
        vm.close()
    if status.code != 0:
        raise SystemExit(f"{elf.name}: pocketvm exit {status.code} ({status.reason}): {bytes(console.output)!r}")
    insns = int(vm.harts[0].st[S.CSR + S.CSR_MINSTRET])
    if info is not None and tier1 is not None:
        info.blocks = tier1.stats.blocks
        info.compile_s = tier1.stats.compile_seconds
        info.invalidated = int(tier1.table[3])
    return insns, dt, result_line(bytes(console.output))


def run_qemu(elf: Path, repeat: int) -> tuple[float, str]:
    """(best wall time of `repeat` runs, result line)."""
    best = float("inf")
    line = ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [QEMU, *QEMU_ARGS, "-kernel", str(elf)], stdin=subprocess.DEVNULL, capture_output=True, timeout=600
        )
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{elf.name}: QEMU exit {proc.returncode}: {proc.stdout!r} {proc.stderr!r}")
        line = result_line(proc.stdout)
    return best, line


_COMPILE_PROBE = """
import sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from pocketvm.baremetal import run_elf
t1 = time.perf_counter()
r = run_elf({elf!r})
t2 = time.perf_counter()
assert r.exit_code == 0, r
print(t2 - t1)
"""


def compile_time(empty_elf: Path) -> float:
    """Seconds the first run() call takes with an empty numba cache."""
    with tempfile.TemporaryDirectory(prefix="pocketvm-numba-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = _COMPILE_PROBE.format(repo=str(REPO), elf=str(empty_elf))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"compile-time probe failed:\n{proc.stderr}")
        return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="work multiplier for every program (default 1)")
    ap.add_argument("--only", nargs="*", choices=sorted(PROGRAMS), help="run only these programs")
    ap.add_argument("--qemu-repeat", type=int, default=3, help="QEMU runs per program; the fastest counts")
    ap.add_argument("--qemu-factor", type=int, default=10, help="QEMU times this many times the work (default 10)")
    ap.add_argument("--no-compile-time", action="store_true", help="skip the cold-cache compile measurement")
    args = ap.parse_args()
    for tool in (CROSS + "gcc", QEMU):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")

    from pocketvm.cpu import native

    # As `pocket run` does: the prebuilt core, built first if it is missing (POCKETVM_NATIVE_CORE=off: numba's).
    prebuilt = native.ensure(print)
    names = args.only or list(PROGRAMS)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    print(f"host: {cores} cores, load average {load:.1f}" + ("  (busy: wall times are skewed)" if load > 0.5 * cores else ""))
    print(f"CPU core: {'prebuilt (pocketvm.cpu.native), as pocket runs it' if prebuilt else 'numba'}")
    with tempfile.TemporaryDirectory(prefix="pocketvm-bench-") as tmp:
        out = Path(tmp)
        empty = build("empty", 1, out)
        elves = {n: build(n, args.scale, out) for n in names}
        big = out / "big"
        big.mkdir()
        big_elves = {n: build(n, args.scale * args.qemu_factor, big) for n in names}

        if not args.no_compile_time:
            print(f"numba compile (cold cache, first run() call): {compile_time(empty):.1f} s", flush=True)

        run_pocketvm(empty)  # loads the compiled core from the cache
        qemu_base, _ = run_qemu(empty, max(args.qemu_repeat, 3))
        print(f"QEMU start-up + exit (empty program): {qemu_base * 1000:.0f} ms, subtracted below\n")

        header = (
            f"{'program':<6} {'guest insns':>12} {'interp s':>9} {'MIPS':>7} {'JIT s':>7} {'MIPS':>7} "
            f"{'warm s':>7} {'MIPS':>7} {'QEMU s':>8} {'interp/Q':>9} {'JIT/Q':>7} {'warm/Q':>7} {'blocks':>6} "
            f"{'compile':>8}  result"
        )
        print(header)
        print("-" * len(header))
        results = []
        mismatches = 0
        for name in names:
            insns, pocket_s, pline = run_pocketvm(elves[name])
            info = JitInfo()
            with tempfile.TemporaryDirectory(prefix="pocketvm-jit-cache-") as jit_cache:
                os.environ["POCKETVM_JIT_CACHE"] = jit_cache
                try:
                    jinsns, jit_s, jline = run_pocketvm(elves[name], "on", info)
                    winsns, warm_s, wline = run_pocketvm(elves[name], "on")
                finally:
                    del os.environ["POCKETVM_JIT_CACHE"]
            _, qline = run_qemu(elves[name], 1)
            qemu_s, _ = run_qemu(big_elves[name], args.qemu_repeat)
            net = max(qemu_s - qemu_base, 1e-3) / args.qemu_factor
            r = Result(name, insns, pocket_s, jit_s, warm_s, net)
            results.append(r)
            bad = [f"{who} {line!r}" for who, line in (("JIT", jline), ("JIT warm", wline), ("QEMU", qline)) if line != pline]
            if jinsns != insns or winsns != insns:
                bad.append(f"JIT counted {jinsns} / {winsns} instructions")
            same = "same" if not bad else f"DIFFERENT from the interpreter's {pline!r}: " + ", ".join(bad)
            mismatches += bool(bad)
            print(
                f"{name:<6} {insns:>12,} {pocket_s:>9.2f} {r.mips:>7.1f} {jit_s:>7.2f} {r.jit_mips:>7.1f} "
                f"{warm_s:>7.2f} {insns / warm_s / 1e6:>7.1f} {net:>8.3f} {r.ratio:>8.1f}x {r.jit_ratio:>6.1f}x "
                f"{r.warm_ratio:>6.1f}x {info.blocks:>6} {info.compile_s:>7.2f}s  {same}",
                flush=True,
            )
        print()
        for name in names:
            print(f"  {name:<6} {PROGRAMS[name]}")
        total_i = sum(r.instructions for r in results)
        total_p = sum(r.pocket_s for r in results)
        total_q = sum(r.qemu_s for r in results)
        total_j = sum(r.jit_s for r in results)
        total_w = sum(r.warm_s for r in results)
        print(
            f"\nall: interpreter {total_i / total_p / 1e6:.1f} MIPS ({total_p / total_q:.1f}x QEMU's wall time), "
            f"JIT {total_i / total_j / 1e6:.1f} MIPS ({total_j / total_q:.1f}x), "
            f"JIT with a warm translation cache {total_i / total_w / 1e6:.1f} MIPS ({total_w / total_q:.1f}x)"
        )
        if mismatches:
            raise SystemExit(f"{mismatches} program(s) gave a different result in pocketvm and QEMU")


if __name__ == "__main__":
    main()

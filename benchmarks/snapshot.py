"""Snapshot benchmark: pocketvm and QEMU side by side on the same booted guest.

Both boot the same Debian kernel, initramfs and OpenSBI with 512 MiB of RAM,
one hart, a 64 MiB ext4 data disk (raw for pocketvm, qcow2 for QEMU, which
needs one to hold its snapshots) and virtio-rng, to the shell prompt. Then:

  save      pocketvm: `pocket snapshot NAME DIR` (the VM's own pause time,
            and the command's wall time including Python start-up);
            QEMU: monitor `savevm` until the monitor answers
  size      RAM + device state as stored (pocketvm: allocated bytes of the
            snapshot directory without the disk copy; QEMU: `info
            snapshots` VM SIZE), and the disk copy pocketvm makes
  restore   from starting the restore command (`pocket restore DIR` /
            `qemu-system-riscv64 ... -loadvm NAME`) to the guest's answer
            to `echo` on the console; best and median of --runs. pocketvm
            twice: in a process of its own (POCKETVM_LAUNCHER=off), and
            handed to a running launcher (`pocket launcher start`)

and a breakdown of where pocketvm's restore time goes.

    .venv/bin/python benchmarks/snapshot.py [--runs N] [--no-qemu]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pocketvm.cli import DEFAULT_APPEND as APPEND  # both get pocketvm's default kernel command line

PROMPT = b"pocket:~# "
MEMORY = "512M"
PROBE = b"echo READY-$((6*7))\n"
ANSWER = b"READY-42"
MiB = 1 << 20


class Console:
    """A child process whose stdin/stdout are the guest console."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.seen = b""
        self.marks: list[tuple[float, int]] = []  # (seconds since start, len(seen)) after each read

    def seen_at(self, needle: bytes) -> float | None:
        """Seconds since start when `needle` had arrived (to the read), or None."""
        pos = self.seen.find(needle)
        if pos < 0:
            return None
        end = pos + len(needle)
        return next((t for t, n in self.marks if n >= end), None)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> float:
        """Seconds since start when `needle` appeared."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.seen[after:]:
                return time.monotonic() - self.start
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.seen += chunk
                self.marks.append((time.monotonic() - self.start, len(self.seen)))
                if needle in self.seen[after:]:
                    return time.monotonic() - self.start
            elif self.proc.poll() is not None:
                break
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
        raise RuntimeError(f"no {needle!r} within {timeout:.0f} s; output ends {self.seen[-400:]!r} {err}")

    def stop(self, line: bytes = b"poweroff\n", timeout: float = 60) -> None:
        try:
            self.send(line)
        except BrokenPipeError:
            pass
        try:
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
                if ready and not os.read(self.proc.stdout.fileno(), 65536):
                    break
            self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def answer_time(con: Console, timeout: float = 300) -> float:
    """Send the probe now; seconds from process start to the answer."""
    mark = len(con.seen)
    con.send(PROBE)
    return con.wait_for(ANSWER, timeout, after=mark)


def allocated(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def make_disk(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bench", str(path)], check=True, capture_output=True)
    return path


# --- pocketvm -------------------------------------------------------------------------


def pocket_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pocketvm", *map(str, args)]


def bench_pocketvm(work: Path, runs: int, env: dict[str, str]) -> dict:
    disk = make_disk(work / "pocket-disk.img")
    name = f"bench-{os.getpid()}"
    snap = work / "pocket-snap"
    con = Console(pocket_cmd("run", "--name", name, "-m", MEMORY, "--append", APPEND, "--disk", disk), env)
    try:
        boot = con.wait_for(PROMPT, 1800)
        answer_time(con, 60)
        time.sleep(2.0)  # let the guest settle into its idle loop, as a user would pause
        t0 = time.monotonic()
        run = subprocess.run(pocket_cmd("snapshot", name, snap), capture_output=True, env=env, timeout=600)
        wall = time.monotonic() - t0
        if run.returncode:
            raise RuntimeError(run.stderr.decode())
        pause = float(re.search(rb"paused ([\d.]+) s", run.stdout).group(1))
    finally:
        con.stop()
    disk_copy = allocated(snap / "disk0.raw")
    state = allocated(snap) - disk_copy
    own = {**env, "POCKETVM_LAUNCHER": "off"}
    restores = time_restores(snap, runs, own, f"{name}-own", work)
    started = subprocess.run(pocket_cmd("launcher", "start"), capture_output=True, env=env, timeout=900)
    if started.returncode:
        raise RuntimeError(started.stderr.decode())
    try:
        launched = time_restores(snap, runs, env, f"{name}-launched", work)
    finally:
        subprocess.run(pocket_cmd("launcher", "stop"), capture_output=True, env=env, timeout=60)
    return {
        "boot": boot,
        "save_pause": pause,
        "save_wall": wall,
        "state_bytes": state,
        "disk_bytes": disk_copy,
        "restores": restores,
        "launched": launched,
        "breakdown": restore_breakdown(snap, own),
    }


def time_restores(snap: Path, runs: int, env: dict[str, str], name: str, work: Path) -> list[float]:
    times = []
    for i in range(runs):
        con = Console(pocket_cmd("restore", snap, "--name", f"{name}{i}", "--disk-dir", work / f"{name}{i}"), env)
        try:
            times.append(answer_time(con))
        finally:
            con.stop()
            shutil.rmtree(work / f"{name}{i}", ignore_errors=True)
    return times


_BREAKDOWN = r"""
import sys, threading, time
t0 = time.perf_counter()
from pocketvm.cpu import native
native.prefer()  # as `pocket` does: the prebuilt core if setup.sh built it (then no numba)
import numpy, click
import pocketvm.cli, pocketvm.machine, pocketvm.snapshot.restore
t1 = time.perf_counter()
from pathlib import Path
from pocketvm.console import CapturedConsole
from pocketvm.machine import load_cpu_core
from pocketvm.snapshot.restore import open_snapshot, restore_vm
snap = open_snapshot(sys.argv[1])
t2 = time.perf_counter()
console = CapturedConsole(b"echo READY-$((6*7))\n")
r = restore_vm(snap, console, "breakdown", Path(sys.argv[2]))
t3 = time.perf_counter()
load_cpu_core()
t4 = time.perf_counter()
def watch():
    while b"READY-42" not in console.output:
        time.sleep(0.001)
    console.quit_requested = True
threading.Thread(target=watch, daemon=True).start()
r.vm.run()
t5 = time.perf_counter()
r.vm.close(); r.disks.discard()
print(f"{t1-t0:.3f} {t2-t1:.3f} {t3-t2:.3f} {t4-t3:.3f} {t5-t4:.3f}")
"""


def restore_breakdown(snap: Path, env: dict[str, str]) -> dict[str, float]:
    """Where a restore's time goes, step by step in one process (`pocket
    restore` overlaps the imports and the core load with the checks)."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interp = time.monotonic() - t0
    out = subprocess.run(
        [sys.executable, "-c", _BREAKDOWN, str(snap), str(snap.parent / "breakdown-disks")],
        capture_output=True, env=env, check=True, timeout=600,
    )
    imports, check, build, core, answer = map(float, out.stdout.split())
    return {
        "python start-up": interp,
        "imports (click, numpy, pocketvm; numba without the prebuilt core)": imports,
        "check snapshot (manifest, digests, map RAM)": check,
        "copy + check disks, build VM, load state": build,
        "load compiled CPU core (numba's; prebuilt: loaded with the imports)": core,
        "guest runs until it answers": answer,
    }


# --- QEMU -------------------------------------------------------------------------------


class Monitor:
    def __init__(self, path: Path, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.read_prompt()

    def read_prompt(self, timeout: float = 600) -> str:
        buf = b""
        self.sock.settimeout(timeout)
        while not buf.endswith(b"(qemu) "):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace")

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        return self.read_prompt()


def parse_size(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([KMG]i?B|B)", text)
    if not m:
        return float("nan")
    unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]
    return float(m.group(1)) * unit


def bench_qemu(work: Path, runs: int, img) -> dict:
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None:
        raise RuntimeError("qemu-system-riscv64 not installed")
    raw = make_disk(work / "qemu-disk.img")
    qcow = work / "qemu-disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    mon = work / "qemu-mon.sock"

    def cmd(*extra: str) -> list[str]:
        return [
            qemu, "-M", "virt", "-m", MEMORY, "-smp", "1",
            "-bios", str(img.bios), "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", APPEND,
            "-drive", f"file={qcow},if=none,format=qcow2,id=hd0", "-device", "virtio-blk-device,drive=hd0",
            "-device", "virtio-rng-device",
            "-display", "none", "-serial", "stdio", "-monitor", f"unix:{mon},server,nowait",
            *extra,
        ]  # fmt: skip

    con = Console(cmd())
    try:
        boot = con.wait_for(PROMPT, 600)
        answer_time(con, 60)
        time.sleep(2.0)
        m = Monitor(mon)
        t0 = time.monotonic()
        m.command("savevm bench")
        save = time.monotonic() - t0
        info = m.command("info snapshots")
        row = next(line for line in info.splitlines() if " bench " in f" {line} ")
        size = parse_size(re.split(r"\s{2,}", row.strip())[2])
        m.command("quit")
    finally:
        if con.proc.poll() is None:
            con.proc.wait(30)
    restores = qemu_restores(cmd("-loadvm", "bench"), mon, runs)
    return {"boot": boot, "save_pause": save, "save_wall": save, "state_bytes": size, "restores": restores}


def qemu_restores(cmd: list[str], mon: Path, runs: int) -> list[float]:
    """Seconds from starting QEMU with -loadvm to the guest's answer, `runs` times."""
    restores = []
    for _ in range(runs):
        con = Console(cmd)
        try:
            restores.append(answer_time(con))
        finally:
            try:
                Monitor(mon, timeout=5).command("quit")
            except OSError:
                pass
            con.proc.wait(30)
    return restores


# --- report ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="restores of each (best and median are reported)")
    ap.add_argument("--no-qemu", action="store_true", help="pocketvm only")
    args = ap.parse_args()

    from pocketvm.images import load_default_image, pull_default_image

    img = load_default_image() or pull_default_image(quiet=True)
    with tempfile.TemporaryDirectory(prefix="pocket-snapbench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        env["XDG_RUNTIME_DIR"] = str(work / "run")
        (work / "run").mkdir(mode=0o700)
        print("booting pocketvm...", file=sys.stderr)
        p = bench_pocketvm(work, args.runs, env)
        q = None
        if not args.no_qemu:
            print("booting QEMU...", file=sys.stderr)
            q = bench_qemu(work, args.runs, img)

    def col(d: dict | None, key: str, fmt) -> str:
        return "-" if d is None or key not in d else fmt(d[key])

    secs = lambda v: f"{v:.2f} s"  # noqa: E731
    mib = lambda v: f"{v / MiB:.1f} MiB"  # noqa: E731
    best = lambda v: f"{min(v):.2f} s (median {statistics.median(v):.2f})"  # noqa: E731
    rows = [
        ("boot to prompt", col(p, "boot", secs), col(q, "boot", secs)),
        ("save: VM paused", col(p, "save_pause", secs), col(q, "save_pause", secs)),
        ("save: command wall time", col(p, "save_wall", secs), col(q, "save_wall", secs)),
        ("snapshot size (RAM + state)", col(p, "state_bytes", mib), col(q, "state_bytes", mib)),
        ("snapshot size (disk copy)", col(p, "disk_bytes", mib), "inside the qcow2"),
        ("restore to answer: own process", col(p, "restores", best), col(q, "restores", best)),
        ("restore to answer: via launcher", col(p, "launched", best), col(q, "restores", best)),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "pocketvm", "")])
    print(f"{'512 MiB Debian guest':<{w0}}  {'pocketvm':<{w1}}  QEMU {_qemu_version()} (TCG)")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    if q is not None:
        for key, how in (("restores", "own process"), ("launched", "via launcher")):
            ratio = statistics.median(p[key]) / statistics.median(q["restores"])
            print(f"restore-to-answer ratio, {how}: {ratio:.2f}x QEMU (medians)")
    print("\npocketvm restore breakdown (own process, one step after another):")
    for k, v in p["breakdown"].items():
        print(f"  {k:<68} {v:.3f} s")
    return 0


def _qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-system-riscv64", "--version"], capture_output=True, text=True).stdout
        return out.split()[3]
    except (OSError, IndexError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())

"""Debian system benchmark: pocketvm and QEMU 7.2 (TCG) side by side, same run.

Everything uses the image of `pocket image build debian` (built first if
missing), the same kernel, initramfs, OpenSBI, kernel command line, 1 GiB of
RAM and one hart:

  stage2    (--stage2) the image build's second stage (debootstrap
            --second-stage as init, on a fresh first-stage tree) in pocketvm
            (with the JIT, as the image build runs it) and in QEMU at the same
            time (same machine load): wall time, ratio, time per phase
  boot      cold boot of the built system from a fresh qcow2 overlay of the
            base to root's shell answering `echo`
  template  pocketvm: `pocket run --image debian` (template restore, the
            launcher running) until the shell answers `echo`; QEMU: the same
            system booted, `savevm` in its overlay, then `-loadvm` until the
            shell answers; best and median of --runs
  clone     disk space per clone: the overlay right after a restore, and
            after the guest wrote 1 MiB

    .venv/bin/python benchmarks/debian.py [--runs N] [--stage2] [--no-qemu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot import Console, Monitor, allocated, answer_time, pocket_cmd, qemu_restores  # noqa: E402

from pocketvm.images.debian import BOOT_APPEND, BUILD_APPEND, ROOT_SIZE, load  # noqa: E402

PROMPT = b"root@pocket"
MEMORY = "1G"


def qemu_cmd(img, disk: Path, append: str, fmt: str, mon: Path | None = None, *extra: str) -> list[str]:
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None:
        raise RuntimeError("qemu-system-riscv64 not installed")
    cmd = [qemu, "-M", "virt", "-m", MEMORY, "-smp", "1", "-bios", str(img.boot.bios),
           "-kernel", str(img.boot.kernel), "-initrd", str(img.boot.initrd), "-append", append,
           "-drive", f"file={disk},if=none,format={fmt},id=hd0", "-device", "virtio-blk-device,drive=hd0",
           "-device", "virtio-rng-device", "-display", "none", "-serial", "stdio"]
    if mon is not None:
        cmd += ["-monitor", f"unix:{mon},server,nowait"]
    return cmd + list(extra)


def overlay(base: Path, path: Path) -> Path:
    from pocketvm.backends.qcow2_create import create_overlay

    create_overlay(path, base)
    return path


# --- second stage ------------------------------------------------------------------------


def bench_stage2(img, work: Path, qemu: bool) -> dict[str, float]:
    from pocketvm.images import rootfs
    from pocketvm.images.apt import find_keyrings
    from pocketvm.images.debian import STAGE2, _kernel_deb, stage2_jit_args
    from pocketvm.images.pull import ARCH, SUITE, cache_root

    tree = work / "tree"
    print("first stage (debootstrap --foreign) ...", flush=True)
    rootfs.first_stage(tree, img.manifest["mirror"], SUITE, ARCH, img.manifest["packages"], find_keyrings(SUITE),
                       cache_root() / "debootstrap", lambda line: None)
    rootfs.install_kernel_modules(tree, _kernel_deb(img.boot), img.boot.version, "linux-image")
    rootfs.install_boot_scripts(tree)
    raw = work / "stage1.raw"
    rootfs.make_ext4(tree, raw, ROOT_SIZE)
    shutil.rmtree(tree)
    append = f"{BUILD_APPEND} init={STAGE2}"
    runs = [("pocketvm", pocket_cmd("run", "--kernel", img.boot.kernel, "--initrd", img.boot.initrd,
                                    "--bios", img.boot.bios, "--memory", MEMORY, "--vsock", "none",
                                    "--disk", work / "pocketvm.raw", "--append", append,
                                    *stage2_jit_args()))]
    if qemu:
        runs.append(("qemu", qemu_cmd(img, work / "qemu.raw", append, "raw")))
    # Both at once, each on a core of its own, so that both see the same
    # load from whatever else the (shared) machine runs.
    cons = {}
    for name, cmd in runs:
        subprocess.run(["cp", "--sparse=always", str(raw), str(work / f"{name}.raw")], check=True)
        print(f"second stage in {name} ...", flush=True)
        cons[name] = Console(cmd, env=dict(os.environ, POCKETVM_LAUNCHER="off"))
    out = {}
    results: dict[str, float | BaseException] = {}

    def wait(name: str) -> None:
        try:
            results[name] = cons[name].wait_for(b"pocketvm-build: exit 0", 3 * 3600)
        except BaseException as e:  # reported below
            results[name] = e

    threads = [threading.Thread(target=wait, args=(n,)) for n in cons]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, con in cons.items():
        try:
            con.proc.wait(120)
        except subprocess.TimeoutExpired:  # reported, but not powered off (see images/debian.py)
            con.proc.kill()
            con.proc.wait()
        (work / f"{name}.raw").unlink()
        if isinstance(results[name], BaseException):
            raise results[name]
        out[name] = results[name]
    print_stage2_phases(cons)
    return out


# What debootstrap --second-stage and stage2.sh print as they go, in order.
STAGE2_PHASES = [b"pocketvm-build: step debootstrap", b"I: Installing core packages",
                 b"I: Unpacking required packages", b"I: Configuring required packages",
                 b"I: Unpacking the base system", b"I: Configuring the base system",
                 b"I: Base system installed successfully", b"pocketvm-build: exit 0"]


def print_stage2_phases(cons: dict) -> None:
    """Seconds between the markers, side by side: where the second stage's time goes."""
    print(f"{'second stage phase (s)':48}" + "".join(f"{n:>10}" for n in cons))
    prev = {n: 0.0 for n in cons}
    for marker in STAGE2_PHASES:
        row = ""
        for n, con in cons.items():
            t = con.seen_at(marker)
            row += f"{t - prev[n]:10.1f}" if t is not None else f"{'-':>10}"
            prev[n] = t if t is not None else prev[n]
        print(f"  up to {marker.decode():41}{row}")


# --- boot and template -------------------------------------------------------------------


def boot_pocketvm(img, work: Path) -> float:
    disk = overlay(img.base, work / "cold.qcow2")
    con = Console(pocket_cmd("run", "--kernel", img.boot.kernel, "--initrd", img.boot.initrd, "--bios",
                             img.boot.bios, "--memory", MEMORY, "--disk", disk, "--append", BOOT_APPEND),
                  env=dict(os.environ, POCKETVM_LAUNCHER="off"))
    try:
        con.wait_for(PROMPT, 1200)
        return answer_time(con)
    finally:
        con.stop()
        disk.unlink()


def bench_qemu(img, work: Path, runs: int) -> dict:
    disk = overlay(img.base, work / "qemu.qcow2")
    mon = work / "qemu-mon.sock"
    con = Console(qemu_cmd(img, disk, BOOT_APPEND, "qcow2", mon))
    try:
        con.wait_for(PROMPT, 1200)
        boot = answer_time(con)
        time.sleep(2.0)
        m = Monitor(mon)
        m.command("savevm bench")
        m.command("quit")
    finally:
        if con.proc.poll() is None:
            con.proc.wait(60)
    return {"boot": boot, "restores": qemu_restores(qemu_cmd(img, disk, BOOT_APPEND, "qcow2", mon, "-loadvm", "bench"),
                                                    mon, runs)}


def bench_template(work: Path, runs: int) -> tuple[list[float], dict[str, int]]:
    subprocess.run(pocket_cmd("launcher", "start"), check=True, capture_output=True, timeout=600)
    times = []
    clone: dict[str, int] = {}
    state = work / "state"
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    try:
        for i in range(runs):
            con = Console(pocket_cmd("run", "--image", "debian", "--name", f"bench-{i}"), env=env)
            try:
                times.append(answer_time(con))
                if i == 0:
                    disks = state / "pocketvm" / "disks" / f"bench-{i}"
                    clone["after_restore"] = allocated(disks)
                    mark = len(con.seen)
                    con.send(b"head -c 1048576 /dev/urandom > /root/1m; sync; echo W-$((2*2))\n")
                    con.wait_for(b"W-4", 120, after=mark)
                    clone["after_1mib"] = allocated(disks)
            finally:
                con.stop()
    finally:
        subprocess.run(pocket_cmd("launcher", "stop"), capture_output=True, timeout=60)
    return times, clone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stage2", action="store_true", help="also time the image build's second stage (long)")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--only-stage2", action="store_true", help="time the second stage only")
    args = ap.parse_args()
    img = load("debian")
    if img is None or img.template is None:
        print("building the image first: pocket image build debian", flush=True)
        subprocess.run(pocket_cmd("image", "build", "debian"), check=True)
        img = load("debian")
    assert img is not None and img.template is not None
    qemu_version = subprocess.run(["qemu-system-riscv64", "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0] if not args.no_qemu else ""
    with tempfile.TemporaryDirectory(prefix="bench-debian-") as tmp:
        work = Path(tmp)
        stage2 = bench_stage2(img, work, not args.no_qemu) if args.stage2 or args.only_stage2 else {}
        if args.only_stage2:
            print(f"image build second stage (wall, both at once): pocketvm {stage2['pocketvm']:.1f} s"
                  + (f", QEMU {stage2['qemu']:.1f} s, {stage2['pocketvm'] / stage2['qemu']:.2f}x" if "qemu" in stage2
                     else ""))
            return 0
        print("cold boot: pocketvm ...", flush=True)
        boot = boot_pocketvm(img, work)
        print("template restores: pocketvm ...", flush=True)
        restores, clone = bench_template(work, args.runs)
        q = None
        if not args.no_qemu:
            print("cold boot, savevm and -loadvm: QEMU ...", flush=True)
            q = bench_qemu(img, work, args.runs)

    def fmt(xs: list[float]) -> str:
        return f"{min(xs):.2f} s (median {statistics.median(xs):.2f})"

    print()
    print(f"Debian trixie riscv64 system, {MEMORY}, 1 hart          pocketvm                  {qemu_version}")
    if stage2:
        ratio = f"   {stage2['pocketvm'] / stage2['qemu']:.2f}x QEMU" if "qemu" in stage2 else ""
        print(f"image build second stage (wall)     {stage2['pocketvm']:8.1f} s"
              f"{'':16}{stage2.get('qemu', float('nan')):8.1f} s{ratio}")
    qb = f"{q['boot']:.2f} s" if q else "-"
    print(f"cold boot to shell answer           {boot:8.2f} s{'':16}{qb}"
          + (f"   {boot / q['boot']:.2f}x" if q else ""))
    qr = fmt(q["restores"]) if q else "-"
    print(f"from template to shell answer       {fmt(restores):26}{qr}"
          + (f"   {statistics.median(restores) / statistics.median(q['restores']):.2f}x (medians)" if q else ""))
    print(f"disk per clone: after restore {clone.get('after_restore', 0) / 1024:.0f} KiB, "
          f"after writing 1 MiB {clone.get('after_1mib', 0) / 1024:.0f} KiB "
          f"(base {allocated(img.base) / (1 << 20):.0f} MiB, never copied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Disk benchmark: in-guest `dd` on a qcow2 overlay, pocketvm and QEMU side
by side, and the disk space a clone costs.

A 1 GiB qcow2 base holding 512 MiB of data (made by pocketvm from a raw
file, `convert_to_qcow2`) gets a fresh qcow2 overlay for each VM. Both VMs
boot the same Debian kernel, initramfs, OpenSBI and command line as
benchmarks/boot.py, with 512 MiB of RAM and the overlay as a virtio-blk
disk (QEMU: `-device virtio-blk-device`, cache=writeback as by default).
In the guest's shell:

  write       dd if=/dev/zero of=/dev/vda bs=1M count=256 conv=fsync
              (the overlay allocates 256 MiB; fsync: the data reaches the host file)
  read new    echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=1M count=256
              (what was just written, from the overlay)
  read base   the same for the next 256 MiB (not in the overlay: read through it from the base)

pocketvm also runs the same steps on a raw image of the same content, to
show what the qcow2 layer costs inside the guest.

Each is timed on the host from sending the command line to the shell's
answer after it, and reported in MiB/s (best of --runs). In the guest the
emulated CPU (the kernel copying pages) takes most of the time, so the
block layers are also compared on their own, on the host: pocketvm's
Qcow2Image called as virtio-blk calls it vs `qemu-img bench` (QEMU's block
layer, queue depth 1, cache=writeback), 256 MiB sequential in 4 KiB and
1 MiB requests on a fresh overlay of the same base, writes ending with a
flush. Then, for pocketvm,
what a clone costs: `pocket snapshot` of the VM and one `pocket restore`
of it (own process), with the disk space of the snapshot's disk and of the
restored VM's disk (allocated on the host) and the restore's time to the
guest's answer; for the qcow2 overlay and for the raw disk, whose snapshot
and restore copy the whole disk.

    .venv/bin/python benchmarks/disk.py [--runs N] [--no-qemu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from snapshot import Console, allocated, pocket_cmd  # noqa: E402  (same console driver)

from pocketvm.backends.qcow2_create import convert_to_qcow2, create_overlay  # noqa: E402
from pocketvm.cli import DEFAULT_APPEND as APPEND  # noqa: E402

PROMPT = b"pocket:~# "
MiB = 1 << 20
COUNT = 256  # MiB per dd
STEPS = {
    "write": f"dd if=/dev/zero of=/dev/vda bs=1M count={COUNT} conv=fsync",
    "read new": f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=1M count={COUNT}",
    "read base": f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=1M count={COUNT} skip={COUNT}",
}


def make_base(work: Path) -> Path:
    raw = work / "base.raw"
    with open(raw, "wb") as f:
        f.truncate(1024 * MiB)
        block = os.urandom(MiB)
        for _ in range(512):
            f.write(block)
    base = work / "base.qcow2"
    convert_to_qcow2(raw, base)
    return base  # base.raw stays, for the raw-disk run


def timed(con: Console, line: str, timeout: float = 900) -> float:
    """Seconds from sending `line` to the shell's answer after it."""
    marker = b"DONE-" + str(len(con.seen)).encode() + b"-K"
    mark = len(con.seen)
    t0 = time.monotonic()
    # $(( )) so that the echo of the typed line cannot satisfy the wait
    con.send(f"{line} >/dev/null 2>&1; echo DONE-$(({len(con.seen)}))-K\n".encode())
    con.wait_for(marker, timeout, after=mark)
    return time.monotonic() - t0


def run_steps(con: Console) -> dict[str, float]:
    con.wait_for(PROMPT, 1800)
    timed(con, "echo warm-up")
    return {name: timed(con, line) for name, line in STEPS.items()}


def boot_files() -> dict[str, str]:
    from pocketvm.images import load_default_image, pull_default_image

    img = load_default_image() or pull_default_image(quiet=True)
    return {"kernel": str(img.kernel), "initrd": str(img.initrd), "bios": str(img.bios)}


def bench_pocketvm(
    work: Path, base: Path, files: dict[str, str], env: dict[str, str], clone: bool, raw: bool = False
) -> tuple[dict, dict]:
    overlay = work / f"pocket-{time.monotonic_ns()}.{'raw' if raw else 'qcow2'}"
    if raw:  # the same content as a raw image (a sparse copy of the base's raw source)
        subprocess.run(["cp", "--sparse=always", str(work / "base.raw"), str(overlay)], check=True)
    else:
        create_overlay(overlay, base)
    kind = "raw" if raw else "qcow2"
    space = {} if raw else {"new overlay": allocated(overlay)}
    name = f"diskbench-{os.getpid()}-{kind}"
    con = Console(pocket_cmd("run", "--name", name, "-m", "512M", "--kernel", files["kernel"], "--initrd", files["initrd"],
                             "--bios", files["bios"], "--append", APPEND, "--disk", overlay), env)
    try:
        times = run_steps(con)
        if not raw:
            space["overlay after dd"] = allocated(overlay)
        if clone:
            space.update(clone_space(work, name, env, kind))
    finally:
        con.stop()
    overlay.unlink(missing_ok=True)
    return times, space


def clone_space(work: Path, name: str, env: dict[str, str], kind: str) -> dict[str, float]:
    """Snapshot the VM, restore it once: disk space of the snapshot's disk and
    of the clone's own disk (bytes), and the restore's time to answer (s)."""
    snap = work / f"snap-{kind}"
    run = subprocess.run(pocket_cmd("snapshot", name, snap), capture_output=True, env=env, timeout=600)
    if run.returncode:
        raise RuntimeError(run.stderr.decode())
    disk = f"disk0.{kind}"
    out: dict[str, float] = {f"{kind}: snapshot's disk": allocated(snap / disk)}
    disk_dir = work / f"clone-disks-{kind}"
    con = Console(pocket_cmd("restore", snap, "--name", f"{name}-clone", "--disk-dir", disk_dir, "--discard"), env)
    try:
        con.send(b"echo CLONE-$((6*7))\n")
        out[f"{kind}: restore to answer (own process), s"] = con.wait_for(b"CLONE-42", 300)
        out[f"{kind}: restored VM's disk"] = allocated(disk_dir / disk)
        timed(con, "dd if=/dev/urandom of=/dev/vda bs=4k count=1 seek=1000 conv=fsync")
        out[f"{kind}: restored VM's disk after the guest wrote 4 KiB"] = allocated(disk_dir / disk)
    finally:
        con.stop()
    return out


def bench_qemu(work: Path, base: Path, files: dict[str, str]) -> dict:
    overlay = work / f"qemu-{time.monotonic_ns()}.qcow2"
    create_overlay(overlay, base)
    cmd = ["qemu-system-riscv64", "-M", "virt", "-m", "512M", "-smp", "1", "-nographic", "-monitor", "none",
           "-bios", files["bios"], "-kernel", files["kernel"], "-initrd", files["initrd"], "-append", APPEND,
           "-drive", f"file={overlay},format=qcow2,if=none,id=d0", "-device", "virtio-blk-device,drive=d0"]
    con = Console(cmd)
    try:
        times = run_steps(con)
    finally:
        con.stop()
    overlay.unlink(missing_ok=True)
    return times


def host_pocketvm(work: Path, base: Path, request: int, write: bool) -> float:
    import numpy as np

    from pocketvm.backends.open_disk import open_disk

    overlay = work / "host-pocket.qcow2"
    if write:
        overlay.unlink(missing_ok=True)
        create_overlay(overlay, base)
    buf = np.ones(request, np.uint8)
    with open_disk(overlay) as image:
        t0 = time.perf_counter()
        for off in range(0, COUNT * MiB, request):
            (image.writefrom if write else image.readinto)(off, [buf])
        image.flush()
        return time.perf_counter() - t0


def host_qemu(work: Path, base: Path, request: int, write: bool) -> float:
    overlay = work / "host-qemu.qcow2"
    if write:
        overlay.unlink(missing_ok=True)
        create_overlay(overlay, base)
    args = ["qemu-img", "bench", "-f", "qcow2", "-t", "writeback", "-d", "1", "-s", str(request),
            "-c", str(COUNT * MiB // request),
            # writes end with one flush, as pocketvm's (host_pocketvm) do
            *(["-w", "--pattern=1", f"--flush-interval={COUNT * MiB // request}"] if write else []), str(overlay)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return float(out.rsplit("Run completed in", 1)[1].split()[0])


def host_bench(work: Path, base: Path, qemu: bool) -> list[str]:
    lines = []
    for request in (4096, MiB):
        for write in (True, False):
            p = min(host_pocketvm(work, base, request, write) for _ in range(2))
            line = f"  {'write' if write else 'read':5s} {request // 1024:5d} KiB  pocketvm {COUNT / p:7.0f} MiB/s"
            if qemu:
                q = min(host_qemu(work, base, request, write) for _ in range(2))
                line += f"   qemu-img bench {COUNT / q:7.0f} MiB/s   pocketvm/qemu time {p / q:5.2f} x"
            lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="boots of each (the best of each step is reported)")
    ap.add_argument("--no-qemu", action="store_true", help="pocketvm only")
    ap.add_argument("--no-raw", action="store_true", help="skip pocketvm on a raw image of the same content")
    args = ap.parse_args()
    files = boot_files()
    env = {**os.environ, "POCKETVM_LAUNCHER": "off"}
    with tempfile.TemporaryDirectory(prefix="diskbench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        base = make_base(work)
        p_runs, q_runs, r_runs, space = [], [], [], {}
        for i in range(args.runs):
            times, s = bench_pocketvm(work, base, files, env, clone=(i == 0))
            p_runs.append(times)
            space = space or s
            if not args.no_raw:
                times, s = bench_pocketvm(work, base, files, env, clone=(i == 0), raw=True)
                r_runs.append(times)
                space.update(s if i == 0 else {})
            if not args.no_qemu:
                q_runs.append(bench_qemu(work, base, files))
        print(f"dd of {COUNT} MiB in the guest on a qcow2 overlay of a qcow2 base (best of {args.runs}):")
        for step in STEPS:
            p = min(r[step] for r in p_runs)
            line = f"  {step:10s} pocketvm {COUNT / p:7.1f} MiB/s ({p:6.2f} s)"
            if q_runs:
                q = min(r[step] for r in q_runs)
                line += f"   qemu {COUNT / q:7.1f} MiB/s ({q:6.2f} s)   pocketvm/qemu time {p / q:5.2f} x"
            if r_runs:
                r = min(x[step] for x in r_runs)
                line += f"   pocketvm on raw {COUNT / r:7.1f} MiB/s"
            print(line)
        print(f"block layer alone on the host, {COUNT} MiB sequential on a fresh overlay (best of 2):")
        for line in host_bench(work, base, not args.no_qemu):
            print(line)
        print("clones (disk space allocated on the host):")
        for what, n in space.items():
            value = f"{n:10.2f} s" if what.endswith(", s") else f"{n / 1024:10.0f} KiB"
            print(f"  {what.removesuffix(', s'):55s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

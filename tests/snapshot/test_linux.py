"""Snapshots of the real Debian guest, driven through `pocket` like a user.

One boot for the whole module: the guest mounts an ext4 disk, writes a
marker to its RAM filesystem and one to the disk, starts a counter loop
(`sleep 1` between lines, so timers must keep firing), and is saved. Then
the markers change and the VM powers off. Every test restores that
snapshot. Results are printed with shell arithmetic between '=' signs (`=$((6*7))=`)
so that neither the echo of a command line nor a counter line can satisfy
a wait or an assertion by itself.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from snaptools import Pocket, pocket

pytestmark = pytest.mark.slow

BOOT = 900  # seconds to a shell prompt (about a minute today)
RESTORE = 120
PROMPT = "pocket:~# "


def _make_ext4(path, size_mib: int):
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "snapdisk", str(path)], check=True, capture_output=True)
    return path


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"TICK-(\d+)-K", text)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, isolated_dirs):
    """(snapshot dir, uptime at the snapshot, ticks printed before it, after it)."""
    pytest.importorskip("pocketvm.images")
    from pocketvm.images import load_default_image

    if load_default_image() is None:
        pytest.skip("no guest image: run `pocket image pull`")
    base = tmp_path_factory.mktemp("linux")
    disk = _make_ext4(base / "data.img", 32)
    snap = base / "snap"
    with Pocket("run", "--name", "deb", "--disk", disk) as vm:
        vm.wait_for(PROMPT, BOOT)
        vm.command("mount -t ext4 /dev/vda /mnt && echo MOUNTED=$((1+1))=", "MOUNTED=2=")
        vm.command("echo ram-at-snapshot > /tmp/marker; echo disk-at-snapshot > /mnt/marker; sync; echo W=$((2+2))=", "W=4=")
        # The counter: one line a second, from a loop the snapshot must not break.
        vm.send("(i=0; while true; do i=$((i+1)); echo TICK-$i-K; sleep 1; done) &\n")
        vm.wait_for("TICK-3-K", 60)
        up = vm.command("echo UP-$(cut -d' ' -f1 /proc/uptime)=$((100+1))=", "=101=")
        uptime = float(re.search(r"UP-([\d.]+)=101=", up).group(1))
        before = ticks(vm.out)
        run = pocket("snapshot", "deb", snap, timeout=300)
        assert run.returncode == 0, run.stderr
        after_snap = ticks(vm.out)
        # After the snapshot the original changes both markers and stops.
        vm.command("echo ram-later > /tmp/marker; echo disk-later > /mnt/marker; sync; echo C=$((3+3))=", "C=6=")
        vm.send("umount /mnt; poweroff\n")
        assert vm.wait(120) == 0, vm.err
    # The original disk image holds the later marker, the snapshot does not change.
    cat = subprocess.run(["debugfs", "-R", "cat /marker", str(disk)], capture_output=True, check=True)
    assert cat.stdout == b"disk-later\n"
    return snap, uptime, max(before), max(after_snap)


def test_restore_brings_back_both_markers_and_the_counter(saved):
    snap, uptime, lo, hi = saved
    with Pocket("restore", snap, "--name", "back") as vm:
        out = vm.command("echo RAM-$(cat /tmp/marker)-DISK-$(cat /mnt/marker)=$((6*7))=", "=42=", RESTORE)
        assert "RAM-ram-at-snapshot-DISK-disk-at-snapshot=42=" in out
        # The counter loop started before the snapshot goes on from where it was.
        start = vm.mark()
        vm.wait_for(f"TICK-{hi + 3}-K", 60)
        got = ticks(vm.out)
        assert lo + 1 <= got[0] <= hi + 1
        assert got == list(range(got[0], got[0] + len(got)))
        # Guest time moved forward from the snapshot, not back and not frozen.
        up = vm.command("echo UP-$(cut -d' ' -f1 /proc/uptime)=$((100+2))=", "=102=")
        assert float(re.search(r"UP-([\d.]+)=102=", up).group(1)) > uptime
        # The disk works: write, read back through a remount.
        out = vm.command("echo new > /mnt/new; sync; umount /mnt; mount /dev/vda /mnt; echo NEW-$(cat /mnt/new)=$((1+8))=", "=9=")
        assert "NEW-new=9=" in out
        assert vm.mark() > start
        vm.send("umount /mnt; poweroff\n")
        assert vm.wait(120) == 0, vm.err
    # The guest wrote to its disk copy: it was kept, and said so.
    assert "kept in" in vm.err


def test_two_restores_at_once_are_isolated(saved, tmp_path):
    snap, _, _, _ = saved
    with Pocket("restore", snap, "--name", "twin-a", "--disk-dir", tmp_path / "a") as a, Pocket(
        "restore", snap, "--name", "twin-b", "--disk-dir", tmp_path / "b"
    ) as b:
        a.command("echo ram-from-a > /tmp/marker; echo disk-from-a > /mnt/marker; sync; echo A=$((5+5))=", "A=10=", RESTORE)
        out = b.command("echo B-$(cat /tmp/marker)-$(cat /mnt/marker)=$((7+7))=", "=14=", RESTORE)
        assert "B-ram-at-snapshot-disk-at-snapshot=14=" in out
        b.command("echo ram-from-b > /tmp/marker; echo disk-from-b > /mnt/marker; sync; echo B=$((8+8))=", "B=16=")
        out = a.command("echo A-$(cat /tmp/marker)-$(cat /mnt/marker)=$((9+9))=", "=18=")
        assert "A-ram-from-a-disk-from-a=18=" in out
        for vm in (a, b):
            vm.send("umount /mnt; poweroff\n")
        for vm in (a, b):
            assert vm.wait(120) == 0, vm.err
    for side in "ab":
        cat = subprocess.run(["debugfs", "-R", "cat /marker", str(tmp_path / side / "disk0.raw")], capture_output=True)
        assert cat.stdout == f"disk-from-{side}\n".encode()
    # And the snapshot itself still says what it said. It was saved with the
    # filesystem mounted, so check a copy after a journal replay.
    copy = tmp_path / "snapdisk.img"
    copy.write_bytes((snap / "disk0.raw").read_bytes())
    subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True)
    cat = subprocess.run(["debugfs", "-R", "cat /marker", str(copy)], capture_output=True)
    assert cat.stdout == b"disk-at-snapshot\n"


def test_restored_vms_reseed_their_random_numbers(saved, tmp_path):
    """Each restore gets a new VM generation ID: the guest kernel reseeds its
    RNG, so two VMs from one snapshot never produce the same random bytes."""
    snap, _, _, _ = saved
    with Pocket("restore", snap, "--name", "rng-a", "--discard", "--disk-dir", tmp_path / "a") as a, Pocket(
        "restore", snap, "--name", "rng-b", "--discard", "--disk-dir", tmp_path / "b"
    ) as b:
        got = []
        for vm in (a, b):
            out = vm.command("echo R-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')-"
                           "$(dmesg | grep -c 'virtual machine fork')=$((4*4))=", "=16=", RESTORE)
            got.append(re.search(r"R-([0-9a-f]{32})-(\d+)=16=", out).groups())
        assert got[0][0] != got[1][0]
        assert got[0][1] == got[1][1] == "1"  # "crng reseeded due to virtual machine fork", once
        for vm in (a, b):
            vm.send("umount /mnt; poweroff\n")
        for vm in (a, b):
            assert vm.wait(120) == 0, vm.err


def test_restores_through_the_launcher_answer_and_are_isolated(saved, tmp_path):
    """The same snapshot, restored twice at once by a running launcher:
    each VM is a forked child with its own RAM and disk copy."""
    snap, _, _, _ = saved
    assert pocket("launcher", "start", timeout=600).returncode == 0
    try:
        with Pocket("restore", snap, "--name", "fork-a", "--disk-dir", tmp_path / "a") as a, Pocket(
            "restore", snap, "--name", "fork-b", "--disk-dir", tmp_path / "b"
        ) as b:
            out = a.command("echo RAM-$(cat /tmp/marker)-DISK-$(cat /mnt/marker)=$((6*7))=", "=42=", RESTORE)
            assert "RAM-ram-at-snapshot-DISK-disk-at-snapshot=42=" in out
            a.command("echo ram-from-a > /tmp/marker; echo disk-from-a > /mnt/marker; sync; echo A=$((5+5))=", "A=10=")
            out = b.command("echo B-$(cat /tmp/marker)-$(cat /mnt/marker)=$((7+7))=", "=14=", RESTORE)
            assert "B-ram-at-snapshot-disk-at-snapshot=14=" in out
            status = pocket("launcher", "status", "--json")
            running = json.loads(status.stdout)["running"]
            assert len(running) == 2 and a.proc.pid not in running and b.proc.pid not in running
            for vm in (a, b):
                vm.send("umount /mnt; poweroff\n")
            for vm in (a, b):
                assert vm.wait(120) == 0, vm.err
    finally:
        pocket("launcher", "stop")
    cat = subprocess.run(["debugfs", "-R", "cat /marker", str(tmp_path / "a" / "disk0.raw")], capture_output=True)
    assert cat.stdout == b"disk-from-a\n"


def test_a_two_hart_guest_continues_on_both_harts(tmp_path):
    """Every hart's state, its timer and pending IPIs are in the snapshot:
    a counter loop pinned to each hart goes on after the restore."""
    snap = tmp_path / "smp"
    with Pocket("run", "--cpus", "2", "--name", "smp") as vm:
        vm.wait_for(PROMPT, BOOT)
        vm.send("(i=0; while true; do i=$((i+1)); echo H0-$i-K; sleep 1; done) &\n")
        vm.send("taskset 2 sh -c 'i=0; while true; do i=$((i+1)); echo H1-$i-K; sleep 1; done' &\n")
        vm.wait_for("H1-2-K", 60)
        run = pocket("snapshot", "smp", snap, "--stop", timeout=300)
        assert run.returncode == 0, run.stderr
        assert vm.wait(60) == 0
        before = {h: max(map(int, re.findall(rf"H{h}-(\d+)-K", vm.out))) for h in (0, 1)}
    with Pocket("restore", snap, "--name", "smp-back", "--discard") as vm:
        for h in (0, 1):
            vm.wait_for(f"H{h}-{before[h] + 3}-K", 60)
        out = vm.command("taskset 2 sh -c 'echo ON-$(cat /sys/devices/system/cpu/online)-CPU1-$((3+3))='", "CPU1-6=", RESTORE)
        assert "ON-0-1-CPU1-6=" in out
        for h in (0, 1):
            got = [int(n) for n in re.findall(rf"H{h}-(\d+)-K", vm.out)]
            assert got[0] == before[h] + 1 and got == list(range(got[0], got[0] + len(got))), (h, got)
        vm.send("poweroff\n")
        assert vm.wait(120) == 0, vm.err

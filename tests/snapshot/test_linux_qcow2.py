"""The real Debian guest on a qcow2 overlay of an ext4 base image: it mounts
and writes the disk, is snapshotted (the snapshot holds the overlay only)
and restored; a VM killed with SIGKILL in the middle of writing leaves an
image that `qemu-img check` accepts and that mounts again. The base never
changes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time

import pytest
from snaptools import Pocket, pocket

from pocketvm.backends.qcow2_create import convert_to_qcow2, create_overlay

pytestmark = pytest.mark.slow

BOOT = 900
PROMPT = "pocket:~# "
MiB = 1 << 20


def _cmd(vm: Pocket, line: str, expect: str, timeout: float = 120) -> str:
    mark = vm.mark()
    vm.send(line + "\n")
    return vm.wait_for(expect, timeout, after=mark)[mark:]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(path) -> dict:
    run = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True)
    assert run.returncode in (0, 3), run.stdout + run.stderr  # 3: leaked clusters only
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    if shutil.which("qemu-img") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs qemu-img and mkfs.ext4")
    from pocketvm.images import load_default_image

    if load_default_image() is None:
        pytest.skip("no guest image: run `pocket image pull`")
    d = tmp_path_factory.mktemp("qbase")
    raw = d / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "qbase", str(raw)], check=True, capture_output=True)
    base = d / "base.qcow2"
    convert_to_qcow2(raw, base)
    return base


def test_snapshot_and_restore_of_a_linux_vm_on_an_overlay(base, tmp_path):
    before = _sha(base)
    overlay = tmp_path / "vm.qcow2"
    create_overlay(overlay, base)
    snap = tmp_path / "snap"
    with Pocket("run", "--name", "qlinux", "--disk", overlay) as vm:
        vm.wait_for(PROMPT, BOOT)
        _cmd(vm, "mount -t ext4 /dev/vda /mnt && echo M=$((1+1))=", "M=2=")
        _cmd(vm, "echo at-snapshot > /mnt/marker; dd if=/dev/zero of=/mnt/big bs=1M count=8; sync; echo W=$((2+2))=", "W=4=")
        run = pocket("snapshot", "qlinux", snap, timeout=300)
        assert run.returncode == 0, run.stderr
        _cmd(vm, "echo later > /mnt/marker; sync; echo L=$((3+3))=", "L=6=")
        vm.send("umount /mnt; poweroff\n")
        assert vm.wait(120) == 0, vm.err
    assert (snap / "disk0.qcow2").stat().st_blocks * 512 < 16 * MiB  # the overlay, not the 64 MiB disk
    _check(snap / "disk0.qcow2")
    _check(overlay)
    disks = tmp_path / "disks"
    with Pocket("restore", snap, "--name", "qback", "--disk-dir", disks) as vm:
        out = _cmd(vm, "echo 3 > /proc/sys/vm/drop_caches; cat /mnt/marker; echo R=$((4+4))=", "R=8=")
        assert "at-snapshot" in out and "later" not in out
        assert (disks / "disk0.qcow2").stat().st_blocks * 512 < 2 * MiB  # a fresh overlay of its own
        _cmd(vm, "echo restored > /mnt/marker; sync; echo S=$((5+5))=", "S=10=")
        vm.send("umount /mnt; poweroff\n")
        assert vm.wait(120) == 0, vm.err
    assert "kept in" in vm.err  # the guest wrote: its overlay is kept
    _check(disks / "disk0.qcow2")
    assert _sha(base) == before


def test_a_vm_killed_while_writing_leaves_an_image_that_mounts_again(base, tmp_path):
    before = _sha(base)
    overlay = tmp_path / "killed.qcow2"
    create_overlay(overlay, base)
    with Pocket("run", "--name", "qkill", "--disk", overlay) as vm:
        vm.wait_for(PROMPT, BOOT)
        _cmd(vm, "mount -t ext4 /dev/vda /mnt && echo M=$((1+1))=", "M=2=")
        vm.send("i=0; while true; do dd if=/dev/zero of=/mnt/f$i bs=64k count=16 2>/dev/null; sync; i=$((i+1)); done\n")
        time.sleep(8)
        vm.kill()  # SIGKILL, in the middle of the writes
    result = _check(overlay)
    assert result.get("corruptions", 0) == 0 and result.get("check-errors", 0) == 0, result
    with Pocket("run", "--name", "qagain", "--disk", overlay) as vm:
        vm.wait_for(PROMPT, BOOT)
        out = _cmd(vm, "mount -t ext4 /dev/vda /mnt && ls /mnt | grep -c '^f' ; echo M=$((2+1))=", "M=3=")
        assert "mount:" not in out, out
        vm.send("umount /mnt; poweroff\n")
        assert vm.wait(120) == 0, vm.err
    result = _check(overlay)
    assert result.get("corruptions", 0) == 0, result
    assert _sha(base) == before

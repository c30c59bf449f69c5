"""Snapshots of VMs whose disks are qcow2 overlays: the snapshot stores only
the overlay and refers to the base by path and checksum; every restore gets
a fresh overlay on top of the snapshot's; a changed or missing base is
refused in one line. (In-process with the bare-metal ticker, which leaves
its disks alone: the tests read and write them from the host side.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from snaptools import one_line_error, pocket

from pocketvm.backends.open_disk import open_disk
from pocketvm.backends.qcow2_create import create_overlay, create_qcow2
from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, DiskSpec, VirtualMachine, VMConfig
from pocketvm.snapshot import basechain
from pocketvm.snapshot import format as F
from pocketvm.snapshot.restore import restore_vm
from pocketvm.snapshot.save import save_snapshot

BASE_SIZE = 4 << 30  # a 4 GiB base disk, mostly unallocated


def make_vm(elf: Path, disks: list[DiskSpec]) -> VirtualMachine:
    cfg = VMConfig(memory=16 * MiB, cpus=1, kernel=elf, bios=None, rng=False, deterministic=True, disks=disks, name="q")
    vm = VirtualMachine(cfg, CapturedConsole())
    vm.load_boot_files()
    return vm


def qemu_check(path: Path) -> None:
    if shutil.which("qemu-img") is None:
        return
    run = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch) -> Path:
    """This process keeps its digest cache in the test's directory."""
    monkeypatch.setattr(basechain, "cache_dir", lambda: tmp_path / "cache")
    return tmp_path / "cache" / "digests"


@pytest.fixture
def base(tmp_path) -> Path:
    path = tmp_path / "images" / "base.qcow2"
    path.parent.mkdir()
    create_qcow2(path, size=BASE_SIZE)
    with open_disk(path) as image:
        image.write(0, b"base-sector-0".ljust(4096, b"."))
        image.write(3 << 30, b"base-at-3G")
    return path


@pytest.fixture
def saved(ticker, tmp_path, base):
    """A VM on a fresh overlay of `base` that wrote a marker, saved; then it
    writes another marker and ends."""
    overlay = tmp_path / "vm" / "root.qcow2"
    overlay.parent.mkdir()
    create_overlay(overlay, base)
    vm = make_vm(ticker, [DiskSpec(overlay)])
    try:
        vm.disks[0].write(1 << 20, b"vm-wrote-this")
        assert vm.run(max_instructions=200_000).reason == "limit"
        snap = tmp_path / "snap"
        result = save_snapshot(vm, snap)
        vm.disks[0].write(1 << 20, b"LATER-WRITE!!")
    finally:
        vm.close()
    return snap, result


def test_snapshot_holds_only_the_overlay(saved, base):
    snap, result = saved
    disk = snap / "disk0.qcow2"
    assert sorted(p.name for p in snap.iterdir()) == ["cpu.bin", "disk0.qcow2", "manifest.json", "ram.raw", "state.json"]
    assert disk.stat().st_blocks * 512 < 1 * MiB  # the VM's writes, not the 4 GiB disk
    assert result.disk_bytes < 1 * MiB
    qemu_check(disk)
    manifest = json.loads((snap / F.MANIFEST).read_text())
    assert manifest["version"] == F.VERSION_QCOW2
    [entry] = manifest["disks"]
    assert entry["format"] == "qcow2"
    [below] = entry["backing"]
    assert below["path"] == str(base) and below["format"] == "qcow2"
    assert below["digest"] == basechain.cached_digest(base)
    # The copy refers to the base by absolute path, whatever the VM's overlay said.
    with open_disk(disk, readonly=True) as image:
        assert image.backing.path == str(base)
        assert image.read(1 << 20, 13) == b"vm-wrote-this"  # the instant of the snapshot
        assert image.read(0, 13) == b"base-sector-0" and image.read(3 << 30, 10) == b"base-at-3G"


def test_restores_get_fresh_overlays_and_never_copy_the_disk(saved, base, tmp_path):
    snap, _ = saved
    files = {p.name: p.stat().st_mtime_ns for p in snap.iterdir()}
    base_digest = basechain.cached_digest(base)
    works = [tmp_path / "w1", tmp_path / "w2"]
    restored = [restore_vm(snap, CapturedConsole(), f"r{i}", w) for i, w in enumerate(works)]
    try:
        for r, w in zip(restored, works):
            disk = r.vm.disks[0]
            assert Path(disk.path) == w / "disk0.qcow2" and disk.format == "qcow2"
            assert Path(disk.backing.path) == snap / "disk0.qcow2"
            assert (w / "disk0.qcow2").stat().st_blocks * 512 <= 512 * 1024  # a new overlay: kilobytes
            assert disk.read(1 << 20, 13) == b"vm-wrote-this"
        restored[0].vm.disks[0].write(1 << 20, b"only-in-r0!!!")
        assert restored[1].vm.disks[0].read(1 << 20, 13) == b"vm-wrote-this"
        for r in restored:
            assert r.vm.run(max_instructions=100_000).reason == "limit"
    finally:
        kept = []
        for r in restored:
            r.vm.close()
            kept.append(r.disks.finish())
    assert kept == [works[0], None]  # the unwritten overlay is deleted, the written one kept
    assert not works[1].exists()
    qemu_check(works[0] / "disk0.qcow2")
    assert {p.name: p.stat().st_mtime_ns for p in snap.iterdir()} == files
    os.utime(base, ns=(1, 1))  # the digest cache must not be what keeps this true
    assert basechain.cached_digest(base) == base_digest


def test_snapshot_of_a_restored_vm_and_its_restore(saved, tmp_path):
    snap, _ = saved
    r = restore_vm(snap, CapturedConsole(), "gen1", tmp_path / "w")
    try:
        r.vm.disks[0].write(2 << 20, b"second-generation")
        save_snapshot(r.vm, tmp_path / "snap2")
    finally:
        r.vm.close()
        r.disks.finish()
    manifest = json.loads((tmp_path / "snap2" / F.MANIFEST).read_text())
    chain = [b["path"] for b in manifest["disks"][0]["backing"]]
    assert chain[0] == str(snap / "disk0.qcow2") and len(chain) == 2
    r2 = restore_vm(tmp_path / "snap2", CapturedConsole(), "gen2", tmp_path / "w2")
    try:
        d = r2.vm.disks[0]
        assert d.read(1 << 20, 13) == b"vm-wrote-this" and d.read(2 << 20, 17) == b"second-generation"
    finally:
        r2.vm.close()
        r2.disks.finish()


def test_a_changed_base_is_refused(saved, base, tmp_path):
    snap, _ = saved
    with open_disk(base) as image:  # someone writes to the base after the snapshot
        image.write(5 << 20, b"changed")
    with pytest.raises(F.SnapshotError, match=f"its base image {base} changed since the snapshot") as e:
        restore_vm(snap, CapturedConsole(), "x", tmp_path / "w")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "w").exists()
    one_line_error(pocket("restore", snap, "--name", "y", "--disk-dir", tmp_path / "w"), "changed since the snapshot")


def test_a_replaced_base_with_the_same_content_is_accepted(saved, base, tmp_path):
    snap, _ = saved
    copy = base.with_suffix(".copy")
    shutil.copyfile(base, copy)
    os.replace(copy, base)  # new inode, same bytes: hashed once more, then accepted
    r = restore_vm(snap, CapturedConsole(), "x", tmp_path / "w")
    r.vm.close()
    r.disks.finish()


def test_a_missing_base_is_refused(saved, base, tmp_path):
    snap, _ = saved
    os.rename(base, base.with_name("moved.qcow2"))
    one_line_error(pocket("restore", snap, "--name", "z", "--disk-dir", tmp_path / "w"), f"its base image {base} is missing")
    assert not (tmp_path / "w").exists()


def test_restore_trusts_the_cached_digest_of_an_unchanged_base(saved, base, tmp_path, monkeypatch):
    snap, _ = saved
    hashed: list[str] = []
    real = basechain.digest_file
    monkeypatch.setattr(basechain, "digest_file", lambda p, a: hashed.append(str(p)) or real(p, a))
    r = restore_vm(snap, CapturedConsole(), "x", tmp_path / "w")
    r.vm.close()
    r.disks.finish()
    assert hashed == []
    os.utime(base)  # a touched base is hashed again (and still accepted: same content)
    r = restore_vm(snap, CapturedConsole(), "x", tmp_path / "w")
    r.vm.close()
    r.disks.finish()
    assert hashed == [str(base)]


def test_the_digest_cache_forgets_files_that_are_gone(tmp_path, digest_cache, monkeypatch):
    monkeypatch.setattr(basechain, "_PRUNE_ABOVE", 3)
    files = []
    for i in range(5):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"x" * 4096 * (i + 1))
        basechain.cached_digest(files[-1])
        if i < 3:
            files[-1].unlink()
    assert len(list(digest_cache.glob("*.json"))) <= 3


def test_raw_and_read_only_qcow2_disks_together(ticker, tmp_path, base):
    raw = tmp_path / "data.raw"
    with open(raw, "wb") as f:
        f.truncate(2 * MiB)
        f.write(b"raw-disk")
    ro = tmp_path / "ro.qcow2"
    create_overlay(ro, base)
    vm = make_vm(ticker, [DiskSpec(raw), DiskSpec(ro, readonly=True)])
    try:
        save_snapshot(vm, tmp_path / "snap")
    finally:
        vm.close()
    snap = tmp_path / "snap"
    assert (snap / "disk0.raw").exists() and (snap / "disk1.qcow2").exists()
    r = restore_vm(snap, CapturedConsole(), "mix", tmp_path / "w")
    try:
        assert r.vm.disks[0].read(0, 8) == b"raw-disk"
        assert r.vm.disks[1].readonly and Path(r.vm.disks[1].path) == snap / "disk1.qcow2"
        assert r.vm.disks[1].read(0, 13) == b"base-sector-0"
    finally:
        r.vm.close()
        r.disks.finish()


def test_a_raw_disk_stays_raw_when_its_guest_writes_a_qcow2_header(ticker, tmp_path, base):
    # A qcow2 header can name any host file as its backing file: a guest must
    # not turn its raw disk into a window on the host by writing one.
    raw = tmp_path / "guest.raw"
    with open(raw, "wb") as f:
        f.truncate(2 * MiB)
    evil = tmp_path / "evil.qcow2"
    create_qcow2(evil, size=MiB, backing=str(base))
    vm = make_vm(ticker, [DiskSpec(raw)])
    try:
        vm.disks[0].write(0, evil.read_bytes()[:4096])  # what the guest writes to sector 0
        save_snapshot(vm, tmp_path / "snap")
    finally:
        vm.close()
    assert (tmp_path / "snap" / "disk0.raw").exists()
    r = restore_vm(tmp_path / "snap", CapturedConsole(), "raw", tmp_path / "w")
    try:
        assert r.vm.disks[0].format == "raw" and r.vm.disks[0].read(0, 4) == b"QFI\xfb"
    finally:
        r.vm.close()
        r.disks.finish()
    # On the command line, format=raw says the same.
    from pocketvm.cli import _parse_disk

    assert _parse_disk(f"{raw},format=raw").format == "raw"
    assert _parse_disk(f"{raw},ro").format is None
    vm = make_vm(ticker, [_parse_disk(f"{raw},format=raw")])
    try:
        assert vm.disks[0].format == "raw"
    finally:
        vm.close()

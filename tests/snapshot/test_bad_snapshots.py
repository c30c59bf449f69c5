"""A damaged or foreign snapshot is refused by `pocket restore` with one
clear line and exit status 2, before any VM starts: nothing is printed on
the console, no control socket stays behind and no disk copy is left over.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from snaptools import one_line_error, pocket

from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, DiskSpec, VirtualMachine, VMConfig
from pocketvm.snapshot import format as F
from pocketvm.snapshot.restore import restore_vm
from pocketvm.snapshot.save import save_snapshot


@pytest.fixture(scope="module")
def good(ticker, tmp_path_factory) -> Path:
    """A small bare-metal snapshot with one writable and one read-only disk."""
    base = tmp_path_factory.mktemp("good")
    disks = []
    for name, ro in (("rw.img", False), ("ro.img", True)):
        with open(base / name, "wb") as f:
            f.truncate(1 * MiB)
            f.seek(8192)
            f.write(name.encode() * 10)
        disks.append(DiskSpec(base / name, ro))
    cfg = VMConfig(memory=16 * MiB, kernel=ticker, bios=None, rng=False, deterministic=True, disks=disks, name="g")
    vm = VirtualMachine(cfg, CapturedConsole(b"hello"))
    vm.load_boot_files()
    vm.run(max_instructions=500_000)
    save_snapshot(vm, base / "snap")
    vm.close()
    return base / "snap"


@pytest.fixture
def snap(good, tmp_path) -> Path:
    """A private copy of the good snapshot to damage."""
    dest = tmp_path / "snap"
    shutil.copytree(good, dest)
    return dest


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _first_data_offset(path: Path) -> int:
    data = path.read_bytes()
    return next(i for i, b in enumerate(data) if b)


def _restore_refused(snap: Path, tmp_path: Path, *needles: str) -> str:
    work = tmp_path / "work"
    run = pocket("restore", snap, "--name", "victim", "--disk-dir", work, timeout=120)
    line = one_line_error(run, *needles)
    assert run.stdout == b""  # the guest never ran
    assert not work.exists()  # no disk copy left behind
    assert not (Path(os.environ["XDG_RUNTIME_DIR"]) / "pocketvm" / "victim.sock").exists()
    return line


def test_good_snapshot_restores(good, tmp_path):
    r = restore_vm(good, CapturedConsole(), "fine", tmp_path / "w")
    assert r.vm.run(max_instructions=50_000_000).reason == "poweroff"
    r.vm.close()
    r.disks.finish()


def test_truncated_ram(snap, tmp_path):
    with open(snap / F.RAM_FILE, "r+b") as f:
        f.truncate(8 * MiB)
    _restore_refused(snap, tmp_path, "ram.raw is 8388608 bytes, expected 16777216")


def test_edited_ram_page(snap, tmp_path):
    off = _first_data_offset(snap / F.RAM_FILE)
    _poke(snap / F.RAM_FILE, off, b"\x00")
    _restore_refused(snap, tmp_path, "ram.raw checksum mismatch")


def test_ram_edited_after_a_restore_is_caught(snap, tmp_path):
    """A restore caches the RAM file's digest by its identity; an edit in
    place afterwards (same inode) must not be served from that cache."""
    import time

    from pocketvm.snapshot import basechain
    from pocketvm.snapshot.digest import algorithm_of
    from pocketvm.snapshot.restore import open_snapshot

    time.sleep(basechain.SETTLE_NS / 1e9 + 0.2)  # only a settled file's digest is cached
    open_snapshot(snap).ram.close()
    algorithm = algorithm_of(json.loads((snap / F.MANIFEST).read_text())["files"][F.RAM_FILE]["digest"])
    assert basechain._cached(os.stat(snap / F.RAM_FILE), algorithm), "the restore cached the RAM file's digest"
    _poke(snap / F.RAM_FILE, _first_data_offset(snap / F.RAM_FILE), b"\x00")
    _restore_refused(snap, tmp_path, "ram.raw checksum mismatch")


def test_data_written_into_a_hole_of_ram(snap, tmp_path):
    _poke(snap / F.RAM_FILE, 15 * MiB + 123, b"\x42")  # high RAM the program never touched
    _restore_refused(snap, tmp_path, "ram.raw checksum mismatch")


def test_edited_cpu_state(snap, tmp_path):
    _poke(snap / F.CPU_FILE, 64 * 8, b"\x04")  # the pc
    _restore_refused(snap, tmp_path, "cpu.bin checksum mismatch")


def test_edited_device_state(snap, tmp_path):
    text = (snap / F.STATE_FILE).read_text()
    edited = text.replace('"lcr": 3', '"lcr": 0', 1)
    assert edited != text
    (snap / F.STATE_FILE).write_text(edited)
    _restore_refused(snap, tmp_path, "state.json")


def test_edited_manifest(snap, tmp_path):
    m = json.loads((snap / F.MANIFEST).read_text())
    m["vm"]["append"] = "edited"
    (snap / F.MANIFEST).write_text(json.dumps(m))
    _restore_refused(snap, tmp_path, "manifest.json checksum mismatch")


def test_truncated_manifest(snap, tmp_path):
    data = (snap / F.MANIFEST).read_bytes()
    (snap / F.MANIFEST).write_bytes(data[: len(data) // 2])
    _restore_refused(snap, tmp_path, "not valid JSON")


def test_incompatible_format_version(snap, tmp_path):
    m = json.loads((snap / F.MANIFEST).read_text())
    m["version"] = 99
    m["checksum"] = F.manifest_checksum(m)  # a well-formed snapshot from a future pocketvm
    (snap / F.MANIFEST).write_text(json.dumps(m))
    _restore_refused(snap, tmp_path, "format version 99 is not supported")


def test_missing_disk(snap, tmp_path):
    (snap / "disk0.raw").unlink()
    _restore_refused(snap, tmp_path, "disk image disk0.raw is missing")


def test_edited_writable_disk(snap, tmp_path):
    _poke(snap / "disk0.raw", 8192, b"X")
    _restore_refused(snap, tmp_path, "disk0.raw checksum mismatch")


def test_edited_read_only_disk(snap, tmp_path):
    _poke(snap / "disk1.raw", 100_000, b"X")  # in a hole
    _restore_refused(snap, tmp_path, "disk1.raw checksum mismatch")


def test_truncated_disk(snap, tmp_path):
    with open(snap / "disk0.raw", "r+b") as f:
        f.truncate(4096)
    _restore_refused(snap, tmp_path, "disk0.raw is 4096 bytes, expected")


def test_edited_and_resealed_cpu_state_is_refused(snap, tmp_path):
    """Someone who also fixes up the checksums still cannot hand the core an
    out-of-range hart id (an index it trusts)."""
    from pocketvm.cpu import state as S
    from pocketvm.snapshot.digest import digest_file

    _poke(snap / F.CPU_FILE, 8 * S.HART_ID, (5).to_bytes(8, "little"))
    m = json.loads((snap / F.MANIFEST).read_text())
    m["files"][F.CPU_FILE]["digest"] = digest_file(snap / F.CPU_FILE)[0]
    m["checksum"] = F.manifest_checksum(m)
    (snap / F.MANIFEST).write_text(json.dumps(m))
    _restore_refused(snap, tmp_path, "cpu.bin holds an impossible CPU state")


def test_not_a_snapshot(tmp_path):
    (tmp_path / "empty").mkdir()
    _restore_refused(tmp_path / "empty", tmp_path, "no manifest.json")
    _restore_refused(tmp_path / "nowhere", tmp_path, "no such directory")


def test_in_process_restore_of_a_bad_snapshot_leaves_nothing(snap, tmp_path):
    _poke(snap / "disk0.raw", 8192, b"X")  # found only while copying the disk
    work = tmp_path / "w"
    with pytest.raises(F.SnapshotError, match="disk0.raw checksum mismatch"):
        restore_vm(snap, CapturedConsole(), "x", work)
    assert not work.exists()

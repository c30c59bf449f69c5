"""Save and restore a bare-metal VM in-process, and compare with a run that
was never interrupted.

The test program (guest/ticker.c) carries integer, floating-point and RAM
state from round to round, consumes console input one byte per round and
sleeps on timer interrupts. In deterministic mode its output is a pure
function of the machine state, so a restore that loses or changes anything
(a register, an FP bit, a page, the unread input, the timer) shows up as
different output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, DiskSpec, VirtualMachine, VMConfig
from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import digest_file
from pocketvm.snapshot.restore import restore_vm
from pocketvm.snapshot.save import save_snapshot

INPUT = b"abcdefghijklmnoprstuvwxyz0123456789"  # no "q": that ends the program
HALFWAY = 900_000  # instructions: about a third of the program


def make_vm(elf: Path, console, disks: list[DiskSpec] | None = None) -> VirtualMachine:
    cfg = VMConfig(
        memory=16 * MiB, cpus=1, kernel=elf, bios=None, rng=False, deterministic=True, disks=disks or [], name="t"
    )
    vm = VirtualMachine(cfg, console)
    vm.load_boot_files()
    return vm


def finish(vm: VirtualMachine) -> str:
    status = vm.run(max_instructions=50_000_000)
    assert status.reason == "poweroff", status
    return status.reason


@pytest.fixture(scope="module")
def reference(ticker) -> bytes:
    """Output of the program run from start to end without a snapshot."""
    console = CapturedConsole(INPUT)
    vm = make_vm(ticker, console)
    try:
        finish(vm)
    finally:
        vm.close()
    out = bytes(console.output)
    assert out.count(b"round ") == 40 and b"done after" in out
    return out


def snapshot_files(path: Path) -> dict[str, tuple[str, int, int]]:
    return {p.name: (digest_file(p)[0], p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def halfway(ticker, tmp_path_factory):
    """A snapshot taken a third of the way through, and the output up to it."""
    console = CapturedConsole(INPUT)
    vm = make_vm(ticker, console)
    status = vm.run(max_instructions=HALFWAY)
    assert status.reason == "limit"
    before = bytes(console.output)
    path = tmp_path_factory.mktemp("snap") / "half"
    result = save_snapshot(vm, path)
    # The VM that was saved goes on as if nothing happened.
    finish(vm)
    after = bytes(console.output)
    vm.close()
    return path, before, after, result


def test_saved_vm_continues_unchanged(halfway, reference):
    _, before, after, _ = halfway
    assert 0 < before.count(b"round ") < 20
    assert after == reference


def test_restore_continues_exactly_where_it_stopped(halfway, reference, tmp_path):
    path, before, _, result = halfway
    assert result.ram_data_bytes > 0 and result.ram_data_bytes < 1 * MiB  # zero pages are not stored
    console = CapturedConsole()
    restored = restore_vm(path, console, "r1", tmp_path / "disks")
    try:
        finish(restored.vm)
    finally:
        restored.vm.close()
        restored.disks.finish()
    assert before + bytes(console.output) == reference
    # Unread console input was part of the snapshot: the restored guest kept consuming it.
    assert b"input=" + INPUT + b"\n" in bytes(console.output)


def test_snapshot_is_sparse_and_never_changed_by_restores(halfway, reference, tmp_path):
    path, before, _, _ = halfway
    ram = path / F.RAM_FILE
    assert ram.stat().st_size == 16 * MiB
    assert ram.stat().st_blocks * 512 < 1 * MiB
    files = snapshot_files(path)
    outputs = []
    for i in range(2):  # two VMs from one snapshot, alive at the same time
        consoles = [CapturedConsole(), CapturedConsole()]
        vms = [restore_vm(path, c, f"twin{i}{j}", tmp_path / f"d{i}{j}") for j, c in enumerate(consoles)]
        # Interleave them: each writes its private RAM copy.
        for r in vms:
            assert r.vm.run(max_instructions=300_000).reason == "limit"
        for r in vms:
            finish(r.vm)
            r.vm.close()
            r.disks.finish()
        outputs += [bytes(c.output) for c in consoles]
    assert all(before + o == reference for o in outputs)
    assert snapshot_files(path) == files


def test_snapshot_of_a_restored_vm(halfway, reference, tmp_path):
    path, before, _, _ = halfway
    c1 = CapturedConsole()
    r1 = restore_vm(path, c1, "gen1", tmp_path / "d1")
    assert r1.vm.run(max_instructions=HALFWAY).reason == "limit"
    save_snapshot(r1.vm, tmp_path / "second")
    r1.vm.close()
    r1.disks.finish()
    c2 = CapturedConsole()
    r2 = restore_vm(tmp_path / "second", c2, "gen2", tmp_path / "d2")
    finish(r2.vm)
    r2.vm.close()
    r2.disks.finish()
    assert before + bytes(c1.output) + bytes(c2.output) == reference


def _raw_disk(path: Path, size: int, fill: bytes) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(4096)
        f.write(fill)
    return path


def test_disks_are_saved_at_the_instant_and_copied_privately(ticker, tmp_path):
    rw = _raw_disk(tmp_path / "rw.img", 4 * MiB, b"rw-at-snapshot")
    ro = _raw_disk(tmp_path / "ro.img", 2 * MiB, b"ro-data")
    console = CapturedConsole(INPUT)
    vm = make_vm(ticker, console, [DiskSpec(rw), DiskSpec(ro, readonly=True)])
    assert vm.run(max_instructions=HALFWAY).reason == "limit"
    snap = tmp_path / "snap"
    save_snapshot(vm, snap)
    vm.disks[0].write(4096, b"rw-after-snapshot")  # later writes do not reach the snapshot
    vm.close()
    assert (snap / "disk0.raw").read_bytes()[4096:4110] == b"rw-at-snapshot"
    assert (snap / "disk1.raw").stat().st_size == 2 * MiB

    # A VM that never writes its disks leaves nothing behind.
    work = tmp_path / "work-a"
    r = restore_vm(snap, CapturedConsole(), "a", work)
    assert [Path(d.path) for d in r.vm.disks] == [work / "disk0.raw", snap / "disk1.raw"]
    assert r.vm.disks[1].readonly
    assert r.vm.disks[0].read(4096, 14) == b"rw-at-snapshot"
    finish(r.vm)
    r.vm.close()
    assert r.disks.finish() is None
    assert not work.exists()

    # One that writes keeps its copy, and the snapshot does not change.
    before = snapshot_files(snap)
    work = tmp_path / "work-b"
    r = restore_vm(snap, CapturedConsole(), "b", work)
    r.vm.disks[0].write(4096, b"changed-by-b!!")
    r.vm.close()
    assert r.disks.finish() == work
    assert (work / "disk0.raw").read_bytes()[4096:4110] == b"changed-by-b!!"
    assert snapshot_files(snap) == before


def test_save_refuses_to_overwrite_and_leaves_nothing_partial(ticker, tmp_path):
    vm = make_vm(ticker, CapturedConsole())
    try:
        vm.run(max_instructions=100_000)
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        (occupied / "keep.txt").write_text("mine")
        with pytest.raises(F.SnapshotError, match="not empty"):
            save_snapshot(vm, occupied)
        assert (occupied / "keep.txt").read_text() == "mine"
        with pytest.raises(F.SnapshotError, match="not a directory"):
            save_snapshot(vm, tmp_path / "missing-parent" / "snap")
        empty = tmp_path / "empty"
        empty.mkdir()
        save_snapshot(vm, empty)  # an empty directory is fine
        assert (empty / F.MANIFEST).exists()
        assert sorted(os.listdir(tmp_path)) == ["empty", "occupied"]  # no temporary leftovers
    finally:
        vm.close()


def test_snapshot_with_the_earlier_smaller_tlb_restores(halfway, reference, tmp_path):
    """Snapshots (image templates among them) saved when the hart state held
    a 256-entry TLB restore exactly: the state below the TLB is the same, and
    the TLB, garbage here, is flushed."""
    import shutil

    import numpy as np

    from pocketvm.cpu import state as S

    path, before, _, _ = halfway
    old = tmp_path / "old"
    shutil.copytree(path, old)
    m = F.parse_manifest((old / F.MANIFEST).read_bytes(), "test")
    cpu = np.frombuffer((old / F.CPU_FILE).read_bytes(), dtype="<i8")
    harts = cpu[: m.harts * S.STATE_SIZE].reshape(m.harts, S.STATE_SIZE)
    (old_size,) = S.EARLIER_STATE_SIZES
    old_harts = np.full((m.harts, old_size), 0x1234_5678_9000, dtype="<i8")  # TLB entries that would hit nothing
    old_harts[:, : S.TLB] = harts[:, : S.TLB]
    (old / F.CPU_FILE).write_bytes(old_harts.tobytes() + cpu[m.harts * S.STATE_SIZE :].tobytes())
    digest, size = digest_file(old / F.CPU_FILE)
    m.files[F.CPU_FILE] = F.FileEntry(size, digest)
    m.state_size = old_size
    (old / F.MANIFEST).write_bytes(m.to_json())
    console = CapturedConsole()
    restored = restore_vm(old, console, "r-old", tmp_path / "disks")
    try:
        assert (restored.vm.harts[0].st[S.TLB : S.TLB + S.TLB_SIZE] == -1).all()
        finish(restored.vm)
    finally:
        restored.vm.close()
        restored.disks.finish()
    assert before + bytes(console.output) == reference


def test_a_restore_with_tier_1_answers_first(halfway, reference, tmp_path, monkeypatch):
    """With the JIT on, a restored VM neither waits for its translation
    service nor installs cached code before its first instruction (it looks
    code up as it runs), and it goes on exactly as the interpreter does."""
    monkeypatch.setenv("POCKETVM_JIT", "on")
    monkeypatch.setenv("POCKETVM_JIT_CACHE", str(tmp_path / "jit-cache"))
    path, before, _, _ = halfway
    console = CapturedConsole()
    restored = restore_vm(path, console, "r-jit", tmp_path / "disks")
    try:
        tier1 = restored.vm.harts[0].tier1
        assert tier1 is not None and not tier1.booting
        finish(restored.vm)
    finally:
        restored.vm.close()
        restored.disks.finish()
    assert before + bytes(console.output) == reference

"""The private disks of a VM restored from a snapshot.

A restore never writes to the snapshot, and restored VMs never see each
other's writes, so each writable disk of the snapshot gets a private
version for the new VM, in a per-VM directory: a raw disk is copied (a
reflink where the filesystem can share blocks copy-on-write, a sparse copy
otherwise); a qcow2 disk gets a new, empty qcow2 overlay whose backing file
is the snapshot's image (a few hundred KiB, whatever the disk's size: a
restore never copies a whole disk):

    --disk-dir DIR, or by default  $XDG_STATE_HOME/pocketvm/disks/NAME
                                   (~/.local/state/pocketvm/disks/NAME)

Read-only disks need no copy: they are attached straight from the snapshot,
opened read-only.

When the VM ends, nothing is lost and nothing is leaked: if the guest never
wrote to its disks the copies are deleted (they equal the snapshot's); if it
did, the directory is kept and its path printed, so the changes can be
inspected or attached to another VM; with `pocket restore --discard` they
are deleted all the same (a throw-away VM leaves no trace). A VM that is killed outright cannot
clean up; the next `pocket ls`, or the next VM to take its name, finds its
dead control socket and applies the same rule (`reap`). A copy counts as written when its
modification time moved: it is set to a fixed stamp right after the copy,
and any write or discard by the guest sets it to the current time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pocketvm.backends.disk import DiskError, DiskImage
from pocketvm.backends.qcow2_create import create_overlay
from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import algorithm_of, digest_file

# 2001-09-09T01:46:40Z: an instant no write made today can produce.
_STAMP_NS = 1_000_000_000 * 1_000_000_000


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pocketvm"


def default_disk_dir(vm_name: str) -> Path:
    return state_dir() / "disks" / vm_name


@dataclass
class WorkDisks:
    directory: Path | None  # None: the VM has no writable disk
    created_dir: bool
    paths: list[Path] = field(default_factory=list)  # one per snapshot disk, in slot order
    copies: list[Path] = field(default_factory=list)  # the subset this object owns

    def mark_clean(self) -> None:
        """Stamp the copies; call once the VM has opened them (opening may
        probe the file in ways that touch its times)."""
        for p in self.copies:
            os.utime(p, ns=(_STAMP_NS, _STAMP_NS))

    def modified(self) -> bool:
        for p in self.copies:
            try:
                if p.stat().st_mtime_ns != _STAMP_NS:
                    return True
            except FileNotFoundError:
                continue
            except PermissionError:  # a VM that dropped root (--user) cannot tell: keep them
                return True
        return False

    def discard(self) -> None:
        """Remove every copy (a failed restore, or an unmodified VM at exit)."""
        for p in self.copies:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except PermissionError:  # a VM that dropped root (--user), in a directory it was not given
                pass
        self.copies = []
        if self.directory is not None and self.created_dir:
            try:
                self.directory.rmdir()
            except OSError:
                pass  # something else was put there: leave it

    def finish(self) -> Path | None:
        """At VM exit: the directory kept because the guest wrote, else None."""
        if self.directory is None or not self.copies:
            return None
        if self.modified():
            return self.directory
        self.discard()
        return None


def reap(directory: Path, written_too: bool = False) -> None:
    """Clean up after a VM that died without finish(): delete the copies it
    never wrote (all of them with `written_too`: a VM restored with
    --discard), and the directory if that leaves it empty."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for p in entries:
        try:
            if p.suffix in (".raw", ".qcow2") and p.is_file() and (written_too or p.stat().st_mtime_ns == _STAMP_NS):
                p.unlink()
        except OSError:
            pass
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty: the guest's changes stay


def _prepare_dir(directory: Path) -> bool:
    """Create the per-VM directory (or accept an empty one); True if created."""
    if directory.exists():
        if not directory.is_dir():
            raise F.SnapshotError(f"disk directory {directory} exists and is not a directory")
        if any(directory.iterdir()):
            raise F.SnapshotError(
                f"disk directory {directory} is not empty (disks kept from an earlier VM?); "
                "remove it or choose another --name or --disk-dir"
            )
        return False
    try:
        directory.mkdir(parents=True, mode=0o700)
    except OSError as e:
        raise F.SnapshotError(f"cannot create disk directory {directory}: {e.strerror}") from None
    return True


def prepare(snapshot_dir: Path, manifest: F.Manifest, directory: Path) -> WorkDisks:
    """Give a new VM its disks: private verified copies of the writable raw
    ones, private overlays on the writable qcow2 ones."""
    where = F.describe(snapshot_dir)
    writable = [d for d in manifest.disks if not d.readonly]
    work = WorkDisks(None, False)
    if writable:
        work.directory = directory
        work.created_dir = _prepare_dir(directory)
    try:
        for disk in manifest.disks:
            src = snapshot_dir / disk.file
            if disk.readonly:
                work.paths.append(src)  # digest already checked by open_snapshot
                continue
            dest = directory / disk.file
            if disk.format == "qcow2":
                # The snapshot's image (checked by open_snapshot, with its
                # backing files) becomes the read-only backing file of this VM's own overlay.
                try:
                    # Not synced: it matters only while this VM runs, and the
                    # guest's first flush makes it durable with its data.
                    create_overlay(dest, src, durable=False)
                except DiskError as e:
                    raise F.SnapshotError(f"{where}: {e}") from None
                work.copies.append(dest)
                work.paths.append(dest)
                continue
            try:
                with DiskImage(src, readonly=True) as image:
                    image.copy_to(dest)
            except DiskError as e:
                raise F.SnapshotError(f"{where}: {e}") from None
            work.copies.append(dest)
            expected = manifest.files[disk.file]
            digest, size = digest_file(dest, algorithm_of(expected.digest))
            if size != expected.size or digest != expected.digest:
                raise F.SnapshotError(f"{where}: {disk.file} checksum mismatch (the disk image was edited or corrupted)")
            work.paths.append(dest)
    except BaseException:
        work.discard()
        raise
    return work

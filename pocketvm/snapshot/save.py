"""Write a snapshot of a VM (see `format` for the layout), in two steps.

`capture()` must run on the VM's own thread between two slices
(`VirtualMachine.submit` arranges that): every hart is then at an
instruction boundary and every device request has completed, so the state
arrays, the device states, RAM and the disks are one consistent instant.
It only copies: the non-zero RAM pages into a sparse file, the disks
(reflink or sparse copy; of a qcow2 overlay only the overlay), the small
state files.

`Capture.finish()` may run on another thread while the VM goes on: it
computes the digests of the copies, makes everything durable (fsync),
writes the manifest and renames the directory into place. The guest is
paused only for the copying.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketvm.backends.disk import DiskError
from pocketvm.cpu import state as S
from pocketvm.memory import GuestRAM
from pocketvm.backends.qcow2_create import set_backing
from pocketvm.snapshot import basechain
from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import BLOCK, ContentDigest, digest_file, nonzero_runs, true_runs
from pocketvm.snapshot.pages import candidate_blocks, mark_ranges

_RAM_CHUNK = 64 << 20


@dataclass
class SaveResult:
    path: Path
    seconds: float  # from the start of the capture to the sealed snapshot
    pause_seconds: float  # how long the VM was paused
    ram_data_bytes: int  # bytes of RAM actually stored (non-zero pages)
    disk_bytes: int  # allocated bytes of the disk copies
    total_bytes: int  # allocated bytes of the whole snapshot directory

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "seconds": round(self.seconds, 4),
            "pause_seconds": round(self.pause_seconds, 4),
            "ram_data_bytes": self.ram_data_bytes,
            "disk_bytes": self.disk_bytes,
            "total_bytes": self.total_bytes,
        }


def allocated_bytes(path: Path) -> int:
    """Bytes a file or directory tree really occupies (holes excluded)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_ram(ram: GuestRAM, path: Path, file_ranges: list[tuple[int, int]] | None = None) -> int:
    """Store RAM as a sparse file (zero pages stay holes); returns the bytes stored.

    Only pages the host has ever backed are read (see `pages`), plus
    `file_ranges`: the data ranges of the file RAM is mapped from, if any.
    """
    cand = candidate_blocks(ram.u8)
    mark_ranges(cand, file_ranges or [])
    stored = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, ram.size)
        for first, last in true_runs(cand):
            for pos in range(first * BLOCK, last * BLOCK, _RAM_CHUNK):
                chunk = ram.u8[pos : min(last * BLOCK, pos + _RAM_CHUNK)]
                for a, b in nonzero_runs(chunk):
                    _pwrite_all(fd, chunk[a * BLOCK : b * BLOCK], pos + a * BLOCK)
                    stored += (b - a) * BLOCK
    finally:
        os.close(fd)
    return stored


def _write_file(path: Path, data: bytes) -> F.FileEntry:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    digest = ContentDigest()
    buf = np.zeros(-(-len(data) // BLOCK) * BLOCK, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    digest.update(0, buf)
    return F.FileEntry(len(data), digest.hexdigest())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_destination(dest: Path) -> None:
    """A snapshot goes to a new directory (or an empty one); never over anything."""
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise F.SnapshotError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise F.SnapshotError(f"{dest} already exists and is not empty")
    parent = dest.parent
    if not parent.is_dir():
        raise F.SnapshotError(f"cannot write a snapshot to {dest}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise F.SnapshotError(f"cannot write a snapshot to {dest}: {parent} is not writable")


def machine_state(vm: Any) -> tuple[bytes, dict[str, Any]]:
    """(cpu.bin contents, state.json object) of a paused VM."""
    mtime = vm.guest_time()
    arrays = [h.st for h in vm.harts] + [vm.sh]
    cpu = np.concatenate(arrays).astype("<i8", copy=False).tobytes()
    devices = {}
    for name, dev in vm.devices().items():
        devices[name] = dev.save()
    virtio_ids = [t.device.device_id if t.device is not None else 0 for t in vm.virtio]
    return cpu, {"mtime": mtime, "virtio_ids": virtio_ids, "devices": devices}


@dataclass
class Capture:
    """A snapshot whose content is fixed (the VM may go on) but not yet sealed."""

    dest: Path
    tmp: Path
    manifest: F.Manifest
    started: float  # perf_counter at the start of the capture
    pause: float
    disk_bytes: int

    def finish(self) -> SaveResult:
        """Digests, fsync, manifest, rename into place; SnapshotError on failure."""
        m = self.manifest
        try:
            for disk in m.disks:  # the backing files' digests, cached or computed now
                basechain.seal(disk.backing)
            for name in [F.RAM_FILE] + [d.file for d in m.disks]:
                digest, size = digest_file(self.tmp / name)
                m.files[name] = F.FileEntry(size, digest)
            for name in m.files:
                _fsync_file(self.tmp / name)
            m.stats["save_seconds"] = round(time.perf_counter() - self.started, 4)
            (self.tmp / F.MANIFEST).write_bytes(m.to_json())
            _fsync_file(self.tmp / F.MANIFEST)
            _fsync_dir(self.tmp)
            # rename(2) replaces an empty directory atomically; anything else was refused.
            os.rename(self.tmp, self.dest)
            _fsync_dir(self.dest.parent)
            for disk in m.disks:  # restores then check a qcow2 image (maybe large) by a stat
                if disk.format == "qcow2":
                    basechain.remember(self.dest / disk.file, m.files[disk.file].digest)
        except OSError as e:
            self.abort()
            raise F.SnapshotError(f"cannot write a snapshot to {self.dest}: {e.strerror or e}") from None
        except BaseException:
            self.abort()
            raise
        return SaveResult(
            self.dest,
            time.perf_counter() - self.started,
            self.pause,
            int(m.stats["ram_data_bytes"]),
            self.disk_bytes,
            allocated_bytes(self.dest),
        )

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _vsock(spec: Any) -> dict[str, int] | None:
    """The vsock device as a restore re-creates it: the window's size, never
    its content (what one upload left there is of no use to the next)."""
    if spec is None:
        return None
    return {"cid": spec.cid, **({"upload_window": spec.upload_window} if spec.upload_window else {})}


def _save_disk(image: Any, index: int, spec: Any, tmp: Path) -> F.DiskEntry:
    """Copy one disk into the snapshot: a raw image whole (reflink or sparse
    copy), a qcow2 image without its backing files, which are referenced
    by absolute path (and checksum, in `Capture.finish`)."""
    name = F.disk_file(index, image.format)
    image.copy_to(tmp / name)
    entry = F.DiskEntry(name, spec.readonly, str(spec.path), image.format)
    if image.format == "qcow2" and image.backing is not None:
        entry.backing = basechain.record(image)
        below = entry.backing[0]
        if image.header.backing_file != below.path:
            set_backing(tmp / name, below.path, below.format)
    return entry


def capture(vm: Any, dest: str | os.PathLike[str]) -> Capture:
    """Copy the paused VM `vm` into a temporary directory next to `dest`."""
    t0 = time.perf_counter()
    dest = Path(os.path.abspath(dest))
    check_destination(dest)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(tmp, 0o755)
    except OSError as e:
        raise F.SnapshotError(f"cannot write a snapshot to {dest}: {e.strerror}") from None
    try:
        cfg = vm.config
        cpu, state = machine_state(vm)
        files: dict[str, F.FileEntry] = {}
        files[F.CPU_FILE] = _write_file(tmp / F.CPU_FILE, cpu)
        try:
            state_bytes = F.dump_state(state)
        except TypeError as e:  # a device returned something that is not plain data
            raise F.SnapshotError(f"cannot save the device state: {e}") from None
        files[F.STATE_FILE] = _write_file(tmp / F.STATE_FILE, state_bytes)
        ram_bytes = write_ram(vm.ram, tmp / F.RAM_FILE, vm.ram_file_ranges)
        disks = []
        disk_bytes = 0
        for i, (spec, image) in enumerate(zip(cfg.disks, vm.disks)):
            disks.append(_save_disk(image, i, spec, tmp))
            disk_bytes += allocated_bytes(tmp / disks[-1].file)
        pause = time.perf_counter() - t0
        manifest = F.Manifest(
            version=F.VERSION_QCOW2 if any(d.format == "qcow2" for d in disks) else F.VERSION,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            vm={
                "name": cfg.name,
                "memory": cfg.memory,
                "cpus": cfg.cpus,
                "kernel": str(cfg.kernel) if cfg.kernel else None,
                "initrd": str(cfg.initrd) if cfg.initrd else None,
                "bios": str(cfg.bios) if cfg.bios else None,
                "append": cfg.append,
                "rng": cfg.rng,
                "deterministic": cfg.deterministic,
                "nics": [n.as_dict() for n in cfg.nics],
                # The CID only: a restored VM gets a socket of its own name.
                "vsock": _vsock(cfg.vsock),
                # The screen's size; its pixels are in the GPU's device state.
                "display": [cfg.display.width, cfg.display.height] if cfg.display is not None else None,
            },
            harts=len(vm.harts),
            state_size=S.STATE_SIZE,
            shared_size=S.SHARED_SIZE,
            ram_size=vm.ram.size,
            disks=disks,
            files=files,  # RAM and disk digests are added by finish()
            stats={"ram_data_bytes": ram_bytes, "pause_seconds": round(pause, 4)},
        )
    except DiskError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise F.SnapshotError(f"cannot copy a disk into the snapshot: {e}") from None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise F.SnapshotError(f"cannot write a snapshot to {dest}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Capture(dest, tmp, manifest, t0, pause, disk_bytes)


def save_snapshot(vm: Any, dest: str | os.PathLike[str]) -> SaveResult:
    """Write the paused VM `vm` to the new directory `dest` (both steps at once)."""
    return capture(vm, dest).finish()

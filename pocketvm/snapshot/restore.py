"""Check a snapshot and build a VM from it.

Everything is verified before anything runs: the manifest (format, version,
its own checksum), the size and digest of every file, the CPU state layout
and the device set. Only then is a VM built, so a bad snapshot gives one
clear error and never a half-restored guest.

RAM is not read into memory: ram.raw is mapped MAP_PRIVATE, so the guest's
pages come from the page cache on first touch and its writes go to private
copy-on-write pages. Any number of VMs can map the same snapshot at once
and none of them changes it. (The snapshot must not be modified or deleted
while VMs restored from it run: the mapping reads it lazily.)

`open_snapshot` needs only numpy, not pocketvm.machine (whose import loads
numba): `pocket restore` checks the snapshot while another thread loads
numba and the compiled CPU core.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketvm.snapshot import basechain
from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import BLOCK, ContentDigest, algorithm_of, digest_fd

if TYPE_CHECKING:
    from pocketvm.machine import NicSpec, VirtualMachine, VMConfig

# Devices whose state others depend on are loaded first: the interrupt
# controller before the devices that re-drive their lines into it.
_LOAD_FIRST = ("plic", "clint")


@dataclass
class Snapshot:
    """A verified snapshot, ready to become a VM."""

    path: Path
    manifest: F.Manifest
    cpu: np.ndarray  # int64: every hart's state array, then the shared array
    state: dict[str, Any]
    ram: mmap.mmap  # private copy-on-write mapping of ram.raw
    ram_extents: list[tuple[int, int]]  # where ram.raw has data (the rest are holes)

    def config(self, name: str, disk_paths: list[Path], nics: list[NicSpec] | None = None) -> VMConfig:
        """The VM to build; `nics` connects its network cards otherwise than when saved."""
        from pocketvm.machine import DiskSpec, DisplaySpec, NicSpec, VMConfig, VsockSpec

        vm = self.manifest.vm
        # The format saved, not the content: a raw disk stays raw even if its
        # guest wrote a qcow2 header into it.
        disks = [DiskSpec(p, d.readonly, d.format) for p, d in zip(disk_paths, self.manifest.disks)]
        # A network interface comes back connected anew: the old VM's
        # connections belonged to its process and ended with it.
        saved = [NicSpec.from_dict(n) for n in vm.get("nics", [])]
        if nics is not None and len(nics) != len(saved):
            raise F.SnapshotError(f"{F.describe(self.path)}: has {len(saved)} network interface(s), "
                                  f"{len(nics)} asked for")
        nics = saved if nics is None else nics
        return VMConfig(
            memory=vm["memory"],
            cpus=vm["cpus"],
            kernel=Path(vm["kernel"]) if vm["kernel"] else None,
            initrd=Path(vm["initrd"]) if vm["initrd"] else None,
            bios=Path(vm["bios"]) if vm["bios"] else None,
            append=vm["append"],
            disks=disks,
            nics=nics,
            # A vsock comes back with its CID and a socket named after the
            # new VM; the old connections ended with the old VM.
            vsock=VsockSpec(cid=vm["vsock"]["cid"], upload_window=vm["vsock"].get("upload_window", 0))
            if vm.get("vsock") else None,
            display=DisplaySpec(*vm["display"]) if vm.get("display") else None,
            rng=vm["rng"],
            deterministic=vm["deterministic"],
            name=name,
        )


def _read_small(path: Path, entry: F.FileEntry, where: str) -> bytes:
    data = path.read_bytes()
    if len(data) != entry.size:
        raise F.SnapshotError(f"{where}: {path.name} is {len(data)} bytes, expected {entry.size} (truncated?)")
    buf = np.zeros(-(-len(data) // BLOCK) * BLOCK, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    digest = ContentDigest(algorithm_of(entry.digest))
    digest.update(0, buf)
    if digest.hexdigest() != entry.digest:
        raise F.SnapshotError(f"{where}: {path.name} checksum mismatch (the file was edited or corrupted)")
    return data


def _map_ram(path: Path, entry: F.FileEntry, where: str) -> tuple[mmap.mmap, list[tuple[int, int]]]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != entry.size:  # changed since it was checked: a mapping would fault
            raise F.SnapshotError(f"{where}: {F.RAM_FILE} changed while being restored")
        digest, extents = basechain.cached_digest_fd(fd, entry.size, algorithm_of(entry.digest), path)
        if digest != entry.digest:
            raise F.SnapshotError(f"{where}: {F.RAM_FILE} checksum mismatch (the file was edited or corrupted)")
        # PROT_WRITE on a MAP_PRIVATE mapping of a read-only file is allowed:
        # writes go to private copies, never to the file.
        ram = mmap.mmap(fd, entry.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return ram, extents


def open_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Verify the snapshot at `path`; SnapshotError (one line) if unusable."""
    path = Path(os.path.abspath(path))
    where = F.describe(path)
    if not path.exists():
        raise F.SnapshotError(f"{where}: no such directory")
    if not path.is_dir():
        raise F.SnapshotError(f"{where}: not a directory")
    try:
        manifest_bytes = (path / F.MANIFEST).read_bytes()
    except FileNotFoundError:
        raise F.SnapshotError(f"{where}: no {F.MANIFEST} (not a pocketvm snapshot, or an incomplete one)") from None
    except OSError as e:
        raise F.SnapshotError(f"{where}: cannot read {F.MANIFEST}: {e.strerror}") from None
    m = F.parse_manifest(manifest_bytes, where)
    disk_files = {d.file for d in m.disks}
    for name, entry in m.files.items():
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            what = "disk image" if name in disk_files else "file"
            raise F.SnapshotError(f"{where}: {what} {name} is missing") from None
        except OSError as e:
            raise F.SnapshotError(f"{where}: cannot read {name}: {e.strerror}") from None
        if size != entry.size:
            raise F.SnapshotError(f"{where}: {name} is {size} bytes, expected {entry.size} (truncated or edited?)")
        try:  # here, so that every later check (also of the disk copies) can trust the algorithm name
            algorithm_of(entry.digest)
        except ValueError as e:
            raise F.SnapshotError(f"{where}: {name}: {e}") from None
    try:
        cpu_bytes = _read_small(path / F.CPU_FILE, m.files[F.CPU_FILE], where)
        state_bytes = _read_small(path / F.STATE_FILE, m.files[F.STATE_FILE], where)
        if len(cpu_bytes) != 8 * (m.harts * m.state_size + m.shared_size):
            raise F.SnapshotError(f"{where}: {F.CPU_FILE} does not hold {m.harts} hart(s)")
        cpu = np.frombuffer(cpu_bytes, dtype="<i8").astype(np.int64)
        try:
            state = F.load_state(state_bytes)
            _check_state(state, m)
        except (ValueError, KeyError, TypeError) as e:
            raise F.SnapshotError(f"{where}: {F.STATE_FILE} is invalid ({e})") from None
        for disk in m.disks:
            # Attached in place (read-only ones), or the backing file of the
            # new VM's overlay (qcow2 ones), so checked here; writable raw
            # ones are checked as they are copied. A qcow2 image's digest
            # comes from the cache when the file is unchanged (see basechain).
            if disk.format == "qcow2":
                digest = basechain.cached_digest(path / disk.file, algorithm_of(m.files[disk.file].digest))
                basechain.verify(disk.backing, where)
            elif disk.readonly:
                fd = os.open(path / disk.file, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    digest, _ = digest_fd(fd, m.files[disk.file].size, algorithm_of(m.files[disk.file].digest))
                finally:
                    os.close(fd)
            else:
                continue
            if digest != m.files[disk.file].digest:
                raise F.SnapshotError(f"{where}: {disk.file} checksum mismatch (the disk image was edited or corrupted)")
        ram, ram_extents = _map_ram(path / F.RAM_FILE, m.files[F.RAM_FILE], where)
    except OSError as e:
        raise F.SnapshotError(f"{where}: cannot read it: {e.strerror or e}") from None
    return Snapshot(path, m, cpu, state, ram, ram_extents)


def _check_state(state: dict[str, Any], m: F.Manifest) -> None:
    if not isinstance(state.get("mtime"), int):
        raise ValueError("no mtime")
    if not isinstance(state.get("devices"), dict):
        raise ValueError("no devices")
    ids = state.get("virtio_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError("no virtio device list")


def _check_cpu_state(harts: np.ndarray, shared: np.ndarray, where: str) -> None:
    """Reject values the compiled core uses as indices or divisors unchecked.

    The checksums catch damage; this catches a snapshot that was edited and
    re-checksummed, which must not be able to crash the monitor either.
    (Cached translations, which hold RAM offsets, are flushed, not trusted.)
    """
    from pocketvm.cpu import state as S

    ok = int(shared[S.SH_NHARTS]) == len(harts) and int(shared[S.SH_INSN_PER_TICK]) >= 1
    for i, st in enumerate(harts):
        ok = ok and int(st[S.HART_ID]) == i and int(st[S.PRIV]) in (0, 1, 3)
    if not ok:
        raise F.SnapshotError(f"{where}: {F.CPU_FILE} holds an impossible CPU state")


def _flush_tlb(st: np.ndarray) -> None:
    from pocketvm.cpu.mmu import flush_tlb

    # The plain-Python body is enough for one array and avoids loading
    # compiled code just for this.
    getattr(flush_tlb, "py_func", flush_tlb)(st)


def check_layout(snap: Snapshot) -> None:
    """The snapshot's CPU state arrays have this pocketvm's layout."""
    from pocketvm.cpu import state as S

    m = snap.manifest
    # Earlier versions whose state arrays differ only in the TLB's size
    # restore too: the TLB is flushed on restore anyway.
    if m.state_size not in (S.STATE_SIZE, *S.EARLIER_STATE_SIZES) or m.shared_size != S.SHARED_SIZE:
        raise F.SnapshotError(
            f"{F.describe(snap.path)}: saved by a pocketvm with a different CPU state layout; cannot restore it"
        )


def apply_state(vm: VirtualMachine, snap: Snapshot) -> None:
    """Put the snapshot's CPU, device and time state into a freshly built VM."""
    from pocketvm.cpu import state as S

    where = F.describe(snap.path)
    nharts = snap.manifest.harts
    size = snap.manifest.state_size  # S.STATE_SIZE, or an earlier one (`check_layout`): the same below S.TLB
    harts = snap.cpu[: nharts * size].reshape(nharts, size)
    shared = snap.cpu[nharts * size :]
    _check_cpu_state(harts, shared, where)
    ids = [t.device.device_id if t.device is not None else 0 for t in vm.virtio]
    if ids != snap.state["virtio_ids"]:
        raise F.SnapshotError(f"{where}: its virtio devices {snap.state['virtio_ids']} do not match the VM's {ids}")
    for hart, st in zip(vm.harts, harts):
        hart.st[: S.TLB] = st[: S.TLB]
        _flush_tlb(hart.st)
    vm.sh[:] = shared
    saved = snap.state["devices"]
    devices = vm.devices()
    # Snapshots from before the vmgenid device restore without it (their
    # guests never saw one).
    missing = [name for name in devices if name not in saved and name != "vmgenid"]
    if missing:
        raise F.SnapshotError(f"{where}: no saved state for device(s) {', '.join(missing)}")
    order = [n for n in _LOAD_FIRST if n in devices] + [n for n in devices if n not in _LOAD_FIRST]
    for name in order:
        if name not in saved:
            continue
        try:
            devices[name].load(saved[name])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise F.SnapshotError(f"{where}: saved state of device {name} is invalid ({e!r})") from None
    vm.set_guest_time(int(snap.state["mtime"]))
    # Every restored VM is a new instance: a new generation ID makes the
    # guest reseed its RNG (and, in pocketvm's Debian image, take a new identity).
    vm.vmgenid.new_generation()
    for hart in vm.harts:
        if hart.tier1 is not None:  # answer first: the translation service starts, cached code is found, meanwhile
            hart.tier1.booting = False


@dataclass
class Restored:
    vm: VirtualMachine
    snapshot: Snapshot
    disks: Any  # workdisks.WorkDisks


def restore_vm(
    path: str | os.PathLike[str] | Snapshot, console: Any, name: str, disk_dir: Path | None = None,
    nics: list[NicSpec] | None = None,
) -> Restored:
    """Build a VM, ready to run(), from the snapshot at `path` (verified
    here, or already by `open_snapshot`).

    The caller owns the result: `restored.vm.close()` and
    `restored.disks.finish()` when the VM ends.
    """
    from pocketvm.machine import VirtualMachine
    from pocketvm.snapshot import workdisks

    snap = path if isinstance(path, Snapshot) else open_snapshot(path)
    check_layout(snap)
    directory = disk_dir if disk_dir is not None else workdisks.default_disk_dir(name)
    work = workdisks.prepare(snap.path, snap.manifest, Path(os.path.abspath(directory)))
    try:
        vm = VirtualMachine(snap.config(name, work.paths, nics), console, ram_backing=snap.ram)
        vm.ram_file_ranges = snap.ram_extents
        try:
            apply_state(vm, snap)
        except BaseException:
            vm.close()
            raise
        work.mark_clean()
    except BaseException:
        work.discard()
        raise
    return Restored(vm, snap, work)

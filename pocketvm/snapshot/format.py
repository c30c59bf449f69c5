"""The on-disk snapshot format (version 1): a directory described by a manifest.

    DIR/manifest.json   what the snapshot holds, sizes and digests of every
                        other file, and a checksum of the manifest itself
    DIR/cpu.bin         every hart's state array, then the shared array
                        (int64 little endian, layout of pocketvm.cpu.state)
    DIR/state.json      device states (PLIC, CLINT, UART with its unread
                        input, RTC, test device, virtio transports and queues)
    DIR/ram.raw         guest RAM, byte N = guest physical RAM_BASE + N; zero
                        pages are holes, so it is mapped (not read) on restore
    DIR/diskN.raw       each attached raw disk as it was at that instant
    DIR/diskN.qcow2     each attached qcow2 disk: only its top image (for an
                        overlay, what that VM wrote), its backing files
                        referenced by absolute path and checksum (format
                        version 2; see `basechain`)

Every file's digest is a `digest.ContentDigest` (XXH3-128 over its non-zero
4 KiB blocks; older snapshots' digests are SHA-256 and say so in their
prefix), so checking a sparse file costs as much as its data, not its size.
The manifest's own `checksum` is sha256 over its canonical JSON without
that field (it is small, so speed does not matter); an edited manifest is
caught like an edited file.

A snapshot directory is written under a temporary name and renamed into
place when complete, so a crash while saving never leaves something that
looks like a snapshot. A restore only reads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketvm.backends import upload_window

FORMAT = "pocketvm-snapshot"
VERSION = 1  # snapshots with raw disks only
VERSION_QCOW2 = 2  # with a qcow2 disk: an older pocketvm must not take it for raw
SUPPORTED_VERSIONS = (1, 2)

MANIFEST = "manifest.json"
CPU_FILE = "cpu.bin"
STATE_FILE = "state.json"
RAM_FILE = "ram.raw"


def disk_file(index: int, fmt: str = "raw") -> str:
    return f"disk{index}.{'qcow2' if fmt == 'qcow2' else 'raw'}"


class SnapshotError(Exception):
    """A snapshot cannot be written or used (one-line message for the user).

    Not a VMError: checking a snapshot must not need pocketvm.machine, whose
    import loads numba (see `pocket restore`, which loads both in parallel).
    """


# --- JSON with bytes -------------------------------------------------------------
# Device states are plain data but may hold bytes (the UART's unread input).


def _encode(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"device state key {k!r} is not a string")
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"device state value of type {type(obj).__name__} cannot be saved")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$bytes"} and isinstance(obj["$bytes"], str):
            return base64.b64decode(obj["$bytes"], validate=True)
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def dump_state(state: dict[str, Any]) -> bytes:
    return json.dumps(_encode(state), indent=1, sort_keys=True).encode() + b"\n"


def load_state(data: bytes) -> dict[str, Any]:
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return _decode(obj)


# --- manifest ------------------------------------------------------------------------


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


@dataclass
class FileEntry:
    size: int
    digest: str


@dataclass
class BackingEntry:
    """A backing file below a snapshot's qcow2 disk."""

    path: str  # absolute
    format: str  # "raw" or "qcow2"
    size: int  # file size
    digest: str = ""  # filled in by basechain.seal (after the VM was let go)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "size": self.size, "digest": self.digest}


@dataclass
class DiskEntry:
    file: str
    readonly: bool
    source: str
    format: str = "raw"
    backing: list[BackingEntry] = field(default_factory=list)  # top-down, qcow2 only

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "readonly": self.readonly, "source": self.source}
        if self.format != "raw":  # version 1 manifests stay as they were
            out["format"] = self.format
            out["backing"] = [b.as_dict() for b in self.backing]
        return out


@dataclass
class Manifest:
    version: int
    created: str
    vm: dict[str, Any]
    harts: int
    state_size: int
    shared_size: int
    ram_size: int
    disks: list[DiskEntry]
    files: dict[str, FileEntry]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "created": self.created,
            "vm": self.vm,
            "cpu": {"harts": self.harts, "state_size": self.state_size, "shared_size": self.shared_size},
            "ram": {"file": RAM_FILE, "size": self.ram_size},
            "disks": [d.as_dict() for d in self.disks],
            "files": {name: {"size": f.size, "digest": f.digest} for name, f in sorted(self.files.items())},
            "stats": self.stats,
        }
        obj["checksum"] = manifest_checksum(obj)
        return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class _Invalid(Exception):
    pass


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _Invalid(f"{where}{key} is missing")
    value = obj[key]
    # bool is an int in Python; a count given as true/false is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"{where}{key} has the wrong type")
    return value


def _safe_name(name: str) -> bool:
    # Files named by the manifest must stay inside the snapshot directory.
    return bool(name) and name == os.path.basename(name) and name not in (".", "..")


def _valid_nics(nics: Any) -> bool:
    """A list of {"kind": str, "forwards": [[proto, host port, guest port], ...]}."""

    def forward(f: Any) -> bool:
        return (
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
            and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in f[1:])
        )  # fmt: skip

    return isinstance(nics, list) and all(
        isinstance(n, dict) and isinstance(n.get("kind"), str)
        and isinstance(n.get("forwards", []), list) and all(map(forward, n.get("forwards", [])))
        for n in nics
    )  # fmt: skip


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Validate a manifest; SnapshotError with a one-line reason otherwise."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SnapshotError(f"{where}: {MANIFEST} is not valid JSON (truncated or edited?)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SnapshotError(f"{where}: {MANIFEST} does not describe a pocketvm snapshot")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotError(f"{where}: {MANIFEST} has no format version")
    if version not in SUPPORTED_VERSIONS:
        newer = " (made by a newer pocketvm)" if version > max(SUPPORTED_VERSIONS) else ""
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise SnapshotError(
            f"{where}: snapshot format version {version} is not supported{newer}; this pocketvm reads version {supported}"
        )
    if obj.get("checksum") != manifest_checksum(obj):
        raise SnapshotError(f"{where}: {MANIFEST} checksum mismatch (the manifest was edited or corrupted)")
    try:
        vm = _get(obj, "vm", dict, "")
        _get(vm, "memory", int, "vm.")
        _get(vm, "cpus", int, "vm.")
        _get(vm, "append", str, "vm.")
        _get(vm, "rng", bool, "vm.")
        _get(vm, "deterministic", bool, "vm.")
        for key in ("kernel", "initrd", "bios"):
            if key not in vm or not (vm[key] is None or isinstance(vm[key], str)):
                raise _Invalid(f"vm.{key} is missing or has the wrong type")
        if not _valid_nics(vm.get("nics", [])):
            raise _Invalid("vm.nics has the wrong shape")
        vsock = vm.get("vsock")
        if vsock is not None:
            cid = vsock.get("cid") if isinstance(vsock, dict) else None
            window = vsock.get("upload_window", 0) if isinstance(vsock, dict) else None
            if (not isinstance(cid, int) or isinstance(cid, bool) or not 3 <= cid <= 0xFFFF_FFFE
                    or not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= upload_window.MAX_SIZE):
                raise _Invalid("vm.vsock has the wrong shape")
        display = vm.get("display")
        if display is not None and not (
            isinstance(display, list) and len(display) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16384 for n in display)
        ):  # fmt: skip
            raise _Invalid("vm.display has the wrong shape")
        cpu = _get(obj, "cpu", dict, "")
        ram = _get(obj, "ram", dict, "")
        files_obj = _get(obj, "files", dict, "")
        files: dict[str, FileEntry] = {}
        for name, entry in files_obj.items():
            if not _safe_name(name):
                raise _Invalid(f"file name {name!r} is not allowed")
            files[name] = FileEntry(_get(entry, "size", int, f"files.{name}."), _get(entry, "digest", str, f"files.{name}."))
        disks = [_disk_entry(d, i, version) for i, d in enumerate(_get(obj, "disks", list, ""))]
        m = Manifest(
            version=version,
            created=str(obj.get("created", "")),
            vm=vm,
            harts=_get(cpu, "harts", int, "cpu."),
            state_size=_get(cpu, "state_size", int, "cpu."),
            shared_size=_get(cpu, "shared_size", int, "cpu."),
            ram_size=_get(ram, "size", int, "ram."),
            disks=disks,
            files=files,
            stats=obj.get("stats") if isinstance(obj.get("stats"), dict) else {},
        )
        if _get(ram, "file", str, "ram.") != RAM_FILE:
            raise _Invalid("ram.file is not ram.raw")
        needed = [CPU_FILE, STATE_FILE, RAM_FILE] + [d.file for d in disks]
        for name in needed:
            if name not in files:
                raise _Invalid(f"no size and digest for {name}")
        if m.harts != vm["cpus"] or m.ram_size != vm["memory"] or files[RAM_FILE].size != m.ram_size:
            raise _Invalid("cpu or ram do not match the vm section")
    except _Invalid as e:
        raise SnapshotError(f"{where}: {MANIFEST} is invalid: {e}") from None
    return m


def _disk_entry(d: Any, i: int, version: int) -> DiskEntry:
    where = f"disks[{i}]."
    entry = DiskEntry(_get(d, "file", str, where), _get(d, "readonly", bool, where), str(d.get("source", "")))
    entry.format = d.get("format", "raw")
    if entry.format not in ("raw", "qcow2") or (entry.format == "qcow2" and version < VERSION_QCOW2):
        raise _Invalid(f"{where}format is not allowed")
    for j, b in enumerate(d.get("backing", []) if entry.format == "qcow2" else []):
        at = f"{where}backing[{j}]."
        path = _get(b, "path", str, at)
        if not os.path.isabs(path):
            raise _Invalid(f"{at}path is not absolute")
        fmt = _get(b, "format", str, at)
        if fmt not in ("raw", "qcow2"):
            raise _Invalid(f"{at}format is not allowed")
        entry.backing.append(BackingEntry(path, fmt, _get(b, "size", int, at), _get(b, "digest", str, at)))
    return entry


def describe(path: Path) -> str:
    """How a snapshot directory is named in messages."""
    return f"snapshot {path}"

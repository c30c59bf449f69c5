"""The cpio "newc" archive format, as the Linux initramfs unpacker reads it.

Each entry is a 110-byte ASCII header (magic "070701" and thirteen 8-digit
hex fields), the NUL-terminated name padded to 4 bytes, then the data padded
to 4 bytes. The archive ends with an entry named "TRAILER!!!".

The writer is deterministic (fixed mtime, inode numbers in insertion order)
so the same inputs always give the same bytes, hence the same checksum in the
image manifest. It creates missing parent directories itself because the
kernel's unpacker does not: a file whose directory is not yet there is
silently dropped.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"empty cpio path {path!r}")
    if ".." in parts:
        raise ValueError(f"cpio path must not contain '..': {path!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class CpioWriter:
    """Accumulates entries and renders a newc archive with `finish()`."""

    def __init__(self, mtime: int = 0):
        self.mtime = mtime
        self._entries: list[CpioEntry] = []
        self._names: dict[str, int] = {}

    def __contains__(self, path: str) -> bool:
        return _normalize(path) in self._names

    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        parent = name.rpartition("/")[0]
        if parent:
            self.add_dir(parent)
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self._names[name] = len(self._entries)
        self._entries.append(CpioEntry(name, mode, bytes(data), nlink=nlink, mtime=self.mtime,
                                       rdevmajor=rdev[0], rdevminor=rdev[1]))

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = _normalize(path)
        existing = self._names.get(name)
        if existing is not None:
            if not self._entries[existing].is_dir:
                raise ValueError(f"cpio entry {name!r} exists and is not a directory")
            return
        self._add(name, stat.S_IFDIR | (mode & 0o7777))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_normalize(path), stat.S_IFREG | (mode & 0o7777), data)

    def add_symlink(self, path: str, target: str) -> None:
        if not target:
            raise ValueError("empty symlink target")
        self._add(_normalize(path), stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_normalize(path), stat.S_IFCHR | (mode & 0o7777), rdev=(major, minor))

    def finish(self) -> bytes:
        out = bytearray()
        for ino, entry in enumerate(self._entries, start=1):
            _emit(out, entry, ino)
        _emit(out, CpioEntry(TRAILER, 0), 0)
        return bytes(out)


def _emit(out: bytearray, e: CpioEntry, ino: int) -> None:
    name = e.name.encode() + b"\0"
    values = (ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, len(e.data),
              0, 0, e.rdevmajor, e.rdevminor, len(name), 0)
    out += MAGIC + b"".join(b"%08X" % v for v in values)
    out += name + b"\0" * _pad4(_HEADER_LEN + len(name))
    out += e.data + b"\0" * _pad4(len(e.data))


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse a newc archive (without the trailer entry); ValueError if malformed."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if pos + _HEADER_LEN > len(data):
            raise ValueError("truncated cpio archive (no trailer)")
        if data[pos : pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos:#x}")
        try:
            f = {k: int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, k in enumerate(_FIELDS)}
        except ValueError:
            raise ValueError(f"bad cpio header field at offset {pos:#x}") from None
        name_start = pos + _HEADER_LEN
        name_end = name_start + f["namesize"]
        if f["namesize"] < 1 or name_end > len(data) or data[name_end - 1] != 0:
            raise ValueError(f"bad cpio name at offset {pos:#x}")
        name = data[name_start : name_end - 1].decode()
        data_start = name_end + _pad4(_HEADER_LEN + f["namesize"])
        data_end = data_start + f["filesize"]
        if data_end > len(data):
            raise ValueError(f"truncated data for cpio entry {name!r}")
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(name, f["mode"], data[data_start:data_end], f["uid"], f["gid"],
                                 f["nlink"], f["mtime"], f["rdevmajor"], f["rdevminor"]))
        pos = data_end + _pad4(f["filesize"])

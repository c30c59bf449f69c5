"""The qcow2 header (QEMU's docs/interop/qcow2.txt): parsing with every
check a hostile file needs, and writing.

The first cluster of a qcow2 file holds the header (72 bytes in version 2,
104 or more in version 3), then header extensions (type, length, data
padded to 8 bytes; type 0 ends the list), then the backing file name. All
numbers are big endian. Everything here is plain data: the image class
(`qcow2`) owns the file descriptor.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from pocketvm.backends.disk import DiskError

MAGIC = b"QFI\xfb"
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_V3 = struct.Struct(">QQQII")  # 32 more bytes
V3_HEADER_LENGTH = 112  # 104 + the compression type byte + padding, as QEMU writes it

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_NAMES = {
    INCOMPAT_DATA_FILE: "an external data file",
    INCOMPAT_EXTL2: "extended L2 entries (subclusters)",
}

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # 2 MiB, QEMU's limit too
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's limit on the L1 table
MAX_REFTABLE_BYTES = 8 << 20  # and on the refcount table
MAX_VIRTUAL_SIZE = 1 << 56  # 64 PiB: offsets in L2 entries have 56 bits


@dataclass
class Header:
    version: int
    cluster_bits: int
    size: int  # virtual disk size in bytes
    l1_size: int  # entries
    l1_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LENGTH
    compression_type: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    # Extensions kept verbatim when the header is rewritten (feature table, bitmaps, ...).
    other_extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8

    def l1_needed(self) -> int:
        """L1 entries needed to map the whole virtual size."""
        per_l1 = self.cluster_size * self.l2_entries
        return -(-self.size // per_l1)


def l1_entries_for(size: int, cluster_bits: int) -> int:
    return -(-size // ((1 << cluster_bits) * ((1 << cluster_bits) // 8)))


def _corrupt(path: str, what: str) -> DiskError:
    return DiskError(f"{path}: corrupt qcow2 image: {what}")


def parse(data: bytes, file_size: int, path: str) -> Header:
    """Parse and check a header from the start of the file (`data`: at least
    its first cluster, or the whole file if smaller)."""
    if len(data) < _V2.size or data[:4] != MAGIC:
        raise DiskError(f"{path}: not a qcow2 image")
    (_, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size, l1_offset,
     rt_offset, rt_clusters, nb_snapshots, snapshots_offset) = _V2.unpack_from(data)  # fmt: skip
    if version not in (2, 3):
        raise DiskError(f"{path}: qcow2 version {version} is not supported (only 2 and 3)")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise _corrupt(path, f"cluster size 2^{cluster_bits} is out of range")
    cluster_size = 1 << cluster_bits
    h = Header(version, cluster_bits, size, l1_size, l1_offset, rt_offset, rt_clusters, nb_snapshots, snapshots_offset)
    if version == 2:
        h.header_length = _V2.size
    else:
        if len(data) < _V2.size + _V3.size:
            raise _corrupt(path, "header is truncated")
        h.incompatible, h.compatible, h.autoclear, h.refcount_order, h.header_length = _V3.unpack_from(data, _V2.size)
        if h.header_length < _V2.size + _V3.size or h.header_length % 8 or h.header_length > min(cluster_size, len(data)):
            raise _corrupt(path, f"header length {h.header_length} is invalid")
        if h.header_length > 104:
            h.compression_type = data[104]
    if crypt != 0:
        raise DiskError(f"{path}: encrypted qcow2 images are not supported")
    unknown = h.incompatible & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_DATA_FILE | INCOMPAT_EXTL2)
    if unknown:
        raise DiskError(f"{path}: qcow2 image uses unknown incompatible features {unknown:#x} (made by a newer QEMU?)")
    for bit, name in _INCOMPAT_NAMES.items():
        if h.incompatible & bit:
            raise DiskError(f"{path}: qcow2 images with {name} are not supported")
    if h.incompatible & INCOMPAT_COMPRESSION and h.compression_type != 0:
        raise DiskError(f"{path}: qcow2 compression type {h.compression_type} (zstd) is not supported, only zlib")
    if not 0 <= h.refcount_order <= 6:
        raise _corrupt(path, f"refcount order {h.refcount_order} is out of range")
    if size > MAX_VIRTUAL_SIZE:
        raise _corrupt(path, f"virtual size {size} is absurd")
    if l1_size * 8 > MAX_L1_BYTES:
        raise _corrupt(path, f"L1 table of {l1_size} entries is too large")
    if l1_size < h.l1_needed():
        raise _corrupt(path, f"L1 table of {l1_size} entries cannot map the virtual size {size}")
    _check_table(path, "L1 table", l1_offset, l1_size * 8, cluster_size, file_size, required=l1_size > 0)
    if rt_clusters * cluster_size > MAX_REFTABLE_BYTES:
        raise _corrupt(path, f"refcount table of {rt_clusters} clusters is too large")
    _check_table(path, "refcount table", rt_offset, rt_clusters * cluster_size, cluster_size, file_size, required=True)
    if rt_clusters == 0:
        raise _corrupt(path, "the refcount table is empty")
    if l1_size and _overlap(l1_offset, l1_size * 8, rt_offset, rt_clusters * cluster_size):
        raise _corrupt(path, "the L1 table overlaps the refcount table")
    if backing_offset:
        if backing_size > MAX_BACKING_NAME or backing_size == 0:
            raise _corrupt(path, f"backing file name of {backing_size} bytes")
        if backing_offset + backing_size > min(cluster_size, len(data)):
            raise _corrupt(path, "the backing file name is not inside the header cluster")
        try:
            h.backing_file = data[backing_offset : backing_offset + backing_size].decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(path, "the backing file name is not UTF-8") from None
        if "\0" in h.backing_file:
            raise _corrupt(path, "the backing file name contains a NUL byte")
    _parse_extensions(h, data[: min(cluster_size, len(data))], backing_offset, path)
    return h


def _overlap(a: int, alen: int, b: int, blen: int) -> bool:
    return a < b + blen and b < a + alen


def _check_table(path: str, what: str, offset: int, length: int, cluster_size: int, file_size: int, required: bool) -> None:
    if not required:
        return
    if offset % cluster_size:
        raise _corrupt(path, f"the {what} offset {offset:#x} is not cluster aligned")
    if offset < cluster_size:
        raise _corrupt(path, f"the {what} overlaps the header")
    if offset + length > file_size:
        raise _corrupt(path, f"the {what} at {offset:#x} lies past the end of the file")


def _parse_extensions(h: Header, cluster: bytes, backing_offset: int, path: str) -> None:
    pos = h.header_length
    end = backing_offset if backing_offset else len(cluster)
    while pos + 8 <= end:
        ext_type, length = struct.unpack_from(">II", cluster, pos)
        pos += 8
        if ext_type == EXT_END:
            return
        if pos + length > len(cluster):
            raise _corrupt(path, "a header extension runs past the header cluster")
        body = cluster[pos : pos + length]
        if ext_type == EXT_BACKING_FORMAT:
            h.backing_format = body.decode("ascii", "replace")
        else:
            h.other_extensions.append((ext_type, bytes(body)))
        pos += (length + 7) & ~7
    if h.version == 3 and pos < end:
        raise _corrupt(path, "the header extensions are not terminated")


def pack(h: Header) -> bytes:
    """The header, its extensions and the backing file name (the start of cluster 0)."""
    backing = (h.backing_file or "").encode()
    if len(backing) > MAX_BACKING_NAME:
        raise DiskError(f"backing file name longer than {MAX_BACKING_NAME} bytes: {h.backing_file}")
    exts = bytearray()
    entries = list(h.other_extensions)
    if h.backing_format:
        entries.insert(0, (EXT_BACKING_FORMAT, h.backing_format.encode()))
    for ext_type, body in entries:
        exts += struct.pack(">II", ext_type, len(body)) + body + bytes(-len(body) % 8)
    exts += struct.pack(">II", EXT_END, 0)
    head_len = _V2.size if h.version == 2 else h.header_length
    backing_offset = head_len + len(exts) if backing else 0
    out = bytearray(
        _V2.pack(
            MAGIC, h.version, backing_offset, len(backing), h.cluster_bits, h.size, 0, h.l1_size, h.l1_offset,
            h.refcount_table_offset, h.refcount_table_clusters, h.nb_snapshots, h.snapshots_offset,
        )
    )  # fmt: skip
    if h.version == 3:
        out += _V3.pack(h.incompatible, h.compatible, h.autoclear, h.refcount_order, h.header_length)
        out += bytes(h.header_length - len(out))
        if h.header_length > 104:
            out[104] = h.compression_type
    out += exts + backing
    if len(out) > h.cluster_size:
        raise DiskError("the qcow2 header and backing file name do not fit in the first cluster")
    return bytes(out)


def read(path: str) -> Header:
    """The header of the qcow2 file at `path` (nothing else is opened)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(_V2.size)
            bits = struct.unpack_from(">I", first, 20)[0] if len(first) >= 24 else 16
            f.seek(0)
            data = f.read(1 << min(max(bits, MIN_CLUSTER_BITS), MAX_CLUSTER_BITS))
    except FileNotFoundError:
        raise DiskError(f"disk image not found: {path}") from None
    except OSError as e:
        raise DiskError(f"cannot read disk image {path}: {e.strerror}") from None
    return parse(data, size, path)

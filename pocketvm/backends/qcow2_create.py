"""Make qcow2 images: empty ones, overlays on a backing file, conversions
from raw, and the rewrite of an overlay's backing file reference.

A new image has QEMU's layout: the header in cluster 0, the refcount
table in cluster 1, the first refcount block in cluster 2, the L1 table
from cluster 3. It is written under a temporary name and renamed into
place, so a failure never leaves a half-made image under the real name.
"""

from __future__ import annotations

import os
import secrets
import struct

import numpy as np

from pocketvm.backends import qcow2_header as H
from pocketvm.backends.disk import SECTOR_SIZE, DiskError, data_extents
from pocketvm.backends.open_disk import open_disk
from pocketvm.backends.qcow2_refcount import pwrite_all, runs_of

DEFAULT_CLUSTER_SIZE = 64 << 10
_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)


def _cluster_bits(cluster_size: int) -> int:
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not H.MIN_CLUSTER_BITS <= bits <= H.MAX_CLUSTER_BITS:
        raise DiskError(f"cluster size {cluster_size} is not a power of two from 512 to 2M")
    return bits


def _initial_image(size: int, cluster_bits: int, backing: str | None, backing_format: str | None) -> bytes:
    """The bytes of a new empty image: header, refcount table and block, L1."""
    cs = 1 << cluster_bits
    l1_size = H.l1_entries_for(size, cluster_bits)
    if l1_size * 8 > H.MAX_L1_BYTES:
        raise DiskError(f"virtual size {size} is too large for {cs}-byte clusters")
    l1_clusters = max(1, -(-l1_size * 8 // cs))
    total = 3 + l1_clusters
    if total > cs // 2:  # one 16-bit refcount block covers cs/2 clusters
        raise DiskError(f"virtual size {size} is too large for {cs}-byte clusters")
    h = H.Header(
        version=3, cluster_bits=cluster_bits, size=size, l1_size=l1_size, l1_offset=3 * cs,
        refcount_table_offset=cs, refcount_table_clusters=1, backing_file=backing, backing_format=backing_format,
    )  # fmt: skip
    out = bytearray(total * cs)
    head = H.pack(h)
    out[: len(head)] = head
    struct.pack_into(">Q", out, cs, 2 * cs)  # refcount table -> block at cluster 2
    np.frombuffer(out, ">u2", total, 2 * cs)[:] = 1  # writable view: refcounts of our clusters
    return bytes(out)


def _write_new(path: str, data: bytes, durable: bool = True) -> None:
    """Create `path` (which must not exist) with `data`, atomically (and
    synced to disk if `durable`)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DiskError(f"cannot create {path}: {e.strerror}") from None
    try:
        # Only the blocks that hold something are written: a new overlay
        # takes a few KiB on the host, not its four clusters.
        os.ftruncate(fd, len(data))
        view = memoryview(data)
        for pos in range(0, len(data), _BLOCK):
            block = view[pos : pos + _BLOCK]
            if block != _ZERO_BLOCK[: len(block)]:
                pwrite_all(fd, block, pos)
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        if os.path.lexists(path):
            raise DiskError(f"{path} already exists")
        os.link(tmp, path)  # fails rather than replacing a file made meanwhile
    except OSError as e:
        raise DiskError(f"cannot create {path}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def create_qcow2(
    path: str | os.PathLike[str],
    size: int | None = None,
    backing: str | os.PathLike[str] | None = None,
    cluster_size: int = DEFAULT_CLUSTER_SIZE,
    durable: bool = True,
) -> None:
    """Create a new qcow2 v3 image at `path` (never over an existing file).

    With `backing`, the image is an overlay that reads everything it has
    not written from that file (raw or qcow2, by content); `size` defaults
    to the backing file's virtual size. The backing reference is stored as
    given: a relative path is relative to the new image's directory (as
    QEMU reads it). The backing file is only read. `durable=False` skips
    the fsync (for a VM's scratch overlay: the guest's first flush syncs it).
    """
    path = os.fspath(path)
    bits = _cluster_bits(cluster_size)
    backing_name = backing_format = None
    if backing is not None:
        backing_name = os.fspath(backing)
        resolved = backing_name if os.path.isabs(backing_name) else os.path.join(os.path.dirname(path), backing_name)
        with open_disk(resolved, readonly=True) as base:
            backing_format = base.format
            if size is None:
                size = base.size
    if size is None:
        raise DiskError("the size of a new image without a backing file must be given")
    if size <= 0 or size % SECTOR_SIZE:
        raise DiskError(f"size {size} is not a positive multiple of {SECTOR_SIZE}")
    if size > H.MAX_VIRTUAL_SIZE:
        raise DiskError(f"size {size} is too large")
    if os.path.lexists(path):
        raise DiskError(f"{path} already exists")
    _write_new(path, _initial_image(size, bits, backing_name, backing_format), durable)


def create_overlay(path: str | os.PathLike[str], backing: str | os.PathLike[str], durable: bool = True) -> None:
    """A new qcow2 overlay at `path` on `backing`, referenced by absolute path."""
    create_qcow2(path, backing=os.path.abspath(backing), durable=durable)


def set_backing(path: str | os.PathLike[str], backing: str, backing_format: str | None) -> None:
    """Rewrite the backing file reference in the header of the qcow2 image
    at `path` (which nothing else may have open)."""
    path = os.fspath(path)
    h = H.read(path)
    h.backing_file = backing
    h.backing_format = backing_format
    data = H.pack(h)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # Cluster 0 holds the header alone: the rest of it can be rewritten.
        pwrite_all(fd, data + bytes(max(0, min(h.cluster_size, 4096) - len(data))), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def convert_to_qcow2(src: str | os.PathLike[str], dst: str | os.PathLike[str], cluster_size: int = DEFAULT_CLUSTER_SIZE) -> None:
    """Copy the disk `src` (raw or qcow2, with its backing chain) into a new
    standalone qcow2 image `dst`; all-zero clusters are not stored."""
    dst = os.fspath(dst)
    if os.path.lexists(dst):
        raise DiskError(f"{dst} already exists")
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.convert-{secrets.token_hex(4)}")
    with open_disk(src, readonly=True) as source:
        create_qcow2(tmp, size=source.size, cluster_size=cluster_size)
        try:
            with open_disk(tmp, fmt="qcow2") as out:
                _copy_data(source, out, cluster_size)
            if os.path.lexists(dst):
                raise DiskError(f"{dst} already exists")
            os.rename(tmp, dst)
        except OSError as e:
            raise DiskError(f"cannot write {dst}: {e.strerror or e}") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _copy_data(source, out, cluster_size: int) -> None:
    chunk = max(cluster_size, 4 << 20) // cluster_size * cluster_size
    buf = np.empty(chunk, np.uint8)
    # For a raw source only its allocated extents can hold data.
    if source.format == "raw":
        ranges = [(a // cluster_size * cluster_size, min(source.size, -(-b // cluster_size) * cluster_size)) for a, b in data_extents(source.fd, source.size)]
    else:
        ranges = [(0, source.size)]
    done = 0
    for a, b in ranges:
        a = max(a, done)
        pos = a
        while pos < b:
            n = min(chunk, b - pos)
            view = buf[:n]
            source.readinto(pos, [view])
            nclusters = -(-n // cluster_size)
            padded = np.zeros(nclusters * cluster_size, np.uint8)
            padded[:n] = view
            nonzero = padded.view(np.uint64).reshape(nclusters, -1).any(axis=1)
            for i, j in runs_of(nonzero):
                lo, hi = i * cluster_size, min(j * cluster_size, n)
                out.writefrom(pos + lo, [view[lo:hi]])
            pos += n
        done = max(done, b)
    out.flush()


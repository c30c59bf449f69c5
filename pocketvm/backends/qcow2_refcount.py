"""Refcounts and cluster allocation of a writable qcow2 image.

Every host cluster has a reference count, kept in refcount blocks that the
refcount table points to. A cluster with refcount 0 is free.

Crash safety comes from the order of writes. A cluster is never handed out
before its refcount 1 is on disk: clusters are *reserved* in batches (set
to refcount 1, the file extended to cover them, one fdatasync), then used
for data or tables without touching refcounts again. A kill -9 or a power
loss therefore leaves at most reserved-but-unused clusters with refcount 1
and no reference: leaked clusters, which `qemu-img check` reports and
repairs, never a cluster in use with refcount 0. A new refcount block is
written (with its own refcount) before the table entry that points to it;
a bigger refcount table is written and synced before the header points to
it. On a clean close the unused reservation is given back (refcount 0, the
file truncated when the tail is free), so a closed image has no leaks.

Clusters the guest frees (overwritten or discarded) keep their refcount 1
and go back into the reservation, but only after an fsync has made the L2
update that dropped them durable (`Qcow2Image.flush`); shared or
compressed clusters are decremented at that point instead.
"""

from __future__ import annotations

import os
import struct
from collections import deque

import numpy as np

from pocketvm.backends.disk import DiskError
from pocketvm.backends.qcow2_header import Header

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
_RT_RESERVED = 0x1FF
_DTYPES = {3: ">u1", 4: ">u2", 5: ">u4", 6: ">u8"}
# Bytes reserved at once: half of what the file already holds, within these
# bounds. Each reservation costs an fdatasync; reserved clusters take no
# space on the host until written (the file is only extended), so the one
# cost of a large reservation is what a crash may leave as leaked clusters.
_RESERVE_MIN = 8 << 20
_RESERVE_MAX = 256 << 20


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(28, "no progress writing")
        view = view[n:]
        offset += n


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes at `offset`, or fewer at the end of the file."""
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class Refcounts:
    def __init__(self, fd: int, path: str, header: Header, file_size: int, meta: set[int]):
        self.fd = fd
        self.path = path
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        if header.refcount_order not in _DTYPES:
            raise DiskError(f"{path}: refcounts of {1 << header.refcount_order} bits are not supported for writing (open it read-only)")
        self.dtype = np.dtype(_DTYPES[header.refcount_order])
        self.block_entries = self.cluster_size // self.dtype.itemsize
        self.block_bits = self.block_entries.bit_length() - 1
        self.table_offset = header.refcount_table_offset
        self.table_clusters = header.refcount_table_clusters
        self.meta = meta  # clusters holding metadata, shared with the image (never handed out)
        raw = pread_exact(fd, self.table_clusters * self.cluster_size, self.table_offset)
        self.table = np.frombuffer(raw, ">u8").astype(np.uint64)
        self.end = -(-file_size // self.cluster_size)  # first cluster past the file
        self._check_table(file_size)
        self.blocks: dict[int, np.ndarray] = {}
        self._dirty: dict[int, tuple[int, int]] = {}  # block index -> [lo, hi) entries to write
        self.reserved: deque[list[int]] = deque()  # [start, end) cluster ranges with refcount 1, unused
        self._free: deque[list[int]] | None = None  # refcount-0 ranges inside the file (scanned lazily)
        self._defer_table_writes = False

    def _corrupt(self, what: str) -> DiskError:
        return DiskError(f"{self.path}: corrupt qcow2 image: {what}")

    def _check_table(self, file_size: int) -> None:
        t = self.table
        if (t & _RT_RESERVED).any():
            raise self._corrupt("refcount table entry with reserved bits set")
        offs = t[t != 0]
        if len(offs) and (int(offs.max()) + self.cluster_size > file_size or int(offs.min()) < self.cluster_size):
            raise self._corrupt("a refcount block lies outside the file or over the header")
        clusters = (offs >> np.uint64(self.cluster_bits)).tolist()
        if len(set(clusters)) != len(clusters) or self.meta.intersection(clusters):
            raise self._corrupt("refcount blocks overlap each other or other metadata")
        self.meta.update(clusters)

    # --- refcount blocks ---------------------------------------------------------------

    def _block(self, index: int, create: bool) -> np.ndarray | None:
        arr = self.blocks.get(index)
        if arr is not None:
            return arr
        off = int(self.table[index]) if index < len(self.table) else 0
        if off:
            raw = pread_exact(self.fd, self.cluster_size, off)
            if len(raw) != self.cluster_size:
                raise self._corrupt(f"refcount block at {off:#x} is truncated")
            arr = np.frombuffer(raw, self.dtype).copy()
        elif create:
            arr = self._new_block(index)
        else:
            return None
        self.blocks[index] = arr
        return arr

    def _new_block(self, index: int) -> np.ndarray:
        """Place a new refcount block at the end of the file; it is written
        (with its own refcount) before the table entry that points to it."""
        if index >= len(self.table):
            self._grow_table(index)
            # Growing may have made this very block (for the new table's own refcounts).
            arr = self._block(index, create=False)
            if arr is not None:
                return arr
        c = self._take_end(1)
        arr = np.zeros(self.block_entries, self.dtype)
        self.blocks[index] = arr
        self.meta.add(c)
        if c >> self.block_bits == index:
            arr[c & (self.block_entries - 1)] = 1
        else:
            self._set(c, c + 1, 1)
            self.write_dirty()
        self._dirty.pop(index, None)
        pwrite_all(self.fd, arr.tobytes(), c << self.cluster_bits)
        self.table[index] = c << self.cluster_bits
        if not self._defer_table_writes:
            os.fdatasync(self.fd)  # the block before the entry that points to it (rare: once per block)
            pwrite_all(self.fd, struct.pack(">Q", c << self.cluster_bits), self.table_offset + index * 8)
        return arr

    def _grow_table(self, index: int) -> None:
        """A bigger refcount table at the end of the file; the header points
        to it only once it and its refcounts are durable."""
        entries = max(index + 1, 2 * len(self.table))
        k = -(-entries * 8 // self.cluster_size)
        if k * self.cluster_size > 8 << 20:
            raise DiskError(f"{self.path}: the refcount table would exceed 8 MiB (image too large)")
        start = self._take_end(k)
        old_offset, old_clusters = self.table_offset, self.table_clusters
        new = np.zeros(k * self.cluster_size // 8, np.uint64)
        new[: len(self.table)] = self.table
        self.table = new
        self._defer_table_writes = True
        try:
            self.meta.update(range(start, start + k))
            self._set(start, start + k, 1)
            self.write_dirty()
            pwrite_all(self.fd, self.table.astype(">u8").tobytes(), start << self.cluster_bits)
            os.fdatasync(self.fd)
            pwrite_all(self.fd, struct.pack(">QI", start << self.cluster_bits, k), 48)
            os.fdatasync(self.fd)
        finally:
            self._defer_table_writes = False
        self.table_offset, self.table_clusters = start << self.cluster_bits, k
        first = old_offset >> self.cluster_bits
        self.meta.difference_update(range(first, first + old_clusters))
        self._set(first, first + old_clusters, 0)
        self.write_dirty()
        self._note_free(first, first + old_clusters)

    def _set(self, start: int, end: int, value: int) -> None:
        """Set the refcounts of clusters [start, end) in memory (see write_dirty)."""
        c = start
        while c < end:
            index = c >> self.block_bits
            lo = c & (self.block_entries - 1)
            hi = min(self.block_entries, lo + end - c)
            arr = self._block(index, create=True)
            assert arr is not None
            arr[lo:hi] = value
            a, b = self._dirty.get(index, (lo, hi))
            self._dirty[index] = (min(a, lo), max(b, hi))
            c += hi - lo

    def write_dirty(self) -> None:
        while self._dirty:
            index, (lo, hi) = self._dirty.popitem()
            size = self.dtype.itemsize
            pwrite_all(self.fd, self.blocks[index][lo:hi].tobytes(), int(self.table[index]) + lo * size)

    def get(self, cluster: int) -> int:
        arr = self._block(cluster >> self.block_bits, create=False)
        return 0 if arr is None else int(arr[cluster & (self.block_entries - 1)])

    # --- allocation ------------------------------------------------------------------

    def _take_end(self, n: int) -> int:
        start = self.end
        self.end += n
        return start

    def _scan_free(self) -> list[list[int]]:
        """Refcount-0 clusters inside the file (left by an earlier session)."""
        free: list[list[int]] = []
        for index in range(-(-self.end // self.block_entries)):
            arr = self._block(index, create=False)
            base = index * self.block_entries
            n = min(self.block_entries, self.end - base)
            mask = np.ones(n, bool) if arr is None else arr[:n] == 0
            if base == 0:
                mask[0] = False  # the header
            for a, b in runs_of(mask):
                free.append([base + a, base + b])
        meta = self.meta
        out: list[list[int]] = []
        for a, b in free:  # never hand out a metadata cluster, even if its refcount says free
            c = a
            while c < b:
                if c in meta:
                    c += 1
                    continue
                d = c
                while d < b and d not in meta:
                    d += 1
                out.append([c, d])
                c = d
        return out

    def _note_free(self, start: int, end: int) -> None:
        if self._free is not None:
            self._free.append([start, end])

    def alloc(self, n: int) -> list[tuple[int, int]]:
        """n clusters, as (first cluster, count) ranges in order; contiguous when possible."""
        have = sum(b - a for a, b in self.reserved)
        if have < n:
            self._reserve(n - have)
        out = []
        while n:
            a, b = self.reserved[0]
            k = min(n, b - a)
            if out and out[-1][0] + out[-1][1] == a:
                out[-1] = (out[-1][0], out[-1][1] + k)
            else:
                out.append((a, k))
            if k == b - a:
                self.reserved.popleft()
            else:
                self.reserved[0][0] += k
            n -= k
        return out

    def _reserve(self, n: int) -> None:
        cs = self.cluster_size
        want = max(n, min(_RESERVE_MAX // cs, max(_RESERVE_MIN // cs, self.end // 2)), 1)
        if self._free is None:
            self._free = deque(self._scan_free())
        got: list[list[int]] = []
        while want and self._free:
            a, b = self._free[0]
            k = min(want, b - a)
            got.append([a, a + k])
            if k == b - a:
                self._free.popleft()
            else:
                self._free[0][0] += k
            want -= k
        if want:
            start = self._take_end(want)
            got.append([start, start + want])
        for a, b in got:
            self._set(a, b, 1)
        self.write_dirty()
        size = os.fstat(self.fd).st_size
        if size < self.end * cs:
            os.ftruncate(self.fd, self.end * cs)
        os.fdatasync(self.fd)
        self.reserved.extend(got)

    def give_back(self, clusters: list[int]) -> None:
        """Clusters with refcount 1 that nothing references any more (and
        durably so): reuse them."""
        for c in sorted(clusters):
            if self.reserved and self.reserved[-1][1] == c:
                self.reserved[-1][1] += 1
            else:
                self.reserved.append([c, c + 1])

    def decrement(self, clusters: list[int]) -> None:
        for c in clusters:
            index = c >> self.block_bits
            arr = self._block(index, create=False)
            i = c & (self.block_entries - 1)
            if arr is None or arr[i] == 0:
                continue  # already free: a corrupt count, leave it for qemu-img check
            self._set(c, c + 1, int(arr[i]) - 1)
            if arr[i] == 0:
                self._note_free(c, c + 1)
        self.write_dirty()

    def release(self) -> None:
        """Give the unused reservation back (refcount 0) and shrink the file
        if its tail is free; the caller syncs."""
        if not self.reserved:
            return
        for a, b in self.reserved:
            self._set(a, b, 0)
        self.write_dirty()
        ranges = sorted(self.reserved)
        self.reserved = deque()
        while ranges and ranges[-1][1] == self.end:
            self.end = ranges.pop()[0]
        for a, b in ranges:
            self._note_free(a, b)
        if os.fstat(self.fd).st_size > self.end * self.cluster_size:
            os.ftruncate(self.fd, self.end * self.cluster_size)


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in mask."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks] + 1, [idx[-1] + 1]))
    return list(zip(starts.tolist(), ends.tolist()))

"""qcow2 disk images (versions 2 and 3) with backing files.

The guest's disk is cut into clusters (64 KiB by default). A two-level
table maps each guest cluster: the L1 table (in memory for the whole
life of the image) points to L2 tables (read on first use, kept in an LRU
cache), whose entries say where the cluster's data is in the file, or that
it is all zeros, or compressed, or not allocated here (then it reads from
the backing file, or as zeros without one).

Reads and writes work on whole runs of clusters: consecutive clusters
that are contiguous in the file move with one preadv/pwritev straight
between the file and the caller's buffers (views of guest RAM), so the
cost per request is a few Python operations per cluster, not per sector.

Writes to an unallocated, zero, compressed or shared cluster allocate a
new one (see `qcow2_refcount` for the order that keeps a killed process
from corrupting the image): the data (with the untouched rest of the
cluster copied from below) is written first, then the L2 entry; a new L2
table is written and synced before the L1 entry that points to it.
Metadata is written through, in that order, and never cached dirty.

Backing files are always opened read-only, whatever their format: writes
go to the top image only. Every offset a table gives is checked before it
is used: a corrupt or hostile image gives a one-line DiskError, never a
write through a bad pointer.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import numpy as np

from pocketvm.backends import qcow2_header as H
from pocketvm.backends.disk import _IOV_MAX, SECTOR_SIZE, Buffer, DiskError, _advance, copy_file, open_locked
from pocketvm.backends.qcow2_refcount import OFFSET_MASK, Refcounts, pread_exact, pwrite_all

log = logging.getLogger(__name__)

COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
_L1_RESERVED = 0x7F00_0000_0000_01FF
_L2_RESERVED = 0x3F00_0000_0000_01FE  # of a standard (not compressed) entry
_L2_CACHE_BYTES = 32 << 20
MAX_CHAIN = 64  # backing files below one image

_DATA, _ZERO, _BACKING, _COMPRESSED = range(4)


class IoVec:
    """A list of buffers addressed as one byte range."""

    def __init__(self, views: Sequence[memoryview]):
        self.views = [v for v in views if len(v)]
        self.starts = list(accumulate((len(v) for v in self.views), initial=0))
        self.total = self.starts[-1]

    def slice(self, start: int, length: int) -> list[memoryview]:
        out = []
        i = bisect.bisect_right(self.starts, start) - 1
        while length > 0:
            v = self.views[i]
            off = start - self.starts[i]
            n = min(len(v) - off, length)
            out.append(v[off : off + n])
            start += n
            length -= n
            i += 1
        return out


def _views(buffers: Sequence[Buffer]) -> list[memoryview]:
    return [m for m in (memoryview(b).cast("B") for b in buffers) if len(m)]


def zero_fill(views: Sequence[memoryview]) -> None:
    for v in views:
        np.frombuffer(v, np.uint8)[:] = 0


def preadv_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill `views` from `offset`; returns the bytes read (fewer only at end of file)."""
    done = 0
    while views:
        n = os.preadv(fd, views[:_IOV_MAX], offset)
        if n == 0:
            break
        done += n
        offset += n
        views = _advance(views, n)
    return done


def pwritev_all(fd: int, views: list[memoryview], offset: int) -> None:
    while views:
        n = os.pwritev(fd, views[:_IOV_MAX], offset)
        if n <= 0:
            raise OSError(28, "no progress writing")
        offset += n
        views = _advance(views, n)


def _any_in(values: np.ndarray, members: set[int]) -> bool:
    """Whether any of `values` is in `members` (np.isin, without the
    numpy.ma import that np.isin/np.unique pay on first use)."""
    table = np.sort(np.fromiter(members, np.uint64, len(members)))
    if not len(values) or not len(table):
        return False
    pos = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return bool((table[pos] == values).any())


class Qcow2Image:
    """A qcow2 image with the interface of `disk.DiskImage`."""

    format = "qcow2"

    def __init__(
        self, path: str | os.PathLike[str], readonly: bool = False, *, lock: bool = True,
        _below: tuple[tuple[int, int], ...] = (),
    ):  # fmt: skip
        self.path = os.fspath(path)
        self.readonly = readonly
        self.fd = -1
        self.backing: Any = None
        self._refs: Refcounts | None = None
        self._lock = lock
        self.fd = open_locked(self.path, readonly, lock)
        try:
            self._open(_below)
        except OSError as e:
            self.close()
            raise DiskError(f"cannot read disk image {self.path}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    # --- opening -------------------------------------------------------------------------

    def _open(self, below: tuple[tuple[int, int], ...]) -> None:
        st = os.fstat(self.fd)
        self._file_size = st.st_size
        first = pread_exact(self.fd, H._V2.size, 0)
        bits = struct.unpack_from(">I", first, 20)[0] if len(first) >= 24 else 16
        h = H.parse(pread_exact(self.fd, 1 << min(max(bits, H.MIN_CLUSTER_BITS), H.MAX_CLUSTER_BITS), 0), st.st_size, self.path)
        self.header = h
        if not self.readonly:
            if h.incompatible & H.INCOMPAT_CORRUPT:
                raise DiskError(f"{self.path}: the image is marked corrupt; repair it with `qemu-img check -r all` first")
            if h.incompatible & H.INCOMPAT_DIRTY:
                raise DiskError(f"{self.path}: the image was not closed cleanly; repair it with `qemu-img check -r all` first")
            if h.nb_snapshots:
                raise DiskError(f"{self.path}: the image has internal snapshots; pocketvm opens such images only read-only")
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.l2_entries = h.l2_entries
        self._l1_shift = h.cluster_bits + self.l2_entries.bit_length() - 1
        self.size = h.size
        self._meta: set[int] = {0}
        self._l1 = self._load_l1(h)
        self._l2_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._l2_cache_max = max(16, _L2_CACHE_BYTES // self.cluster_size)
        self._csize_shift = 62 - (h.cluster_bits - 8)
        self._last_compressed: tuple[int, bytes] = (-1, b"")
        self._pending_give_back: list[int] = []
        self._pending_decrement: list[int] = []
        self._written = False  # since the last _settle: a clean close of an unwritten image writes nothing
        if not self.readonly:
            self._refs = Refcounts(self.fd, self.path, h, st.st_size, self._meta)
        self.supports_discard = not self.readonly
        if h.backing_file:
            self._open_backing(h, below + ((st.st_dev, st.st_ino),))
        if not self.readonly and h.autoclear:
            # Bitmaps and the like that this writer would not keep up to date:
            # declare them stale (the first write, once everything opened).
            h.autoclear = 0
            pwrite_all(self.fd, struct.pack(">Q", 0), 88)
            self._written = True

    def _load_l1(self, h: H.Header) -> np.ndarray:
        cs = self.cluster_size
        l1 = np.frombuffer(pread_exact(self.fd, h.l1_size * 8, h.l1_offset), ">u8").astype(np.uint64)
        first_l1, n_l1 = h.l1_offset // cs, -(-h.l1_size * 8 // cs)
        first_rt = h.refcount_table_offset // cs
        self._meta.update(range(first_l1, first_l1 + n_l1))
        self._meta.update(range(first_rt, first_rt + h.refcount_table_clusters))
        if (l1 & np.uint64(_L1_RESERVED)).any():
            raise self._corrupt("L1 entry with reserved bits set")
        offs = l1 & np.uint64(OFFSET_MASK)
        offs = offs[offs != 0]
        if len(offs) and int(offs.max()) + cs > self._file_size:
            raise self._corrupt("an L1 entry points past the end of the file")
        clusters = offs >> np.uint64(h.cluster_bits)
        ordered = np.sort(clusters)
        if (ordered[1:] == ordered[:-1]).any():
            raise self._corrupt("two L1 entries share an L2 table")
        if _any_in(clusters, self._meta):
            raise self._corrupt("an L1 entry points at the header or another table")
        if not self.readonly:  # only a writer needs to know every metadata cluster
            self._meta.update(clusters.tolist())
        return l1

    def _open_backing(self, h: H.Header, below: tuple[tuple[int, int], ...]) -> None:
        from pocketvm.backends.open_disk import open_disk

        name = h.backing_file or ""
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DiskError(f"{self.path}: backing file {name} not found") from None
        except OSError as e:
            raise DiskError(f"{self.path}: backing file {name}: {e.strerror}") from None
        if (st.st_dev, st.st_ino) in below:
            raise DiskError(f"{self.path}: the backing chain loops back through {name}")
        if len(below) > MAX_CHAIN:
            raise DiskError(f"{self.path}: the backing chain is deeper than {MAX_CHAIN} images")
        fmt = h.backing_format
        if fmt not in (None, "raw", "qcow2"):
            raise DiskError(f"{self.path}: backing file {name} has format {fmt!r} (pocketvm reads raw and qcow2)")
        self.backing = open_disk(path, readonly=True, fmt=fmt, lock=self._lock, _below=below)

    def _corrupt(self, what: str) -> DiskError:
        return DiskError(f"{self.path}: corrupt qcow2 image: {what}")

    # --- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            if self._refs is not None:
                try:
                    self._settle()
                except (OSError, DiskError) as e:
                    log.error("closing %s: %s", self.path, e)
            os.close(self.fd)  # also drops the flock
            self.fd = -1
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    def chain(self) -> list[Any]:
        """This image and its backing files, top first."""
        out: list[Any] = [self]
        while getattr(out[-1], "backing", None) is not None:
            out.append(out[-1].backing)
        return out

    # --- L2 tables -------------------------------------------------------------------------

    def _l2(self, l1i: int) -> np.ndarray | None:
        e = int(self._l1[l1i])
        off = e & OFFSET_MASK
        if not off:
            return None
        table = self._l2_cache.get(off)
        if table is not None:
            self._l2_cache.move_to_end(off)
            return table
        raw = pread_exact(self.fd, self.cluster_size, off)
        if len(raw) != self.cluster_size:
            raise self._corrupt(f"L2 table at {off:#x} is truncated")
        table = np.frombuffer(raw, ">u8").astype(np.uint64)
        self._check_l2(table, off)
        self._cache_l2(off, table)
        return table

    def _cache_l2(self, off: int, table: np.ndarray) -> None:
        self._l2_cache[off] = table
        while len(self._l2_cache) > self._l2_cache_max:
            self._l2_cache.popitem(last=False)

    def _check_l2(self, t: np.ndarray, off: int) -> None:
        comp = (t & np.uint64(COMPRESSED)) != 0
        std = ~comp
        host = t & np.uint64(OFFSET_MASK)
        where = f"L2 table at {off:#x}"
        if (std & ((t & np.uint64(_L2_RESERVED)) != 0)).any():
            raise self._corrupt(f"{where} has an entry with reserved bits set")
        used = std & (host != 0)
        if used.any():
            hosts = host[used]
            if (hosts & np.uint64(self.cluster_size - 1)).any():
                raise self._corrupt(f"{where} has an entry that is not cluster aligned")
            if int(hosts.max()) >= self._file_size:
                raise self._corrupt(f"{where} points past the end of the file")
            if int(hosts.min()) < self.cluster_size:
                raise self._corrupt(f"{where} points into the header")
            if not self.readonly:
                if _any_in(hosts >> np.uint64(self.cluster_bits), self._meta):
                    raise self._corrupt(f"{where} points into metadata")
        if comp.any():
            coff = t[comp] & np.uint64((1 << self._csize_shift) - 1)
            if int(coff.max()) >= self._file_size or int(coff.min()) < self.cluster_size:
                raise self._corrupt(f"{where} has a compressed cluster outside the file")

    def _l2_writable(self, l1i: int) -> tuple[np.ndarray, int]:
        """The L2 table for L1 entry `l1i`, allocated (all unallocated) if needed."""
        e = int(self._l1[l1i])
        off = e & OFFSET_MASK
        if off:
            if not e & COPIED:
                raise self._corrupt("an L2 table is shared (L1 entry without the copied flag); run `qemu-img check -r all`")
            table = self._l2(l1i)
            assert table is not None
            return table, off
        assert self._refs is not None
        [(c, _)] = self._refs.alloc(1)
        off = c << self.cluster_bits
        table = np.zeros(self.l2_entries, np.uint64)
        pwrite_all(self.fd, bytes(self.cluster_size), off)
        # The cluster may have held guest data before: the empty table must be
        # on disk before the L1 entry that makes it a table (once per 512 MiB of disk).
        os.fdatasync(self.fd)
        pwrite_all(self.fd, struct.pack(">Q", off | COPIED), self.header.l1_offset + l1i * 8)
        self._l1[l1i] = off | COPIED
        self._meta.add(c)
        self._file_size = max(self._file_size, off + self.cluster_size)
        self._cache_l2(off, table)
        return table, off

    # --- reading ------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskError(f"range {offset:#x}+{length:#x} is beyond the end of {self.path} ({self.size:#x})")

    def _check_writable(self) -> None:
        if self.readonly:
            raise DiskError(f"disk image {self.path} is read-only")

    def readinto(self, offset: int, buffers: Sequence[Buffer]) -> None:
        """Fill `buffers` in order with the guest bytes at `offset`."""
        iov = IoVec(_views(buffers))
        self._check_range(offset, iov.total)
        try:
            self._read(offset, iov.total, iov)
        except OSError as e:
            raise DiskError(f"read error on {self.path} at {offset:#x}: {e.strerror or e}") from None

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, [buf])
        return bytes(buf)

    def _segments(self, offset: int, total: int) -> list[list[int]]:
        """[kind, position in the request, length, host offset or L2 entry],
        adjacent pieces of the same kind (and contiguous in the file) merged."""
        cb, cs = self.cluster_bits, self.cluster_size
        segs: list[list[int]] = []
        g, end = offset, offset + total

        def add(kind: int, n: int, host: int) -> None:
            if segs and kind != _COMPRESSED:
                last = segs[-1]
                if last[0] == kind and (kind != _DATA or last[3] + last[2] == host):
                    last[2] += n
                    return
            segs.append([kind, g - offset, n, host])

        while g < end:
            l1i = g >> self._l1_shift
            span_end = min(end, (l1i + 1) << self._l1_shift)
            table = self._l2(l1i) if l1i < len(self._l1) else None
            if table is None:
                add(_BACKING, span_end - g, 0)
                g = span_end
                continue
            first = (g >> cb) & (self.l2_entries - 1)
            last = ((span_end - 1) >> cb) & (self.l2_entries - 1)
            for e in table[first : last + 1].tolist():
                n = min(span_end, ((g >> cb) + 1) << cb) - g
                if e & COMPRESSED:
                    add(_COMPRESSED, n, e)
                elif e & ZERO:
                    add(_ZERO, n, 0)
                elif e & OFFSET_MASK:
                    add(_DATA, n, (e & OFFSET_MASK) + (g & (cs - 1)))
                else:
                    add(_BACKING, n, 0)
                g += n
        return segs

    def _read(self, offset: int, total: int, iov: IoVec) -> None:
        for kind, pos, n, host in self._segments(offset, total):
            views = iov.slice(pos, n)
            if kind == _DATA:
                got = preadv_all(self.fd, views, host)
                if got < n:  # past the end of the file: zeros
                    zero_fill(IoVec(views).slice(got, n - got))
            elif kind == _ZERO:
                zero_fill(views)
            elif kind == _BACKING:
                self._read_backing(offset + pos, n, views)
            else:
                data = self._decompress(host)
                within = (offset + pos) & (self.cluster_size - 1)
                src = memoryview(data)[within : within + n]
                for v in views:
                    v[:] = src[: len(v)]
                    src = src[len(v) :]

    def _read_backing(self, g: int, n: int, views: list[memoryview]) -> None:
        b = self.backing
        m = 0 if b is None else max(0, min(n, b.size - g))
        if m:
            iov = IoVec(views)
            b.readinto(g, iov.slice(0, m))
            if m < n:
                zero_fill(iov.slice(m, n - m))
        else:
            zero_fill(views)

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        coff = entry & ((1 << self._csize_shift) - 1)
        sectors = ((entry >> self._csize_shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return coff, sectors * 512 - (coff & 511)

    def _decompress(self, entry: int) -> bytes:
        if self._last_compressed[0] == entry:
            return self._last_compressed[1]
        coff, csize = self._compressed_range(entry)
        raw = pread_exact(self.fd, csize, coff)
        try:
            data = zlib.decompressobj(-12).decompress(raw, self.cluster_size)
        except zlib.error:
            data = b""
        if len(data) != self.cluster_size:
            raise self._corrupt(f"compressed cluster at {coff:#x} does not inflate to a cluster")
        self._last_compressed = (entry, data)
        return data

    # --- writing ------------------------------------------------------------------------

    def writefrom(self, offset: int, buffers: Sequence[Buffer]) -> None:
        """Write the concatenation of `buffers` at guest offset `offset`."""
        self._check_writable()
        iov = IoVec(_views(buffers))
        self._check_range(offset, iov.total)
        self._written = True
        try:
            self._write(offset, iov)
        except OSError as e:
            raise DiskError(f"write error on {self.path} at {offset:#x}: {e.strerror or e}") from None

    def write(self, offset: int, data: Buffer) -> None:
        self.writefrom(offset, [data])

    def _write(self, offset: int, iov: IoVec) -> None:
        pos = 0
        while pos < iov.total:
            g = offset + pos
            n = min(iov.total - pos, (((g >> self._l1_shift) + 1) << self._l1_shift) - g)
            self._write_span(g, n, iov, pos)
            pos += n

    def _write_span(self, g: int, n: int, iov: IoVec, pos: int) -> None:
        """Write n bytes at guest offset g, all under one L2 table; the bytes
        are iov[pos:pos+n]."""
        cb, cs = self.cluster_bits, self.cluster_size
        table, table_off = self._l2_writable(g >> self._l1_shift)
        c0 = g >> cb
        first = c0 & (self.l2_entries - 1)
        count = ((g + n - 1) >> cb) - c0 + 1
        entries = table[first : first + count].tolist()
        inplace = [bool(e & COPIED) and not e & (COMPRESSED | ZERO) and bool(e & OFFSET_MASK) for e in entries]
        new: dict[int, int] = {}
        i = 0
        while i < count:
            j = i + 1
            while j < count and inplace[j] == inplace[i]:
                j += 1
            if inplace[i]:
                k = i
                while k < j:  # runs contiguous in the file: one pwritev each
                    host = entries[k] & OFFSET_MASK
                    m = k + 1
                    while m < j and entries[m] & OFFSET_MASK == host + (m - k) * cs:
                        m += 1
                    a, b = max(g, (c0 + k) << cb), min(g + n, (c0 + m) << cb)
                    pwritev_all(self.fd, iov.slice(pos + a - g, b - a), host + a - ((c0 + k) << cb))
                    k = m
            else:
                self._write_new_clusters(g, n, iov, pos, c0 + i, c0 + j, new, first - c0)
            i = j
        if new:
            lo, hi = min(new), max(new) + 1
            updated = table[lo:hi].copy()
            for k, e in new.items():
                updated[k - lo] = e
            old = table[lo:hi].tolist()
            pwrite_all(self.fd, updated.astype(">u8").tobytes(), table_off + lo * 8)
            table[lo:hi] = updated
            self._forget([old[k - lo] for k in new])

    def _write_new_clusters(
        self, g: int, n: int, iov: IoVec, pos: int, first: int, stop: int, new: dict[int, int], to_index: int
    ) -> None:
        """Guest clusters [first, stop) get new host clusters holding the
        write (n bytes at g, iov[pos:]) and, around it, the part of the
        cluster it leaves untouched; their new L2 entries go into `new`, by
        table index (guest cluster + `to_index`)."""
        cb, cs = self.cluster_bits, self.cluster_size
        start, end = first << cb, stop << cb
        a, b = max(g, start), min(g + n, end)
        parts: list[memoryview] = []
        if a > start:
            parts.append(memoryview(self._read_guest(start, a - start)))
        parts += iov.slice(pos + a - g, b - a)
        if b < end:
            parts.append(memoryview(self._read_guest(b, end - b)))
        whole = IoVec(parts)
        assert self._refs is not None
        done = 0
        k = first
        for hc, hn in self._refs.alloc(stop - first):
            pwritev_all(self.fd, whole.slice(done, hn * cs), hc << cb)
            for t in range(hn):
                new[k + t + to_index] = ((hc + t) << cb) | COPIED
            k += hn
            done += hn * cs
            self._file_size = max(self._file_size, (hc + hn) << cb)

    def _read_guest(self, offset: int, length: int) -> bytearray:
        """The current guest bytes (past the virtual size: zeros)."""
        buf = bytearray(length)
        n = max(0, min(length, self.size - offset))
        if n:
            self._read(offset, n, IoVec([memoryview(buf)[:n]]))
        return buf

    def _forget(self, entries: list[int]) -> None:
        """Host clusters that old L2 entries held, freed once the new entries are durable."""
        for e in entries:
            if e & COMPRESSED:
                coff, csize = self._compressed_range(e)
                first = coff >> self.cluster_bits
                last = ((coff & ~511) + ((e >> self._csize_shift) & ((1 << (self.cluster_bits - 8)) - 1)) * 512 + 511) >> self.cluster_bits
                self._pending_decrement.extend(range(first, last + 1))
            elif e & OFFSET_MASK:
                c = (e & OFFSET_MASK) >> self.cluster_bits
                (self._pending_give_back if e & COPIED else self._pending_decrement).append(c)

    # --- zeroes, discard, flush ----------------------------------------------------------------

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Zero a range: whole clusters become zero clusters (their space
        is freed), partial ones are written."""
        self._check_writable()
        self._check_range(offset, length)
        self._written = True
        cs = self.cluster_size
        end = offset + length
        a = min(-(-offset // cs) * cs, end)
        b = max(end // cs * cs, a)
        try:
            if a > offset:
                self._write(offset, IoVec([memoryview(bytes(a - offset))]))
            if b > a:
                self._zero_clusters(a, b)
            if end > b:
                self._write(b, IoVec([memoryview(bytes(end - b))]))
        except OSError as e:
            raise DiskError(f"write zeroes on {self.path} failed: {e.strerror or e}") from None

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; it then reads as zeros (as on a raw image)."""
        self.write_zeroes(offset, length, unmap=True)

    def _zero_clusters(self, a: int, b: int) -> None:
        if self.backing is not None and self.header.version == 2:
            # No zero flag in version 2: only real zeros hide the backing file.
            chunk = memoryview(bytes(min(b - a, 1 << 20)))
            while a < b:
                n = min(len(chunk), b - a)
                self._write(a, IoVec([chunk[:n]]))
                a += n
            return
        value = ZERO if self.backing is not None else 0
        cb = self.cluster_bits
        while a < b:
            l1i = a >> self._l1_shift
            span_end = min(b, (l1i + 1) << self._l1_shift)
            if self._l1[l1i] or value:
                table, table_off = self._l2_writable(l1i)
                lo = (a >> cb) & (self.l2_entries - 1)
                hi = lo + ((span_end - a) >> cb)
                old = table[lo:hi].tolist()
                if any(e != value for e in old):
                    updated = np.full(hi - lo, value, np.uint64)
                    pwrite_all(self.fd, updated.astype(">u8").tobytes(), table_off + lo * 8)
                    table[lo:hi] = updated
                    self._forget(old)
            a = span_end

    def flush(self) -> None:
        """Make every completed write durable (the guest's FLUSH)."""
        if self.readonly:
            return
        try:
            os.fsync(self.fd)
            self._reuse_freed()
        except OSError as e:
            raise DiskError(f"flush of {self.path} failed: {e.strerror or e}") from None

    def _reuse_freed(self) -> None:
        """After an fsync: the clusters dropped by durable L2 updates can be reused."""
        assert self._refs is not None
        if self._pending_give_back:
            self._refs.give_back(self._pending_give_back)
            self._pending_give_back = []
        if self._pending_decrement:
            self._refs.decrement(self._pending_decrement)
            self._pending_decrement = []

    def _settle(self) -> None:
        """Leave the file as a clean image: nothing reserved, nothing leaked."""
        assert self._refs is not None
        if not self._written:
            return
        os.fsync(self.fd)
        self._reuse_freed()
        self._refs.release()
        os.fsync(self.fd)
        self._file_size = os.fstat(self.fd).st_size
        self._written = False

    # --- copies --------------------------------------------------------------------------

    def copy_to(self, dest: str | os.PathLike[str]) -> str:
        """Copy this image file (not its backing files) to a new file `dest`,
        as a clean image; returns "reflink" or "copy"."""
        if self._refs is not None:
            try:
                self._settle()
            except OSError as e:
                raise DiskError(f"flush of {self.path} failed: {e.strerror or e}") from None
        return copy_file(self.fd, self.path, dest)

    def allocated_clusters(self) -> int:
        """Guest clusters this image itself maps (data, zero or compressed)."""
        count = 0
        for l1i in range(len(self._l1)):
            table = self._l2(l1i)
            if table is not None:
                count += int(np.count_nonzero(table))
        return count

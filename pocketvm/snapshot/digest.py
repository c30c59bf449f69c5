"""Content digests of large, mostly-zero files (RAM images, disk images).

A snapshot's RAM file and disk copies are sparse: zero blocks are holes.
Hashing every byte of a 512 MiB RAM file that holds 50 MiB of data would
cost more than the rest of a restore, so the digest only looks at non-zero
4 KiB blocks, which makes it depend on the content alone (not on which
blocks the filesystem happens to allocate: a non-sparse copy of the same
bytes has the same digest):

    H( for each maximal run of consecutive non-zero blocks, in order:
           the run's bytes || u64le(first block) || u64le(block count) )

The trailer after each run (rather than a header) lets the digest be
computed in one streaming pass. A final partial block counts as if padded
with zeros; the file size is recorded and checked separately.

A digest is written "ALGORITHM:hex", and ALGORITHM names H:

    xxh3-128-nz4k   XXH3 128-bit (what new snapshots use)
    sha256-nz4k     SHA-256 (snapshots saved before XXH3; still verified)

The digests catch truncated, damaged or edited files. They are not a
signature: whoever can edit a file can also re-seal the manifest, so a
cryptographic hash would buy nothing, and XXH3 is several times faster
than SHA-256, which restoring a snapshot waits for. A verifier hashes with
the algorithm the expected digest names (`algorithm_of`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Protocol

import numpy as np
import xxhash

BLOCK = 4096
ALGORITHM = "xxh3-128-nz4k"  # for new digests
_TRAILER = struct.Struct("<QQ")
_SCAN_CHUNK = 16 << 20  # bytes inspected per numpy pass (bounds the temporary arrays)


class _Hash(Protocol):
    def update(self, data: np.ndarray | memoryview | bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


_HASHES: dict[str, Callable[[], _Hash]] = {
    "xxh3-128-nz4k": xxhash.xxh3_128,
    "sha256-nz4k": hashlib.sha256,
}


def _unknown(algorithm: str) -> ValueError:
    return ValueError(
        f"checksum of unknown kind {algorithm[:40]!r} (this pocketvm knows {', '.join(_HASHES)}; saved by a newer one?)"
    )


def algorithm_of(digest: str) -> str:
    """The algorithm a digest string names; ValueError (one line) if unknown."""
    algorithm = digest.partition(":")[0]
    if algorithm not in _HASHES or algorithm == digest:
        raise _unknown(algorithm)
    return algorithm


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of True in a bool array."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks] + 1, [idx[-1] + 1]))
    return list(zip(starts.tolist(), ends.tolist()))


def nonzero_runs(data: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of non-zero BLOCK-sized blocks in `data`.

    `data` is a uint8 array whose length is a multiple of BLOCK.
    """
    nblocks = len(data) // BLOCK
    if nblocks == 0:
        return []
    # max() over each block's words: a fast reduction that is 0 only for a zero block.
    return true_runs(data.view(np.uint64).reshape(nblocks, BLOCK // 8).max(axis=1) != 0)


class ContentDigest:
    """Streaming digest; feed block-aligned pieces in increasing address order."""

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        if algorithm not in _HASHES:
            raise _unknown(algorithm)
        self.algorithm = algorithm
        self._h = _HASHES[algorithm]()
        self._run_start = -1  # first block of the open run, -1 = none
        self._run_end = -1  # block after its last block
        self.data_bytes = 0  # bytes in non-zero blocks seen so far

    def _close_run(self) -> None:
        if self._run_start >= 0:
            self._h.update(_TRAILER.pack(self._run_start, self._run_end - self._run_start))
            self._run_start = self._run_end = -1

    def add_run(self, first_block: int, data: np.ndarray | memoryview | bytes) -> None:
        """Feed a run of blocks already known to be non-zero, starting at `first_block`."""
        nblocks = len(data) // BLOCK
        if first_block != self._run_end:
            self._close_run()
            self._run_start = first_block
        self._h.update(data)
        self._run_end = first_block + nblocks
        self.data_bytes += nblocks * BLOCK

    def update(self, first_block: int, data: np.ndarray) -> list[tuple[int, int]]:
        """Feed `data` (uint8, a multiple of BLOCK long) that starts at block
        `first_block`; returns its non-zero runs (relative to `data`)."""
        runs = nonzero_runs(data)
        for a, b in runs:
            self.add_run(first_block + a, data[a * BLOCK : b * BLOCK])
        return runs

    def hexdigest(self) -> str:
        self._close_run()
        return f"{self.algorithm}:{self._h.hexdigest()}"


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Allocated byte ranges of an open file, widened to BLOCK boundaries.

    Falls back to the whole file when the filesystem cannot report holes.
    """
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            a = start // BLOCK * BLOCK
            b = min(-(-end // BLOCK) * BLOCK, -(-size // BLOCK) * BLOCK)
            if extents and a <= extents[-1][1]:
                extents[-1] = (extents[-1][0], max(b, extents[-1][1]))
            else:
                extents.append((a, b))
            pos = end
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        return [(0, -(-size // BLOCK) * BLOCK)] if size else []
    return extents


def digest_fd(fd: int, size: int, algorithm: str = ALGORITHM) -> tuple[str, list[tuple[int, int]]]:
    """(digest, data extents) of the first `size` bytes of an open file.

    Reads with pread into one buffer rather than through a mapping: copying
    from the page cache is much cheaper than faulting in every page.
    """
    d = ContentDigest(algorithm)
    extents = data_extents(fd, size)
    buf = np.empty(_SCAN_CHUNK, dtype=np.uint8)
    view = memoryview(buf)
    for start, end in extents:
        pos = start
        while pos < end:
            n = min(end - pos, _SCAN_CHUNK)
            got = 0
            while got < n:
                k = os.preadv(fd, [view[got:n]], pos + got)
                if k == 0:  # end of file inside the last block: zero padding
                    buf[got:n] = 0
                    break
                got += k
            d.update(pos // BLOCK, buf[:n])
            pos += n
    return d.hexdigest(), extents


def digest_file(path: str | os.PathLike[str], algorithm: str = ALGORITHM) -> tuple[str, int]:
    """(digest, size) of a file, reading only its allocated extents."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return digest_fd(fd, size, algorithm)[0], size
    finally:
        os.close(fd)

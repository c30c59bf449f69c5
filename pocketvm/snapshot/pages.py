"""Which pages of guest RAM can hold data, without touching the others.

Reading a page of an anonymous mapping that the guest never touched makes
the kernel map the zero page for it: cheap once, but a 512 MiB guest has
131072 such pages and faulting them all in costs far more than scanning the
few dozen MiB the guest really uses. Linux tells a process, per page of its
own address space, whether the page is present in memory or swapped out
(/proc/self/pagemap, bits 63 and 62; readable without privileges). A page
that is neither was never written and reads as zero: for anonymous RAM, or
for RAM mapped from a snapshot file, except where that file has data (the
caller adds those ranges).

Where pagemap is unavailable every page is a candidate: slower, still correct.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from pocketvm.snapshot.digest import BLOCK

_PRESENT_OR_SWAPPED = np.uint64(3 << 62)


def candidate_blocks(buf: np.ndarray) -> np.ndarray:
    """One bool per BLOCK of `buf` (uint8, page aligned): False = certainly zero."""
    nblocks = len(buf) // BLOCK
    everything = np.ones(nblocks, dtype=bool)
    page = mmap.PAGESIZE
    addr = int(buf.__array_interface__["data"][0])
    if page % BLOCK or addr % page or len(buf) % page:
        return everything
    npages = len(buf) // page
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return everything
    try:
        data = os.pread(fd, npages * 8, (addr // page) * 8)
    except OSError:
        return everything
    finally:
        os.close(fd)
    if len(data) != npages * 8:
        return everything
    entries = np.frombuffer(data, dtype=np.uint64)
    used = (entries & _PRESENT_OR_SWAPPED) != 0
    return np.repeat(used, page // BLOCK)


def mark_ranges(cand: np.ndarray, byte_ranges: list[tuple[int, int]]) -> None:
    """Also consider the blocks covering these byte ranges."""
    for start, end in byte_ranges:
        cand[start // BLOCK : -(-end // BLOCK)] = True

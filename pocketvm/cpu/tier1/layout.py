"""The translation table shared by the interpreter and the host side.

One int64 numpy array, so the numba core takes it as a single argument:

    [JT_MODE]        0 = off, 1 = on, 2 = every block (testing: threshold 1,
                     and run() returns as soon as a block is queued)
    [JT_THRESHOLD]   entries of a block before it is queued
    [JT_QLEN]        blocks queued for translation (their keys at JT_QUEUE)
    [JT_STALE]       blocks found stale at entry (their code had changed)
    [JT_NATIVE]      instructions retired in translated code
    [JT_CALLS]       calls of translated blocks
    [JT_UPGRADE]     instructions run from a translated block's entry after
                     which it is queued again, to be compiled better (0 = never)
    [JT_FP_ENTRY]    address of the FPU's C entry (`fp_helper`), which
                     translated code loads from here: no host address is
                     written into translated code, so it can be cached
    [JT_LEFT]        mode 2: run() stopped early to have a block translated;
                     budget it had left (0 = it did not)
    [JT_RESUME]      ...and instructions to its next look at interrupts, which
                     the next run() call keeps, so interrupts come exactly
                     where they would without the early stop
    [JT_KEY + i]     key of the block in slot i: its RAM offset * 2 + 1 if its
                     loads and stores are translated (paging), -1 = empty
    [JT_FN + i]      its native entry address, 0 = nothing to run there
    [JT_HOT + i]     entries counted while the slot had no block for them,
                     then instructions run from the block installed there

Slots are direct mapped by a hash of the RAM offset; a new block simply
replaces the one in its slot.
"""

from __future__ import annotations

import numpy as np

from pocketvm.cpu.jit import core_jit

JT_MODE = 0
JT_THRESHOLD = 1
JT_QLEN = 2
JT_STALE = 3
JT_LEFT = 4
JT_RESUME = 5
JT_NATIVE = 6
JT_CALLS = 7
JT_FP_ENTRY = 8
JT_UPGRADE = 9
JT_QUEUE = 10
QUEUE_SIZE = 64
SLOT_BITS = 15
SLOTS = 1 << SLOT_BITS
JT_KEY = JT_QUEUE + QUEUE_SIZE
JT_FN = JT_KEY + SLOTS
JT_HOT = JT_FN + SLOTS
TABLE_SIZE = JT_HOT + SLOTS

MODE_OFF = 0
MODE_ON = 1
MODE_ALL = 2

QUEUED = -(1 << 40)  # a hot count that cannot reach the threshold again before the slot is filled


def new_table(mode: int = MODE_OFF, threshold: int = 50) -> np.ndarray:
    table = np.zeros(TABLE_SIZE, dtype=np.int64)
    table[JT_MODE] = mode
    table[JT_THRESHOLD] = 1 if mode == MODE_ALL else threshold
    table[JT_KEY : JT_KEY + SLOTS] = -1
    return table


@core_jit(inline="always")
def slot_of(off):
    """Slot index (0..SLOTS-1) of a RAM offset."""
    return ((off >> 1) ^ (off >> (SLOT_BITS + 1))) & (SLOTS - 1)


def block_key(off: int, paged: bool) -> int:
    return off * 2 + (1 if paged else 0)


def slot_index(off: int) -> int:
    """`slot_of` for the host side."""
    return ((off >> 1) ^ (off >> (SLOT_BITS + 1))) & (SLOTS - 1)


def slot_indices(offs: np.ndarray) -> np.ndarray:
    """`slot_index` of an array of RAM offsets."""
    return ((offs >> 1) ^ (offs >> (SLOT_BITS + 1))) & (SLOTS - 1)

"""The translation table shared by the interpreter and the host side.

One int64 numpy array, so the numba core takes it as a single argument:

    [JT_MODE]        0 = off, 1 = on, 2 = every block (testing: threshold 1,
                     and run() returns as soon as a block is queued)
    [JT_THRESHOLD]   count of a block (below) at which it is queued
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
    [JT_PROBE]       a block's count at or above JT_THRESHOLD is queued only if
                     the filter (below) may have its entry key, or once it is at
                     least this: a VM with a cache index looks blocks up there
                     early (JT_THRESHOLD), and those it cannot be there count
                     on to where the service is asked (JT_PROBE) without a trip
                     through the host (~9 k misses a boot took ~0.1 s of it)
    [JT_KEY + i]     key of the block in slot i: its RAM offset * 2 + 1 if its
                     loads and stores are translated (paging), -1 = empty
    [JT_FN + i]      its native entry address, 0 = nothing to run there
    [JT_HOT + i]     instructions run from the block in slot i
    [JT_FILTER + w]  the cache index's entry keys (`entry_key`), one bit each
                     at `filter_bit` (a Bloom filter of one hash: a block whose
                     bit is clear is not in the index)
    [JT_COUNT + s]   instructions interpreted from the entries of blocks of
                     set s that are not installed: an entry counts one and
                     the instructions after it up to the next counted entry
                     (or call of translated code) the rest; a queued
                     block's count runs on from QUEUED

The table is 2-way set associative: the blocks of set s (a hash of the RAM
offset, `set_of`) are in slots 2s and 2s + 1, the one installed last in
2s. (Direct mapped, two hot blocks that shared a slot took turns in it: a
guest dd read installed 9-18k blocks, each one a trip through the host.)
"""

from __future__ import annotations

import os

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
JT_PROBE = 10
JT_QUEUE = 11
QUEUE_SIZE = 64
SET_BITS = 15
SETS = 1 << SET_BITS
WAYS = 2
SLOTS = WAYS * SETS
JT_KEY = JT_QUEUE + QUEUE_SIZE
JT_FN = JT_KEY + SLOTS
JT_HOT = JT_FN + SLOTS
JT_COUNT = JT_HOT + SLOTS
FILTER_LOG2 = 17  # bits: ~12 k entries in a full cache set ~9% of them
FILTER_WORDS = (1 << FILTER_LOG2) // 64
JT_FILTER = JT_COUNT + SETS
TABLE_SIZE = JT_FILTER + FILTER_WORDS
_FILTER_MUL = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (Fibonacci hashing)

MODE_OFF = 0
MODE_ON = 1
MODE_ALL = 2

ENV_VAR = "POCKETVM_JIT"
MODES = {"off": MODE_OFF, "on": MODE_ON, "all": MODE_ALL}
MODE_NAMES = {mode: name for name, mode in MODES.items()}


def mode_from_env(default: str = "off") -> int:
    """The tier-1 mode named by POCKETVM_JIT (off | on | all), or `default`."""
    name = os.environ.get(ENV_VAR, default).strip().lower() or default
    if name not in MODES:
        raise ValueError(f"{ENV_VAR}={name!r}: expected one of {', '.join(MODES)}")
    return MODES[name]


def vm_default_mode() -> int:
    """Tier 1 for a VM that does not say: $POCKETVM_JIT if set, else on
    where the host gives this process a second CPU for the translation
    service (the harts of a VM all run on one thread), else off: with one
    CPU the niced service gets ~3% of it and the guest stays interpreted.
    (A bare `Hart` keeps $POCKETVM_JIT or off: tests and tools build many.)"""
    if os.environ.get(ENV_VAR, "").strip():
        return mode_from_env()
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return MODE_ON if cpus >= 2 else MODE_OFF


QUEUED = -(1 << 40)  # a count that cannot reach the threshold again before a block of the set is installed


def new_table(mode: int = MODE_OFF, threshold: int = 50) -> np.ndarray:
    table = np.zeros(TABLE_SIZE, dtype=np.int64)
    table[JT_MODE] = mode
    table[JT_THRESHOLD] = 1 if mode == MODE_ALL else threshold
    table[JT_PROBE] = table[JT_THRESHOLD]  # no index: every block that gets there is queued
    table[JT_KEY : JT_KEY + SLOTS] = -1
    return table


@core_jit(inline="always")
def set_of(off):
    """Set index (0..SETS-1) of a RAM offset; its ways are slots 2 * set and 2 * set + 1."""
    return ((off >> 1) ^ (off >> (SET_BITS + 1))) & (SETS - 1)


@core_jit(inline="always")
def filter_bit(entry):
    """The filter's bit (0..2**FILTER_LOG2 - 1) for an entry key."""
    return ((entry * _FILTER_MUL) >> (64 - FILTER_LOG2)) & ((1 << FILTER_LOG2) - 1)


@core_jit(inline="always")
def may_be_cached(jt, ram16, key):
    """Whether the cache index may have the block `key` (its entry key read from
    RAM as `translator.entry_key_in_ram` does), by the filter."""
    off = key >> 1
    raw = np.int64(ram16[off >> 1])
    if (raw & 3) == 3 and (off & 0xFFF) + 4 <= 0x1000:
        raw |= np.int64(ram16[(off >> 1) + 1]) << 16
    bit = filter_bit(((off & 0xFFF) << 33) | ((key & 1) << 32) | raw)
    return ((jt[JT_FILTER + (bit >> 6)] >> (bit & 63)) & 1) != 0


def set_filter(table: np.ndarray, entries: np.ndarray, probe: int) -> None:
    """Fill the filter with the cache index's entry keys (int64 array); blocks it
    rules out are queued at `probe` instead of JT_THRESHOLD."""
    bits = filter_bits(entries)
    words = np.zeros(FILTER_WORDS, dtype=np.uint64)
    np.bitwise_or.at(words, bits >> 6, np.left_shift(np.uint64(1), (bits & 63).astype(np.uint64)))
    table[JT_FILTER : JT_FILTER + FILTER_WORDS] = words.view(np.int64)
    table[JT_PROBE] = probe


def filter_bits(entries: np.ndarray) -> np.ndarray:
    """`filter_bit` of an int64 array (wrapping as the core's int64 arithmetic does)."""
    with np.errstate(over="ignore"):
        return ((entries.astype(np.int64) * np.int64(_FILTER_MUL)) >> (64 - FILTER_LOG2)) & ((1 << FILTER_LOG2) - 1)


def block_key(off: int, paged: bool) -> int:
    return off * 2 + (1 if paged else 0)


def set_index(off: int) -> int:
    """`set_of` for the host side."""
    return ((off >> 1) ^ (off >> (SET_BITS + 1))) & (SETS - 1)


def set_indices(offs: np.ndarray) -> np.ndarray:
    """`set_index` of an array of RAM offsets."""
    return ((offs >> 1) ^ (offs >> (SET_BITS + 1))) & (SETS - 1)


def seen_in_page(table: np.ndarray, page_off: int) -> np.ndarray:
    """Per halfword of the 4 KiB page at RAM offset `page_off` (2048 bools):
    whether its set has a count or holds a block at that offset. Halfword j
    of a page is in set (the set of halfword 0) ^ j, so the page's sets are
    one aligned run of 2048: slices and one gather, not 2048 look-ups
    (half the time of those, in a cold boot's thousands of requests)."""
    first = set_index(page_off)
    run = first & ~(PAGE_HALFWORDS - 1)
    row_of = _HALFWORDS ^ (first & (PAGE_HALFWORDS - 1))  # the run's row of each halfword
    seen = table[JT_COUNT + run : JT_COUNT + run + PAGE_HALFWORDS] != 0
    keys = table[JT_KEY + WAYS * run : JT_KEY + WAYS * (run + PAGE_HALFWORDS)] >> 1
    at = page_off + 2 * row_of  # the offset each row stands for (row_of is its own inverse)
    for way in range(WAYS):
        seen |= keys[way::WAYS] == at
    return seen[row_of]


PAGE_HALFWORDS = 2048  # of a 4 KiB page (SETS is a multiple of it)
_HALFWORDS = np.arange(PAGE_HALFWORDS, dtype=np.int64)


def find(table: np.ndarray, key: int) -> int:
    """The slot that holds the block `key`, or -1."""
    first = WAYS * set_index(key >> 1)
    for slot in range(first, first + WAYS):
        if table[JT_KEY + slot] == key:
            return slot
    return -1


def installed(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The slot of each block in `keys` (an array), -1 where it is not installed."""
    first = WAYS * set_indices(keys >> 1)
    slot = np.full(keys.shape, -1, dtype=np.int64)
    for way in range(WAYS - 1, -1, -1):
        slot = np.where(table[JT_KEY + first + way] == keys, first + way, slot)
    return slot


def has_room(table: np.ndarray, key: int) -> bool:
    """Whether `key`'s set has an empty way."""
    first = WAYS * set_index(key >> 1)
    return bool((table[JT_KEY + first : JT_KEY + first + WAYS] == -1).any())


def install(table: np.ndarray, key: int, fn: int) -> None:
    """Put a block in its set: in place of its older code if it is there; else
    in the first way, the block there moving to the second unless the second
    is free or holds a place with nothing to run (whatever was in the second
    way goes: the set keeps the two blocks installed last)."""
    s = set_index(key >> 1)
    slot = find(table, key)
    if slot < 0:
        first = WAYS * s
        slot = first
        if table[JT_KEY + first] != -1:
            second = first + 1
            if table[JT_KEY + second] == -1 or table[JT_FN + second] == 0 or table[JT_FN + first] != 0:
                table[JT_KEY + second] = table[JT_KEY + first]
                table[JT_FN + second] = table[JT_FN + first]
                table[JT_HOT + second] = table[JT_HOT + first]
            # else the first way holds nothing to run and the second a block: the first way goes.
    table[JT_KEY + slot] = key
    table[JT_FN + slot] = fn
    table[JT_HOT + slot] = 0
    if table[JT_COUNT + s] < 0:  # queued: the set counts afresh
        table[JT_COUNT + s] = 0


# The table of every hart without tier 1 (mode off: the core never looks at the rest).
OFF_TABLE = new_table(MODE_OFF)

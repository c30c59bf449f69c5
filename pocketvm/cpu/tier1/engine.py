"""Handing hot blocks to the translation service and installing its code.

One `Tier1` serves all harts of a machine (translations depend on guest RAM
only, never on a hart's state). The numba core queues hot blocks in the
table; between two run() calls the hart's thread calls `service()`, which
installs whatever code has arrived and sends what is queued to the
translation service (`service`): in mode "on" a process of its own, so the
hart never waits for a compiler and never competes with one for the GIL;
in mode "all" (tests) in-process, at once. The service answers with object
files (from the persistent cache or freshly compiled), whose code is
copied into executable memory (`codeheap`; MCJIT links an object that
needs more). Code already in the persistent cache
does not wait for the service (whose process gets little CPU on a busy
host): the VM reads the cache's index itself (`LocalCache`), installs at
once whatever matches guest RAM when it starts (a kernel is where it was
last time), and looks hot blocks up there early, before any request. Compiled code is never freed (a
replaced block's code stays in memory, unreachable); translations are few
and small next to guest RAM.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pocketvm.cpu import native
from pocketvm.cpu.rvc import expansion_table
from pocketvm.cpu.tier1 import layout as L
from pocketvm.cpu.tier1.codeheap import CodeHeap, UnsupportedObject
from pocketvm.cpu.tier1.objcache import ObjectCache, cache_path
from pocketvm.cpu.tier1.service import (
    PAGE,
    PageWork,
    Reply,
    Request,
    TranslationService,
)
from pocketvm.cpu.tier1.translator import (
    GOOD,
    QUICK,
    VERSION,
    code_matches,
    entry_key_in_ram,
    init_llvm,
)

if TYPE_CHECKING:
    import llvmlite.binding as llvm

log = logging.getLogger(__name__)

# A region shorter than this is left to the interpreter: calling native code
# and writing registers back costs about what a few instructions save. At two
# (kernel code returns from a call into a few instructions that make the
# next call, and translated, the return chains on to the callee) a guest dd
# read of 256 MiB made 1.01 M calls from the interpreter instead of 1.31 M,
# no faster measurably, while benchmarks/cpu.py with an empty translation
# cache ran ~10% slower (500-710 MIPS against 640-680 at four: more small
# regions for the service to compile first). Mode "all" (testing)
# translates every region.
MIN_REGION = int(os.environ.get("POCKETVM_JIT_MIN_REGION", "4"))
# Two thresholds, chosen by measuring Debian boots on this 2-core machine,
# on a block's count: the instructions interpreted from its entries (an
# entry and what follows it up to the next block entry, `layout`). The
# service took ~3.5 ms of CPU for a region of 40 instructions (quickly
# compiled; LLVM ~2.3 of it; ~1.1 ms now that `asmgen` writes most regions,
# and lower thresholds were still slower: 1000 and 4000, or 300 and 1000,
# compiled more, and the VM's share of each block, its request and its
# object linked in, went up with it), which the interpreter runs in ~3 ns each
# and translated code several times faster: compiling pays only for code that runs tens of thousands
# of instructions, and the compiler's CPU is the hart's loss. A cold boot
# keeps the service busy whatever the threshold; a higher one compiles the
# hotter regions sooner, and warm boots install fewer, hotter regions.
# Looking a block up in the persistent cache costs next to nothing, so a
# block is first looked up early (PROBE_THRESHOLD) and compiled only if it
# gets hot (COMPILE_THRESHOLD). The counts were entries until 2026-12: a
# long body entered a few thousand times a boot (blake2s_compress, 1200
# instructions a call, 2174 calls) was never compiled and stayed
# interpreted in every boot. Counting instructions, at 8x the entry
# thresholds that were (2000, 20000, and 64 for the local look-up), boots
# with a cache that earlier boots filled ran 87-88% translated instead of
# 84%, 2.36-2.56 s against 2.47-2.88 (VM CPU 2.21-2.39 s against
# 2.32-2.67, 13 boots each, alternating), cold boots the same; but with an
# empty cache a guest dd read's second and third reads took 1.29-1.49 s
# against 1.15-1.29 (the busy service compiled what the dd loops needed
# later). At 2x (4000 and 40000, local 512 as at 8x): those reads
# 1.18-1.39 s, cold boots 3.41-3.59 s against 3.29-4.09 at 8x, second
# boots 2.37-2.68 against 2.51-2.64, later boots 2.21-2.39 against
# 2.37-2.45 (alternating, same minutes). Entry
# thresholds of 200 and 1000 (and 16 for the local look-up) had given 96%
# translated and ~5% faster boots once several boots had filled the cache,
# but the second boot was not faster and a restore through the launcher
# slower (0.15 s against 0.11: more regions to match and load first).
DEFAULT_THRESHOLD = 4000  # looked up in the translation cache
DEFAULT_COMPILE_THRESHOLD = 40000  # compiled
# With a cache index in the VM process: the count of a block at which it is
# looked up there (a dictionary look-up on the hart's thread, no request);
# a miss is asked of the service at the look-up threshold, as without an
# index (`_look_up_locally`).
LOCAL_THRESHOLD = int(os.environ.get("POCKETVM_JIT_LOCAL_THRESHOLD", "512"))
# Instructions run from a translated block's entry after which it is
# compiled again, well, if it was compiled quickly (as every block is at
# first, see `service`). Compiling a region well costs the service ~23 ms
# and saves ~0.25 ns per instruction (the hash loop of benchmarks/cpu.py:
# 3500 instead of 1800 MIPS), so only the hottest code is worth it; kept in
# the persistent cache, it serves the next runs too. (Counted in calls, as
# it was, a loop that stays inside its block for thousands of instructions
# a call was hardly ever compiled well.)
UPGRADE_INSTRUCTIONS = int(os.environ.get("POCKETVM_JIT_UPGRADE", "1000000"))
# Code compiled quickly counts what it runs itself, chained to or not (its
# budget checks add up in JT_HOT; the interpreter sees only the calls it
# makes); the table is looked over this often (seconds) for blocks that
# have run that much. In a guest `dd` read three quarters of the time in
# translated code was in code compiled quickly, entered by chaining or found
# by the VM in the cache index, and never asked of the service again: the
# read took 1.8-2.2 s, 1.2-1.3 with everything compiled well, 1.5 with these counts.
HOT_SCAN_INTERVAL = 0.1
# Blocks in flight to the service at most: a burst of hot code (a boot)
# queues faster than it compiles; beyond this the hart keeps interpreting
# and the table's queue simply fills (later hot blocks are asked for later).
MAX_IN_FLIGHT = 2
# Blocks in one request at most (each brings its 4 KiB page).
MAX_REQUEST = 32
# Blocks waiting for a busy service at most (the hottest are kept).
MAX_WAITING = 512
# The service's priority (nice value). Nice 15 weighs 36 against the hart's
# 1024 (Linux CFS): when both want the same core the service gets about 3%
# of it, enough to go on, not enough to slow the hart; an idle core it gets
# whole. On a busy host it then compiles little (at nice 5 it compiled
# more, but took a quarter of any core it shared with the hart): code
# already in the persistent cache does not depend on it (`LocalCache`).
SERVICE_NICE = int(os.environ.get("POCKETVM_JIT_SERVICE_NICE", "15"))
# A booting VM's wait for the service to start, at most (seconds). On an
# idle host it waits 0.05-0.13 s (its own start-up overlaps the service's);
# on a busy one the niced service took up to 1.1 s to start, all of it the
# boot's loss (with two busy loops on this 2-core host, a cold boot took
# 7-15% longer than interpreted).
SERVICE_START_WAIT = 0.4
# A service that has had nothing to do for this long (seconds) is stopped,
# and started again when the VM has blocks for it: after a boot it holds
# ~90 MiB (PSS), and an idle guest at a shell prompt asks for nothing.
SERVICE_IDLE_EXIT = float(os.environ.get("POCKETVM_JIT_SERVICE_IDLE", "20"))
# How often the hart looks for finished translations (a look is a system call).
POLL_INTERVAL = 0.0005


@dataclass
class Stats:
    blocks: int = 0  # regions compiled
    instructions: int = 0  # guest instructions in them
    assembled: int = 0  # of the regions: written as assembly (`asmgen`)
    cached: int = 0  # regions found in the persistent cache
    local: int = 0  # of which: found by the VM itself, without asking the service
    preloaded: int = 0  # of which: installed at start (their code was where it was made)
    prefetched: int = 0  # regions installed because their batch came with one that was asked for
    empty: int = 0  # hot places where nothing could be translated
    batches: int = 0  # objects loaded
    compile_seconds: float = 0.0  # the service's CPU time
    ir_seconds: float = 0.0  # of which: generating the IR (Python)
    opt_seconds: float = 0.0  # LLVM's optimisation passes
    codegen_seconds: float = 0.0  # machine code
    load_seconds: float = 0.0  # the hart's thread linking objects in
    requests: int = 0
    cache_bytes: int = 0
    starts: int = 0  # service processes started
    idle_stops: int = 0  # ... and stopped because they had nothing to do

    def summary(self, stale: int) -> str:
        return (
            f"tier 1: {self.blocks} blocks compiled ({self.instructions} instructions, {self.assembled} blocks "
            f"assembled), {self.cached} from the "
            f"translation cache ({self.cache_bytes >> 10} KiB; {self.local} found by the VM, {self.preloaded} of them at start), "
            f"{self.prefetched} prefetched, {self.empty} not worth it; "
            f"{self.batches} objects loaded in {self.load_seconds:.3f} s; service CPU {self.compile_seconds:.2f} s "
            f"(IR {self.ir_seconds:.2f}, optimisation {self.opt_seconds:.2f}, code {self.codegen_seconds:.2f}); "
            f"{stale} invalidated; service started {self.starts}x, stopped when idle {self.idle_stops}x"
        )


@dataclass
class HartStats:
    """What tier 1 costs the hart's thread."""

    runs: int = 0  # run() calls of the core
    retired: int = 0  # instructions retired in them (interpreted and translated)
    service_seconds: float = 0.0  # in service() (wall): requests and installing translations


# The service only writes IR text and calls LLVM: it needs neither numba nor
# the compiled core, and importing numba would cost it half a second before
# its first translation. So the core's functions it sees (the table layout's)
# stay plain Python (`jit.use_plain`), and numba is never imported.
_SERVICE_BOOT = """
import gc, os, sys
gc.disable()  # its imports make no garbage (see pocketvm.main); on again before it serves
try:
    os.nice(int(sys.argv[2]))  # before anything: even its start-up must not take the hart's core
except OSError:
    pass
from pocketvm.cpu import jit
jit.use_plain()
from pocketvm.cpu.tier1.service import main
gc.freeze()
gc.enable()
sys.exit(main())
"""


def _heat_of(hot: np.ndarray | np.int64) -> np.ndarray:
    """`_heat` of counters: a queued block's set count (JT_COUNT) runs on
    from QUEUED (its count since it was queued); an installed block's JT_HOT
    counts instructions run from it."""
    return np.where(hot < L.QUEUED // 2, hot - L.QUEUED, np.maximum(hot, 0))


def _counters(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each block's counter: JT_HOT of its slot if installed, else JT_COUNT of its set."""
    slots = L.installed(table, keys)
    return np.where(slots >= 0, table[L.JT_HOT + np.maximum(slots, 0)], table[L.JT_COUNT + L.set_indices(keys >> 1)])


class _ServiceProcess:
    """The translation service in a process of its own, over a socket."""

    def __init__(self, ctab: np.ndarray) -> None:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVICE_BOOT, str(theirs.fileno()), str(SERVICE_NICE)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            # Same session as the VM: with the kernel's autogroup scheduling a
            # session of its own would get a share of the CPU equal to the
            # VM's, whatever the service's nice value.
        )
        theirs.close()
        self._sock = ours  # shut down at close: that ends a send blocked in the sender thread
        self.conn = Connection(os.dup(ours.fileno()))
        # Polled every POLL_INTERVAL while the guest runs: one poll object
        # (Connection.poll(0) builds a selector each time, ~8x the cost).
        self._replies = select.poll()
        self._replies.register(self.conn.fileno(), select.POLLIN)
        # Requests leave from a thread of their own: the service may be busy
        # sending a large reply while the VM sends a large request, and if
        # the VM's thread blocked in that send it would never read the reply
        # that unblocks the service.
        self._outbox: queue.SimpleQueue[bytes | Request | None] = queue.SimpleQueue()
        self.send_error: OSError | None = None
        # The first message is larger than the socket's buffer: its send
        # ends once the service has started (~0.25 s), which the VM does not
        # wait for here: it loads its core meanwhile, and a restored VM
        # answers without waiting at all (see `Tier1.start`).
        self.ready = threading.Event()  # set once the first message is through (or sending failed)
        self._outbox.put(np.ascontiguousarray(ctab, dtype=np.int32).tobytes())
        self._sender = threading.Thread(target=self._send_loop, name="tier1-requests", daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        try:
            while (item := self._outbox.get()) is not None:
                # Pickled here, not by the hart's thread, which runs the guest meanwhile (without the GIL).
                try:
                    data = item if isinstance(item, bytes) else pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                    self.conn.send_bytes(data)
                except OSError as e:
                    self.send_error = e
                    return
                self.ready.set()
        finally:
            self.ready.set()

    def send(self, req: Request) -> None:
        if self.send_error is not None:
            raise self.send_error
        self._outbox.put(req)  # (the VM keeps no reference to it: nothing changes it while it waits)

    def poll(self) -> bool:
        """A reply (or the end of the service) is there to receive."""
        return bool(self._replies.poll(0))

    def receive(self) -> Reply:
        try:
            reply = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise
        except Exception as e:  # noqa: BLE001  (unpickling can fail in many ways: not what the service sends)
            raise OSError(f"unreadable reply from the translation service: {e}") from None
        if not isinstance(reply, Reply):
            raise OSError("unexpected reply from the translation service")
        return reply

    def close(self, wait: bool = True) -> None:
        """End the service. `wait=False`: its exit is waited for (reaped) by
        a thread of its own, so the hart's thread never blocks on a process
        that a busy host lets exit slowly."""
        self._outbox.put(None)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sender.join(timeout=2)
        for closable in (self.conn, self._sock):
            try:
                closable.close()
            except OSError:
                pass
        if wait:
            self._reap()
        else:
            threading.Thread(target=self._reap, name="tier1-reaper", daemon=True).start()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LocalCache:
    """The persistent cache as the VM process reads it: every region's entry,
    read once, and the objects of those it installs (loaded on demand)."""

    def __init__(self, path) -> None:
        self._cache = ObjectCache(path, read_only=True)
        # entry key -> [(table key where made, batch, function, signature, tier, size)], best first
        self.by_entry: dict[int, list[tuple[int, str, str, bytes, int, int]]] = {}
        for entry, tkey, batch, name, code, size, tier in self._cache.regions():
            self.by_entry.setdefault(entry, []).append((tkey, batch, name, code, tier, size))
        for rows in self.by_entry.values():
            rows.sort(key=lambda r: (-r[4], -r[5]))
        self.loaded: set[str] = set()  # batches linked into the VM
        self.bad: set[str] = set()  # batches that could not be read

    def __len__(self) -> int:
        return len(self.by_entry)

    def find(self, entry: int, page: bytes) -> tuple[str, str, int] | None:
        """(batch, function, tier) of the best cached region with this `entry_key`
        whose code `page` (its page of RAM now) still holds."""
        for _, batch, name, code, tier, _ in self.by_entry.get(entry, ()):
            if batch not in self.bad and code_matches(code, page):
                return batch, name, tier
        return None

    def made_here(self) -> list[tuple[int, int, bytes]]:
        """(table key, entry key, signature) of every cached region, where it was made."""
        return [(tkey, entry, code) for entry, rows in self.by_entry.items() for tkey, _, _, code, _, _ in rows]

    def load(self, batch: str) -> bytes | None:
        loaded = self._cache.load(batch)
        if loaded is None:
            self.bad.add(batch)
            return None
        return loaded[0]

    def close(self) -> None:
        self._cache.close()


class Tier1:
    """Translations for one machine."""

    def __init__(
        self, mode: int, threshold: int | None = None, ctab: np.ndarray | None = None, compile_threshold: int | None = None
    ):
        if threshold is None:  # count of a block at which it is looked up (tuning knob)
            threshold = int(os.environ.get("POCKETVM_JIT_THRESHOLD", str(DEFAULT_THRESHOLD)))
        if compile_threshold is None:  # ... and before it is compiled
            compile_threshold = int(os.environ.get("POCKETVM_JIT_COMPILE_THRESHOLD", str(DEFAULT_COMPILE_THRESHOLD)))
        self.table = L.new_table(mode, threshold)
        # A block found cold (not in the cache) is queued again, to be compiled,
        # once its count is this in all (`_count_on`); 0: at once (mode "all").
        self._compile_threshold = 0 if mode == L.MODE_ALL else max(compile_threshold, int(self.table[L.JT_THRESHOLD]))
        self._probed: set[int] = set()  # keys looked up and found cold once: compile them next time
        self._upgrade_asked: set[int] = set()  # installed blocks asked to be compiled better
        if mode == L.MODE_ON:
            self.table[L.JT_UPGRADE] = UPGRADE_INSTRUCTIONS
        self.stats = Stats()
        self.hart_stats = HartStats()
        self._born = time.perf_counter()
        self._born_cpu = time.process_time()
        self._heap = CodeHeap()  # where translated code is copied in
        self._mcjit: llvm.ExecutionEngine | None = None  # links what the heap cannot take (created if needed)
        self._addresses: dict[str, int] = {}  # loaded functions
        self._loaded: set[str] = set()  # batches linked in
        self.background = mode == L.MODE_ON
        self._local: TranslationService | None = None
        self._remote: _ServiceProcess | None = None
        self._in_flight = 0
        self._next_poll = 0.0
        self._next_scan = 0.0
        self._heard = 0.0  # when the service last answered, or was started
        self._broken = False
        self._waiting: dict[int, None] = {}  # blocks for the service, which has not taken them yet
        self._index: LocalCache | None = None
        self._local_missed: set[int] = set()  # keys looked up in the local index and not found
        self._touched: list[str] = []  # cached batches linked in locally, for the service to mark used
        self._preloaded = False
        # A booting VM installs every cached region found where it was made
        # before its first instruction (a kernel booted again) and, with none,
        # waits there until the service has started: the niced service,
        # started while the guest already ran, took longer than a short
        # program's whole run to answer at all on a busy host. A restored VM
        # (`snapshot.restore` turns this off) does neither and answers first:
        # its RAM holds a booted system, which matched thousands of regions of
        # a full cache (0.17 s to load 1000 objects before its first answer);
        # it finds what it runs in the cache index once a block's count
        # reaches LOCAL_THRESHOLD instead.
        self.booting = True
        self._probe_threshold = int(self.table[L.JT_THRESHOLD])
        if self.background:
            path = cache_path(VERSION)
            if path is not None:
                self._index = LocalCache(path)
                if len(self._index):  # looked up early; misses go on to the compile threshold
                    self.table[L.JT_THRESHOLD] = min(LOCAL_THRESHOLD, self._probe_threshold)
                    # What the index cannot have is not looked up there: queued at the probe count.
                    entries = np.fromiter(self._index.by_entry, dtype=np.int64, count=len(self._index))
                    L.set_filter(self.table, entries, self._probe_threshold)
                else:
                    self._index.close()
                    self._index = None
        if self.background:  # it takes a few tenths of a second to start: while the VM sets up
            try:
                self._start_service(ctab if ctab is not None else expansion_table())
            except OSError as e:
                self._fail(f"cannot start the translation service: {e}")

    @property
    def mode(self) -> int:
        return int(self.table[L.JT_MODE])

    def service(self, ram16: np.ndarray, ctab: np.ndarray) -> None:
        """Between two run() calls: install what has arrived, hand over what is queued.
        Called tens of thousands of times a second: it must cost next to nothing."""
        now = time.perf_counter()
        h = self.hart_stats
        h.runs += 1
        remote = self._remote
        if remote is not None and now >= self._next_poll and not self._broken:
            self._next_poll = now + POLL_INTERVAL
            try:
                while remote.poll():
                    reply = remote.receive()
                    self._heard = now
                    if reply.solicited:
                        self._in_flight -= 1
                    self._apply(reply)
            except (EOFError, OSError) as e:
                self._fail(f"the translation service stopped: {str(e) or 'it exited'}")
            if not self._in_flight and not self._waiting and now - self._heard > SERVICE_IDLE_EXIT:
                # Nothing asked, nothing coming back for a while: it has compiled all it
                # had (spare-time work answers every few milliseconds). Started again on demand.
                remote.close(wait=False)
                self._remote = None
                self.stats.idle_stops += 1
        if self.background and now >= self._next_scan and not self._broken:
            self._next_scan = now + HOT_SCAN_INTERVAL
            self._ask_for_upgrades()
        if self.table[L.JT_QLEN] or (self._waiting and self._in_flight < MAX_IN_FLIGHT):
            self._hand_over(ram16, ctab)
        h.service_seconds += time.perf_counter() - now

    @property
    def started(self) -> bool:
        return self._preloaded

    def start(self, ram16: np.ndarray) -> None:
        """Before the first run() call (guest RAM loaded), for a booting VM
        (`booting`): install every cached region whose code is where it was
        made, such as a kernel booted again; with none, wait for the service."""
        self._preloaded = True
        if not self.booting:
            return
        if self._index is not None:
            self._preload(ram16)
        if self._remote is not None and not self.stats.preloaded:
            self._remote.ready.wait(SERVICE_START_WAIT)

    def _hand_over(self, ram16: np.ndarray, ctab: np.ndarray) -> None:
        """Look newly queued blocks up in the cache index, send what is left to the service.

        The core's queue is emptied at every call, busy service or not: a
        block that gets hot while the service is starting, or starved of CPU
        on a busy host, still finds its cached code at once. (When the core's
        queue stayed full of blocks waiting for the service, nothing new was
        looked up locally: a warm boot ran its hottest loops interpreted for
        the two seconds the niced service took to answer its first request.)
        What the service is to compile waits here, and the hottest goes
        first: a queued block's count goes on from QUEUED at each entry."""
        table = self.table
        remote = self._remote
        if self._broken:
            return
        count = int(table[L.JT_QLEN])
        if count:
            new = list(dict.fromkeys(int(k) for k in table[L.JT_QUEUE : L.JT_QUEUE + count]))
            table[L.JT_QLEN] = 0
            # (Installed since it was queued: what it runs counts towards
            # being compiled better, see `_ask_for_upgrades`.)
            new = [k for k in new if L.find(table, k) < 0]
            if self._index is not None and new:
                new = self._look_up_locally(new, ram16)
            self._waiting.update(dict.fromkeys(new))
        if not self._waiting or (self.background and self._in_flight >= MAX_IN_FLIGHT):
            self._bound_waiting()
            return
        # (Ordered by heat only when not all fit: that took a fifth of a cold boot's hand-overs.)
        send = self._hottest(MAX_REQUEST) if len(self._waiting) > MAX_REQUEST else list(self._waiting)
        for k in send:
            del self._waiting[k]
        req = self._request(sorted(send), ram16)
        req.touched, self._touched = self._touched, []
        req.sent = time.monotonic()
        if not self.background:
            if self._local is None:
                self._local = TranslationService(ctab)
            self._apply(self._local.handle(req))
            return
        try:
            if remote is None:
                remote = self._start_service(ctab)
            remote.send(req)
            self._in_flight += 1
        except OSError as e:
            self._fail(f"cannot reach the translation service: {e}")

    def _ask_for_upgrades(self) -> None:
        """Installed blocks that ran JT_UPGRADE instructions (counted by the
        code compiled quickly itself, and by the interpreter's calls) go to
        the service once: it compiles them well unless the cache has them so."""
        threshold = int(self.table[L.JT_UPGRADE])
        if threshold <= 0:
            return
        hot = self.table[L.JT_HOT : L.JT_HOT + L.SLOTS]
        slots = np.flatnonzero(hot >= threshold)
        if not len(slots):
            return
        slots = slots[self.table[L.JT_FN + slots] != 0]
        keys = [int(k) for k in self.table[L.JT_KEY + slots] if k not in self._upgrade_asked]
        self._upgrade_asked.update(keys)
        self._waiting.update(dict.fromkeys(keys))

    def _start_service(self, ctab: np.ndarray) -> _ServiceProcess:
        remote = self._remote = _ServiceProcess(ctab)
        self._heard = time.perf_counter()
        self.stats.starts += 1
        return remote

    def _heat(self, key: int) -> int:
        """How hot a waiting block is now: instructions run from it if installed, else its count since it was queued."""
        slot = L.find(self.table, key)
        counter = L.JT_HOT + slot if slot >= 0 else L.JT_COUNT + L.set_index(key >> 1)  # as `_counters`, for one
        hot = int(self.table[counter])
        return hot - L.QUEUED if hot < L.QUEUED // 2 else max(hot, 0)  # `_heat_of` for one (numpy's where: 4 us)

    def _count_on(self, key: int, to_probe: bool = False) -> None:
        """A queued block that is not in the cache: compiled once it has had
        a count of `_compile_threshold` in all, what it had while it waited for
        the look-up included (a loop that ran hot while the service was busy
        is compiled at once; before, it counted again from the threshold and
        a boot's burst of it was over first). `to_probe`: the cache index
        did not have it; asked of the service first, at a count of
        `_probe_threshold` (see `_look_up_locally`)."""
        if not to_probe:
            self._probed.add(key)
        table = self.table
        if L.find(table, key) >= 0 or not self._compile_threshold:
            return
        threshold = int(table[L.JT_THRESHOLD])
        target = self._probe_threshold if to_probe else self._compile_threshold
        hot = threshold - target + threshold + self._heat(key)
        count = L.JT_COUNT + L.set_index(key >> 1)
        if hot >= threshold:
            table[count] = L.QUEUED
            self._waiting[key] = None
        else:
            table[count] = hot

    def _hottest(self, count: int) -> list[int]:
        """The `count` hottest waiting blocks, hottest first (`_heat`, for all at once)."""
        keys = np.fromiter(self._waiting, dtype=np.int64, count=len(self._waiting))
        heat = _heat_of(_counters(self.table, keys))
        return [int(k) for k in keys[np.argsort(-heat, kind="stable")[:count]]]

    def _bound_waiting(self) -> None:
        """Keep the hottest MAX_WAITING blocks for the service (trimmed when
        twice as many wait); the others count again from zero and come
        back if they stay hot."""
        if len(self._waiting) <= 2 * MAX_WAITING:
            return
        table = self.table
        keep = set(self._hottest(MAX_WAITING))
        for k in [k for k in self._waiting if k not in keep]:
            del self._waiting[k]
            if L.find(table, k) < 0:
                table[L.JT_COUNT + L.set_index(k >> 1)] = 0
            self._upgrade_asked.discard(k)

    def _look_up_locally(self, keys: list[int], ram16: np.ndarray) -> list[int]:
        """Install the blocks the cache index has; the keys left for the service."""
        index = self._index
        assert index is not None
        ram8 = ram16.view(np.uint8)
        rest: list[int] = []
        found: list[tuple[int, str, str]] = []
        pages: dict[int, bytes] = {}
        for k in keys:
            if k in self._local_missed:
                rest.append(k)
                continue
            off = k >> 1
            # Most blocks looked up are not there (~10 k a boot): known from
            # their first instruction, without a copy of their page.
            entry = entry_key_in_ram(ram16, off, bool(k & 1))
            hit = None
            if entry in index.by_entry:
                page_off = off & ~(PAGE - 1)
                page = pages.get(page_off)
                if page is None:
                    page = pages[page_off] = ram8[page_off : page_off + PAGE].tobytes()
                hit = index.find(entry, page)
            if hit is None:
                # Not in the cache. Once warm it is asked of the service, as
                # without an index: it may have it by now (another VM), and
                # otherwise compiles it in spare time for the cache (the next
                # boots find it here) unless it gets hot first. (Counting on
                # to the compile threshold, a block that was warm in every
                # boot, and never hot, stayed interpreted in every boot.)
                self._local_missed.add(k)
                self._count_on(k, to_probe=True)
                continue
            found.append((k, hit[0], hit[1]))
            self._waiting.pop(k, None)
        self._install_cached(found)
        return rest

    def _preload(self, ram16: np.ndarray) -> None:
        """Install every cached region whose code is where it was made (a kernel loaded again)."""
        index = self._index
        assert index is not None
        ram8 = ram16.view(np.uint8)
        size = ram8.shape[0]
        pages: dict[int, bytes] = {}
        chosen: dict[int, tuple[str, str]] = {}
        for rows in index.by_entry.values():
            for tkey, batch, name, code, _, _ in rows:  # best first
                off = tkey >> 1
                page_off = off & ~(PAGE - 1)
                if tkey in chosen or tkey < 0 or page_off + PAGE > size or batch in index.bad:
                    continue
                page = pages.get(page_off)
                if page is None:
                    page = pages[page_off] = ram8[page_off : page_off + PAGE].tobytes()
                if code_matches(code, page):
                    chosen[tkey] = (batch, name)
        self._install_cached([(k, b, n) for k, (b, n) in chosen.items()])
        self.stats.preloaded += len(chosen)

    def _install_cached(self, found: list[tuple[int, str, str]]) -> None:
        """Link in the batches of cached regions [(table key, batch, function)] and install them."""
        if not found:
            return
        index = self._index
        assert index is not None
        t0 = time.perf_counter()
        objects = []
        for batch in dict.fromkeys(b for _, b, _ in found):
            if batch in self._loaded:
                continue
            obj = index.load(batch)
            if obj is None:
                continue
            objects.append(obj)
            self._loaded.add(batch)
            self._touched.append(batch)
            self.stats.batches += 1
        self._link(objects)
        for k, batch, name in found:
            if batch in self._loaded:
                self._install(k, self._address(name))
                self.stats.cached += 1
                self.stats.local += 1
            else:  # unreadable: the service decides
                self._local_missed.add(k)
        self.stats.load_seconds += time.perf_counter() - t0

    def _request(self, keys: list[int], ram16: np.ndarray) -> Request:
        """The pages of these blocks, with where the interpreter saw control arrive in them."""
        table = self.table
        ram8 = ram16.view(np.uint8)
        by_page: dict[int, list[int]] = {}
        for key in keys:
            by_page.setdefault((key >> 1) & ~(PAGE - 1), []).append(key)
        pages = []
        for page_off, page_keys in by_page.items():
            seen = L.seen_in_page(table, page_off)
            code = ram8[page_off : page_off + PAGE].tobytes()
            # (Installed blocks are asked for only by `_ask_for_upgrades`: they ran much.)
            upgrade = [L.find(table, k) >= 0 for k in page_keys]
            compile = [not self._compile_threshold or k in self._probed or up for k, up in zip(page_keys, upgrade)]
            pages.append(PageWork(page_off, code, np.packbits(seen).tobytes(), page_keys, compile, upgrade))
        if self.background:  # what is compiled on request is hot: compile it well
            return Request(pages, int(ram16.shape[0]) * 2, MIN_REGION, GOOD)
        return Request(pages, int(ram16.shape[0]) * 2, 1, QUICK)  # mode "all": every block, at once

    def _apply(self, reply: Reply) -> None:
        """Link the reply's objects in and install its functions."""
        s = self.stats
        t0 = time.perf_counter()
        if reply.fpu and not self.table[L.JT_FP_ENTRY]:
            # Loading the FPU as a C function takes 0.1 s: only once code needs it (the prebuilt core has it).
            core = native.loaded()
            if core is not None:
                self.table[L.JT_FP_ENTRY] = core.fp_entry
            else:
                from pocketvm.cpu.tier1.fp_helper import fp_entry_address

                self.table[L.JT_FP_ENTRY] = fp_entry_address()
        fresh = [b for b in reply.batches if b.id not in self._loaded]  # a batch also found locally comes once
        self._link([batch.obj for batch in fresh])
        self._loaded.update(batch.id for batch in fresh)
        asked = set()
        for tkey, name in reply.installs:
            asked.add(tkey)
            # Spare-time work never evicts a block (it takes an empty way only); better code replaces the block's own.
            there = L.find(self.table, tkey) >= 0
            if reply.solicited or (reply.upgrade and there) or (not there and L.has_room(self.table, tkey)):
                self._install(tkey, self._address(name) if name is not None else 0)
        for tkey in reply.cold:
            self._count_on(tkey)
        for batch in reply.batches:  # the rest of a batch is likely to be wanted soon: install it where nothing is
            for name, tkey in batch.functions:
                if tkey not in asked and L.find(self.table, tkey) < 0 and L.has_room(self.table, tkey):
                    self._install(tkey, self._address(name))
                    s.prefetched += 1
        s.load_seconds += time.perf_counter() - t0
        s.requests += 1
        s.batches += len(fresh)
        s.blocks += reply.compiled
        s.instructions += reply.instructions
        s.cached += reply.cached
        s.empty += reply.empty
        s.compile_seconds += reply.cpu_seconds
        s.ir_seconds += reply.times.ir
        s.opt_seconds += reply.times.opt
        s.codegen_seconds += reply.times.code
        s.assembled += reply.times.assembled
        if reply.cache_bytes >= 0:
            s.cache_bytes = reply.cache_bytes

    def _link(self, objects: list[bytes]) -> None:
        """Make these objects' functions callable (`_address`): copied into
        the code heap, or linked by MCJIT if they need linking."""
        linked = False
        for obj in objects:
            try:
                self._addresses.update(self._heap.load(obj))
            except UnsupportedObject as e:
                import llvmlite.binding as llvm  # (LLVM is loaded only for this)

                if self._mcjit is None:
                    log.debug("tier 1: MCJIT links an object the code heap cannot take: %s", e)
                    init_llvm()
                    target = llvm.Target.from_default_triple().create_target_machine(jit=True)
                    self._mcjit = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target)
                self._mcjit.add_object_file(llvm.ObjectFileRef.from_data(obj))
                linked = True
        if linked:
            assert self._mcjit is not None
            self._mcjit.finalize_object()

    def _address(self, name: str) -> int:
        addr = self._addresses.get(name)
        if addr is None:
            addr = self._addresses[name] = int(self._mcjit.get_function_address(name)) if self._mcjit else 0
        return addr

    def _install(self, key: int, fn: int) -> None:
        L.install(self.table, key, fn)

    def _fail(self, why: str) -> None:
        """The service is gone: everything stays interpreted from now on."""
        log.warning("tier 1: %s; the guest goes on interpreted", why)
        self._broken = True
        self._in_flight = 0
        self.table[L.JT_THRESHOLD] = 1 << 62

    def report(self) -> str:
        """One line of statistics (`pocket -v run --jit on` logs it at the end)."""
        t = self.table
        h = self.hart_stats
        return (
            self.stats.summary(int(t[L.JT_STALE]))
            + f"; {self._heap.bytes >> 10} KiB of code loaded" + (" (and some linked by MCJIT)" if self._mcjit else "")
            + f"; {int(t[L.JT_NATIVE])} of {h.retired} instructions in translated code"
            f" ({100 * int(t[L.JT_NATIVE]) / max(h.retired, 1):.0f}%), {int(t[L.JT_CALLS])} calls from the interpreter"
            + f"; hart: {h.runs} run() calls, {h.service_seconds:.3f} s servicing them; VM process "
            f"{time.process_time() - self._born_cpu:.2f} s CPU in {time.perf_counter() - self._born:.2f} s"
        )

    def close(self) -> None:
        """Stop the service; work still in flight is dropped (a VM that ends
        does not wait for translations it will never run)."""
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._index is not None:
            self._index.close()
            self._index = None


_shared: weakref.WeakKeyDictionary[object, Tier1] = weakref.WeakKeyDictionary()


def tier1_for(ram: object, mode: int) -> Tier1:
    """The Tier1 of the machine that owns `ram` (created on first use)."""
    t = _shared.get(ram)
    if t is None or t.mode != mode:
        t = Tier1(mode)
        _shared[ram] = t
    return t


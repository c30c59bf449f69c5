"""The translation service: hot places in, loadable object files out.

A request names hot blocks with a copy of their code page and which
places in it the interpreter saw control arrive at (all a region's decode
needs, as regions never leave their page). The service decodes each region,
looks its content key up in the persistent cache and compiles the misses as
one batch (stored in the cache for next time). The reply lists the batches
the caller has not loaded yet and, for every requested block, the function
to install (or none: nothing worth translating there).

In mode "on" the service runs in a process of its own (`main()`,
talking over a socket): its work,
Python and LLVM alike, then never holds the VM's GIL, so the hart's thread
never waits for it. Mode "all" (tests) calls it in-process.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pocketvm.cpu.tier1.codegen import FP_OPS
from pocketvm.cpu.tier1.decode import Region, decode_region
from pocketvm.cpu.tier1.objcache import ObjectCache, cache_path, new_batch_id
from pocketvm.cpu.tier1.translator import (
    GOOD,
    QUICK,
    VERSION,
    CompileTimes,
    ObjectCompiler,
    calls_fpu,
    code_matches,
    code_signature,
    entry_key,
)

log = logging.getLogger(__name__)

PAGE = 4096
MAX_BACKLOG = 4096  # warm blocks kept for spare-time compiling
FEW = 4  # blocks asked for at once that are compiled well straight away
BURST = 8  # ... unless more than this many were asked for within BURST_WINDOW seconds
BURST_WINDOW = 2.0
UPGRADE_SPACING = 0.25  # seconds between two blocks compiled well in spare time during a burst
# ... or when the request waited longer than this for the service (busy with
# other work or starved of CPU).
LATE = 0.05


@dataclass
class PageWork:
    """Hot blocks in one page of guest RAM."""

    page_off: int  # RAM offset of the page
    code: bytes  # the page's 4096 bytes when the request was made
    taken: bytes  # np.packbits of 2048 flags: control seen arriving at each halfword
    keys: list[int]  # table keys (RAM offset * 2 + paged) of the hot blocks in it
    compile: list[bool]  # per key: compile it on a cache miss (else only look in the cache)
    # Per key: installed, and asked for because it ran much (`engine.UPGRADE_INSTRUCTIONS`): compile it well.
    upgrade: list[bool] = field(default_factory=list)


@dataclass
class Request:
    pages: list[PageWork]
    ram_size: int
    min_region: int  # regions shorter than this are not worth a call
    tier: int = QUICK  # how to compile the blocks asked for (`translator.QUICK` or `GOOD`)
    touched: list[str] = field(default_factory=list)  # cached batches the VM linked in itself since the last request
    sent: float = 0.0  # time.monotonic() when the VM made it (0: unknown)


@dataclass
class Batch:
    id: str
    obj: bytes
    functions: list[tuple[str, int]]  # (name, table key)


@dataclass
class Reply:
    batches: list[Batch] = field(default_factory=list)  # to load, in order
    installs: list[tuple[int, str | None]] = field(default_factory=list)  # (table key, function or None)
    cold: list[int] = field(default_factory=list)  # keys not in the cache and not to be compiled yet
    compiled: int = 0  # regions compiled now
    instructions: int = 0  # guest instructions in them
    cached: int = 0  # regions found in the persistent cache
    empty: int = 0
    cpu_seconds: float = 0.0  # the service's CPU time for this request
    times: CompileTimes = field(default_factory=CompileTimes)
    cache_bytes: int = -1
    fpu: bool = False  # some of its code calls the FPU
    solicited: bool = True  # False: spare-time work (`TranslationService.spare_time`), not the answer to a request
    upgrade: bool = False  # better code for blocks the VM has: replaces theirs


class _PageWords:
    """One page of RAM as the 16-bit view `decode_region` reads (only that page is there)."""

    def __init__(self, page_off: int, code: bytes, ram_size: int):
        self._base = page_off >> 1
        self._words = np.frombuffer(code, dtype=np.uint16)
        self.shape = (ram_size // 2,)

    def __getitem__(self, i: int) -> int:
        return int(self._words[i - self._base])


class TranslationService:
    def __init__(self, ctab: np.ndarray, cache: ObjectCache | None = None, verify: bool = True):
        self._ctab = ctab
        self._compiler = ObjectCompiler(verify)
        self.cache = cache if cache is not None else ObjectCache(cache_path(VERSION))
        self._sent: set[str] = set()  # batches the caller has loaded
        # Warm blocks not compiled yet, kept undecoded: a cold boot asks for
        # some 3500 of them and compiles ~1000 (its service is never idle),
        # and decoding each at once took a sixth of that service's CPU.
        self.backlog: dict[int, _Warm] = {}
        self.upgrades: dict[int, tuple[int, Region]] = {}  # hot blocks compiled quickly only
        self._recent: deque[tuple[float, int]] = deque()  # (when, blocks) compiled on request lately
        self._last_upgrade = 0.0  # time.monotonic() of the last spare-time compile of a hot block

    def handle(self, req: Request) -> Reply:
        t0 = time.thread_time()
        reply = Reply()
        if req.touched:  # never sent again; recently used for the cache's eviction
            self._sent.update(req.touched)
            self.cache.touch(req.touched)
        misses: list[tuple[int, int, Region]] = []  # (entry key, table key, region)
        for page in req.pages:
            code = _PageCode(page, req.ram_size)
            upgrade = page.upgrade or [False] * len(page.keys)
            for tkey, may_compile, hot in zip(page.keys, page.compile, upgrade):
                entry = entry_key(tkey >> 1, bool(tkey & 1), page.code)
                hit = self.cache.lookup(entry, lambda sig, code=page.code: code_matches(sig, code), req.min_region)
                off = tkey >> 1
                if hit is not None and self._send(hit[0], reply):
                    reply.installs.append((tkey, hit[1]))
                    reply.cached += 1
                    reply.fpu = reply.fpu or calls_fpu(hit[2], self._ctab)
                    if hit[3] < req.tier and hot:  # compiled quickly, and it ran much since
                        region = code.region(off, self._ctab)
                        if region.blocks:
                            self.upgrades[tkey] = (entry, region)
                    continue
                if not may_compile:
                    reply.cold.append(tkey)
                    self.backlog[tkey] = _Warm(entry, code, req.min_region)
                    if len(self.backlog) > MAX_BACKLOG:
                        del self.backlog[next(iter(self.backlog))]
                    continue
                region = code.region(off, self._ctab)
                if not region.blocks or region.size < req.min_region:
                    reply.installs.append((tkey, None))
                    reply.empty += 1
                else:
                    self.backlog.pop(tkey, None)
                    misses.append((entry, tkey, region))
        # What is asked for is wanted now. A few blocks while the service has
        # little else to do (a program's hot loop) are compiled well at once;
        # in a burst (a boot), or when the request waited for a busy service,
        # they are compiled quickly: compiling well takes LLVM 8x the time
        # (~23 ms for a region of 40 instructions, against ~3), and while the
        # service compiles well the boot's next hot blocks wait (compiling
        # the first 16 of a boot well at once took most of a cold boot's
        # compile time). Those that turn out to run much, counted by the
        # code itself, the VM asks for again (`engine.UPGRADE_INSTRUCTIONS`):
        # they are compiled well in spare time, spaced out while a burst is on
        # (`_may_upgrade`). (Every block of a burst used to be compiled well
        # again in spare time: after a cold boot the service then took ~58 s
        # of CPU in all, against ~26 s now, and the next boots were no faster.)
        now = time.monotonic()
        recent = self._recent_blocks(now) + len(misses)
        late = req.sent > 0 and now - req.sent > LATE  # this service is behind (a busy host)
        tier = req.tier if len(misses) <= FEW and recent <= BURST and not late else QUICK
        if misses:
            self._recent.append((now, len(misses)))
        self._compile(misses, reply, tier)
        if reply.cached and reply.cache_bytes < 0:
            reply.cache_bytes = self.cache.approximate_size()
        reply.cpu_seconds = time.thread_time() - t0
        return reply

    def _recent_blocks(self, now: float) -> int:
        """Blocks compiled on request within the last BURST_WINDOW seconds."""
        while self._recent and self._recent[0][0] < now - BURST_WINDOW:
            self._recent.popleft()
        return sum(n for _, n in self._recent)

    def spare_wait(self) -> float | None:
        """Seconds until there is spare-time work (0: now), None if there is none."""
        if self.upgrades and self._may_upgrade():
            return 0.0
        if self.backlog:
            return 0.0
        if not self.upgrades:
            return None
        return max(0.005, self._last_upgrade + UPGRADE_SPACING - time.monotonic())

    def _may_upgrade(self) -> bool:
        """Whether a hot block may be compiled well now. In a burst of
        requests (a boot) one every UPGRADE_SPACING seconds at most: each
        takes ~23 ms that the burst's next blocks would wait for (a cold
        boot compiled ~25 of them in its first 4 s, 0.7-0.9 s of the
        service's CPU; without any, 20-30% more regions quickly). Not none:
        a guest `dd` asks for new code all along, and its read loop, never
        compiled well in the VM that first ran it, took 1.6-2.5 s a read
        against ~1.1 once the cache had it compiled well."""
        now = time.monotonic()
        return self._recent_blocks(now) <= BURST or now - self._last_upgrade >= UPGRADE_SPACING

    def spare_time(self) -> Reply | None:
        """With no request waiting: compile a hot block well (replacing its
        quick code in the VM and in the cache) if `_may_upgrade`, else a few
        blocks that were only warm (for the cache, so the next boot finds
        them, and for the VM now). None: nothing to do now."""
        upgrade = bool(self.upgrades) and self._may_upgrade()
        if not upgrade and not self.backlog:
            return None
        t0 = time.thread_time()
        work = []
        if upgrade:
            # One region compiled well at a time: a request that arrives meanwhile waits for it.
            self._last_upgrade = time.monotonic()
            tier = GOOD
            tkey = next(iter(self.upgrades))
            entry, region = self.upgrades.pop(tkey)
            work.append((entry, tkey, region))
        else:
            tier = QUICK
            for tkey in list(self.backlog)[:8]:
                warm = self.backlog.pop(tkey)
                region = warm.code.region(tkey >> 1, self._ctab)
                if region.blocks and region.size >= warm.min_region:
                    work.append((warm.entry, tkey, region))
        reply = Reply(solicited=False, upgrade=tier == GOOD)
        self._compile(work, reply, tier)
        reply.cpu_seconds = time.thread_time() - t0
        return reply

    def _compile(self, misses: list[tuple[int, int, Region]], reply: Reply, tier: int) -> None:
        """The regions assembled without LLVM in one batch, the others in another."""
        assembled: list[tuple[int, int, Region]] = []
        through_llvm: list[tuple[int, int, Region]] = []
        for miss in misses:
            (assembled if self._compiler.assembles(miss[2], tier) else through_llvm).append(miss)
        self._compile_batch(assembled, reply, tier)
        self._compile_batch(through_llvm, reply, tier)

    def _compile_batch(self, misses: list[tuple[int, int, Region]], reply: Reply, tier: int) -> None:
        if misses:
            batch = new_batch_id()
            named = [(f"t{batch}_{i}", entry, tkey, region) for i, (entry, tkey, region) in enumerate(misses)]
            obj = self._compiler.compile(
                [(name, tkey >> 1, bool(tkey & 1), region) for name, _, tkey, region in named], reply.times, tier
            )
            reply.batches.append(Batch(batch, obj, [(name, tkey) for name, _, tkey, _ in named]))
            self._sent.add(batch)
            for name, _, tkey, region in named:
                reply.installs.append((tkey, name))
                reply.instructions += region.size
                reply.fpu = reply.fpu or any(i.opcode in FP_OPS for i in region.insns)
            reply.compiled += len(misses)
            self.cache.store(
                batch,
                obj,
                [
                    (entry, tkey, name, code_signature(tkey >> 1, region), region.size, tier)
                    for name, entry, tkey, region in named
                ],
            )
            reply.cache_bytes = self.cache.approximate_size()

    def _send(self, batch: str, reply: Reply) -> bool:
        """Put a cached batch into the reply unless the caller has it; False if it cannot be read."""
        if batch in self._sent:
            return True
        loaded = self.cache.load(batch)
        if loaded is None:
            return False
        obj, functions = loaded
        reply.batches.append(Batch(batch, obj, functions))
        self._sent.add(batch)
        return True

    def close(self) -> None:
        self.cache.close()


class _PageCode:
    """A requested page as `decode_region` reads it: its code, and where the
    interpreter saw control arrive."""

    def __init__(self, page: PageWork, ram_size: int):
        self.page_off = page.page_off
        self.words = _PageWords(page.page_off, page.code, ram_size)
        self.taken_bits = np.unpackbits(np.frombuffer(page.taken, dtype=np.uint8))

    def region(self, off: int, ctab: np.ndarray) -> Region:
        """The region entered at RAM offset `off` (in this page)."""

        def taken(rel: int) -> bool:
            at = off + rel - self.page_off
            return 0 <= at < PAGE and bool(self.taken_bits[at >> 1])

        return decode_region(self.words, ctab, off, taken=taken)  # type: ignore[arg-type]


@dataclass
class _Warm:
    """A block asked about before it was hot, kept for spare time undecoded."""

    entry: int
    code: _PageCode
    min_region: int


def main() -> int:
    """The service process: requests in, replies out, until the VM closes the socket."""
    import pickle
    from multiprocessing.connection import Connection

    # Compiling must not take a core from the guest: the process runs at a low
    # priority (`engine.SERVICE_NICE`, set before it even imports this), so it
    # mostly uses what the hart leaves idle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the VM decides when to stop: it closes the socket
    conn = Connection(int(sys.argv[1]))
    try:
        ctab = np.frombuffer(conn.recv_bytes(), dtype=np.int32)  # the VM's expansion table for compressed code
    except (EOFError, OSError):
        return 0
    service = TranslationService(ctab, verify=False)  # the IR is verified where the tests run it: in-process
    try:
        while True:
            reply: Reply | None = None
            try:
                wait = service.spare_wait()
                if wait is not None and not conn.poll(wait):
                    try:
                        reply = service.spare_time()
                    except Exception:
                        log.exception("tier 1 could not translate spare-time blocks")
                        service.backlog.clear()
                        service.upgrades.clear()
                        continue
                    if reply is None:
                        continue
                else:
                    req = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return 0
            if reply is None:
                try:
                    reply = service.handle(req)
                except Exception:  # a translator bug: those blocks stay interpreted
                    log.exception("tier 1 could not translate %d pages", len(req.pages))
                    reply = Reply(installs=[(k, None) for p in req.pages for k in p.keys])
            try:
                conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            except (EOFError, OSError):
                return 0
    finally:
        service.close()


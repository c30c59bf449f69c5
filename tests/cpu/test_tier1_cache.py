"""The persistent translation cache: reused across machines, wherever the
code is loaded, and safe against whatever is found on disk."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.cpu.tier1.objcache import ObjectCache
from pocketvm.memory import GuestRAM

A0, A1 = 10, 11


def addi(rd: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (rd << 7) | 0x13


def bne_back(rs1: int, rs2: int, bytes_back: int) -> int:
    imm = -bytes_back & 0x1FFF
    return (
        (((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3F) << 25) | (rs2 << 20) | (rs1 << 15) | (1 << 12)
        | (((imm >> 1) & 0xF) << 8) | (((imm >> 11) & 1) << 7) | 0x63
    )  # fmt: skip


def loop_hart(at: int, jit: str = "all") -> Hart:
    """At RAM + `at`: a0 += 3; a1 -= 1; bne a1, zero, back; then an endless self-loop.
    With a1 = 1000 the loop leaves a0 = 3000."""
    hart = Hart(0, GuestRAM(1 << 20), S.new_shared_state(1), jit=jit)
    base = S.RAM_BASE + at
    for i, insn in enumerate([addi(A0, A0, 3), addi(A1, A1, -1), bne_back(A1, 0, 8), 0x0000006F]):
        hart.ram.write_int(base + 4 * i, 4, insn)
    hart.pc = base
    hart.set_x(A1, 1000)
    return hart


def run_loop(hart: Hart) -> None:
    hart.run(3010)
    assert hart.x(A0) == 3000 and hart.x(A1) == 0
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) == 3010


@pytest.fixture
def jit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "jit"
    monkeypatch.setenv("POCKETVM_JIT_CACHE", str(where))
    return where


def test_second_machine_runs_the_code_the_first_compiled(jit_cache: Path) -> None:
    first = loop_hart(0x1000)
    run_loop(first)
    assert first.tier1.stats.blocks >= 1 and first.tier1.stats.cached == 0
    first.tier1.close()
    second = loop_hart(0x1000)  # a new machine: its own table at another host address, its own code
    run_loop(second)
    assert second.tier1.stats.blocks == 0, "compiled again instead of taken from the cache"
    assert second.tier1.stats.cached >= 1
    assert int(second.tier1.table[L.JT_NATIVE]) > 2000, "the cached code did not run"


def test_the_same_code_elsewhere_in_ram_uses_the_cache(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    moved = loop_hart(0x5000)  # same place in its page, another page
    run_loop(moved)
    assert moved.tier1.stats.blocks == 0 and moved.tier1.stats.cached >= 1
    assert int(moved.tier1.table[L.JT_NATIVE]) > 2000


def test_changed_code_is_not_taken_from_the_cache(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    other = loop_hart(0x1000)
    other.ram.write_int(S.RAM_BASE + 0x1000, 4, addi(A0, A0, 5))  # a0 += 5 now
    other.run(3010)
    assert other.x(A0) == 5000
    assert other.tier1.stats.blocks >= 1


def test_a_file_that_is_not_a_cache_is_replaced(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    (db,) = jit_cache.glob("tier1-*.sqlite")
    db.write_bytes(b"this is not a database" * 1000)
    hart = loop_hart(0x1000)
    run_loop(hart)  # compiles afresh, no crash
    assert hart.tier1.stats.blocks >= 1
    assert sqlite3.connect(db).execute("SELECT count(*) FROM batch").fetchone()[0] >= 1


def test_a_truncated_cache_is_survived(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    (db,) = jit_cache.glob("tier1-*.sqlite")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    run_loop(loop_hart(0x1000))


def fill_cache_with_damaged_objects(jit_cache: Path) -> None:
    """Run the loop once (filling the cache), then zero every stored object."""
    run_loop(loop_hart(0x1000))
    (db,) = jit_cache.glob("tier1-*.sqlite")
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE batch SET object = zeroblob(length(object))")
    con.close()


def test_a_damaged_object_is_never_loaded(jit_cache: Path) -> None:
    fill_cache_with_damaged_objects(jit_cache)
    hart = loop_hart(0x1000)
    run_loop(hart)
    assert hart.tier1.stats.cached == 0 and hart.tier1.stats.blocks >= 1


def test_two_writers_keep_the_cache_near_its_size(tmp_path: Path) -> None:
    """Each writer counts its own stores on (`approximate_size`) and reads the
    sum again after an eighth of the bound: the other's stores show then."""
    path = tmp_path / "c.sqlite"
    bound = 256 << 10
    writers = [ObjectCache(path, max_bytes=bound), ObjectCache(path, max_bytes=bound)]
    sizes = []
    for i in range(120):
        writers[i % 2].store(f"b{i}", bytes([i]) * (4 << 10), [(i, 2 * i, f"f{i}", b"sig", 5, 0)])
        sizes.append(writers[0].size())
    assert max(sizes) <= bound + 2 * (bound // 8 + (4 << 10)), max(sizes)
    assert min(sizes[60:]) >= bound // 2  # (trimmed to three quarters, not emptied)
    assert writers[1].load("b119") is not None and writers[0].load("b0") is None


def test_objects_of_another_translator_version_are_dropped(jit_cache: Path) -> None:
    jit_cache.mkdir(parents=True)
    old = jit_cache / "tier1-0000000000000000.sqlite"
    old.write_bytes(b"an old cache")
    run_loop(loop_hart(0x1000))
    assert not old.exists()


def test_the_cache_stays_within_its_size(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "c.sqlite", max_bytes=64 << 10)
    for i in range(40):
        cache.store(f"b{i}", bytes([i]) * (8 << 10), [(i, 2 * i, f"f{i}", b"sig", 5, 0)])
        time.sleep(0.001)  # distinct last-use times
    assert cache.size() <= 64 << 10
    assert cache.load("b39") is not None, "the newest batch went"
    assert cache.load("b0") is None, "the oldest batch stayed"
    assert cache.lookup(0, lambda sig: True, 1) is None and cache.lookup(39, lambda sig: True, 1) == ("b39", "f39", b"sig", 0)


def test_off_disables_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for _ in range(2):
        hart = loop_hart(0x1000)
        run_loop(hart)
        assert hart.tier1.stats.blocks >= 1 and hart.tier1.stats.cached == 0
    assert not (tmp_path / "pocketvm" / "jit").exists()


def test_the_translation_service_process_translates_and_ends_with_the_machine(jit_cache: Path) -> None:
    hart = loop_hart(0x1000, jit="on")
    hart.tier1.table[L.JT_THRESHOLD] = 5  # compile at once: no probing first
    hart.tier1._rearm = 0
    hart.set_x(A1, 1 << 40)  # a loop that keeps going
    deadline = time.monotonic() + 60
    while int(hart.tier1.table[L.JT_NATIVE]) == 0 and time.monotonic() < deadline:
        hart.run(200_000)
    assert int(hart.tier1.table[L.JT_NATIVE]) > 0, "nothing ran translated"
    proc = hart.tier1._remote.proc  # type: ignore[union-attr]
    hart.tier1.close()
    assert proc.poll() is not None


def test_a_service_that_dies_leaves_the_guest_interpreted_with_one_warning(
    jit_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hart = loop_hart(0x1000, jit="on")
    tier1 = hart.tier1
    assert tier1 is not None and tier1._remote is not None
    tier1.start(hart.ram.u16)
    assert tier1._remote.ready.wait(30)
    tier1._remote.proc.kill()
    tier1._remote.proc.wait()
    for _ in range(5):
        tier1._next_poll = 0.0  # poll at every run() call
        hart.run(250)
    assert tier1._broken
    stopped = [r.getMessage() for r in caplog.records if "translation service stopped" in r.getMessage()]
    # The end or a reset, as the socket saw it: said once, and with a reason.
    assert len(stopped) == 1 and "stopped: ;" not in stopped[0], stopped
    hart.set_x(A0, 0)
    hart.set_x(A1, 1000)
    hart.pc = S.RAM_BASE + 0x1000
    before = int(hart.st[S.CSR + S.CSR_MINSTRET])
    hart.run(3010)  # right results, interpreted
    assert hart.x(A0) == 3000 and hart.x(A1) == 0
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) - before == 3010
    tier1.close()


def run_in_slices(hart: Hart, slices: int = 12, size: int = 250) -> None:
    """The loop of `loop_hart` in short run() calls, as a VM runs (between two
    calls tier 1 installs what it found)."""
    for _ in range(slices):
        hart.run(size)
    hart.run(3010 - slices * size)
    assert hart.x(A0) == 3000 and hart.x(A1) == 0
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) == 3010


def test_a_machine_runs_cached_code_where_it_was_made_from_its_first_instruction(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    hart = loop_hart(0x1000, jit="on")  # a background service, which is never asked for this code
    try:
        run_loop(hart)  # a single run() call: only code installed before it runs native
        assert hart.tier1.stats.preloaded >= 1 and hart.tier1.stats.blocks == 0
        assert int(hart.tier1.table[L.JT_NATIVE]) > 2000, "the cached code did not run"
    finally:
        hart.tier1.close()


def runs_code_found_in_the_cache_index(hart: Hart) -> None:
    """Run the loop in slices: nothing installed at start, the code found
    in the cache index as it runs, nothing compiled."""
    try:
        run_in_slices(hart)
        s = hart.tier1.stats
        assert s.preloaded == 0 and s.local >= 1 and s.blocks == 0
        assert int(hart.tier1.table[L.JT_NATIVE]) > 1500
    finally:
        hart.tier1.close()


def test_a_machine_finds_cached_code_loaded_elsewhere_itself(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    runs_code_found_in_the_cache_index(loop_hart(0x5000, jit="on"))  # same code, another page


def test_a_restored_machine_finds_cached_code_as_it_runs_instead_of_preloading_it(jit_cache: Path) -> None:
    """A restore answers first (`snapshot.restore` says it is not booting: a
    booted system's RAM matched thousands of regions of a full cache); the
    code it runs is found in the cache index all the same, and no compiling."""
    run_loop(loop_hart(0x1000))
    hart = loop_hart(0x1000, jit="on")
    assert hart.tier1 is not None
    hart.tier1.booting = False
    runs_code_found_in_the_cache_index(hart)


def test_changed_code_is_not_preloaded(jit_cache: Path) -> None:
    run_loop(loop_hart(0x1000))
    hart = loop_hart(0x1000, jit="on")
    try:
        hart.ram.write_int(S.RAM_BASE + 0x1004, 4, addi(A1, A1, -2))  # a1 -= 2: 500 iterations
        hart.run(1510)
        assert hart.x(A0) == 1500 and hart.x(A1) == 0
        assert hart.tier1.stats.preloaded == 0
    finally:
        hart.tier1.close()


def test_a_damaged_object_is_not_loaded_by_the_machine_either(jit_cache: Path) -> None:
    fill_cache_with_damaged_objects(jit_cache)
    hart = loop_hart(0x1000, jit="on")
    try:
        run_in_slices(hart)
        assert hart.tier1.stats.cached == 0
    finally:
        hart.tier1.close()


def test_a_cache_of_the_earlier_schema_is_dropped_and_objects_come_last(jit_cache: Path) -> None:
    """Objects are the last column of their rows (reading a column after a
    long blob reads the blob's whole overflow chain: summing sizes read the
    whole file); a file with the earlier column order goes."""
    from pocketvm.cpu.tier1.translator import VERSION

    jit_cache.mkdir(parents=True)
    earlier = jit_cache / f"tier1-{VERSION}.sqlite"
    earlier.write_bytes(b"a cache with objects second")
    run_loop(loop_hart(0x1000))
    assert not earlier.exists()
    (db,) = jit_cache.glob("tier1-*.sqlite")
    columns = [row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(batch)")]
    assert columns[-1] == "object"


def test_the_index_key_read_from_ram_is_the_one_made_from_the_page() -> None:
    """The VM looks blocks up in the cache index by their first instruction
    read from RAM (no copy of the page): the key must be the cache's own,
    for 16- and 32-bit instructions, at a page's end too."""
    import numpy as np

    from pocketvm.cpu.tier1.translator import entry_key, entry_key_in_ram

    rng = np.random.default_rng(3)
    ram16 = rng.integers(0, 1 << 16, 2 * 4096, dtype=np.uint16)  # two pages
    ram16[2047] |= 3  # a 32-bit instruction's first half at the first page's last halfword
    ram8 = ram16.view(np.uint8)
    for off in [0, 2, 4094, 4096, 8190, *range(100, 4000, 58)]:
        page_off = off & ~0xFFF
        page = ram8[page_off : page_off + 4096].tobytes()
        for paged in (False, True):
            assert entry_key_in_ram(ram16, off, paged) == entry_key(off, paged, page)


def test_a_warm_block_the_cache_index_lacks_is_compiled_in_spare_time_for_the_next_runs(jit_cache: Path) -> None:
    """A block the VM's cache index does not have, warm but never hot enough
    to be compiled on request, is asked of the service once warm, which
    compiles it when it has nothing else to do: it runs translated soon, and
    the next machine finds it in the cache. (Without the ask, such a block
    stayed interpreted in every run.)"""
    run_loop(loop_hart(0x1000))  # the cache has something: the VM reads its index
    hart = loop_hart(0x3000, jit="on")
    tier1 = hart.tier1
    assert tier1 is not None and tier1._index is not None
    try:
        hart.ram.write_int(S.RAM_BASE + 0x3000, 4, addi(A0, A0, 5))  # other code: not in the cache
        tier1._probe_threshold = 2000
        tier1._compile_threshold = 1 << 50  # never compiled on request
        hart.set_x(A1, 1 << 40)
        deadline = time.monotonic() + 60
        while int(tier1.table[L.JT_NATIVE]) == 0 and time.monotonic() < deadline:
            hart.run(5000)
        assert int(tier1.table[L.JT_NATIVE]) > 0, "the warm block never ran translated"
        assert tier1.stats.blocks >= 1 and tier1.stats.local == 0
    finally:
        tier1.close()
    again = loop_hart(0x3000, jit="on")
    again.ram.write_int(S.RAM_BASE + 0x3000, 4, addi(A0, A0, 5))
    assert again.tier1 is not None
    again.tier1.booting = False  # found as it runs, not preloaded
    try:
        for _ in range(12):
            again.run(250)
        assert again.tier1.stats.local >= 1 and int(again.tier1.table[L.JT_NATIVE]) > 0
    finally:
        again.tier1.close()


def test_an_idle_service_is_stopped_and_started_again_when_code_gets_hot(
    jit_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pocketvm.cpu.tier1 import engine

    hart = loop_hart(0x1000, jit="on")
    tier1 = hart.tier1
    assert tier1 is not None
    tier1.table[L.JT_THRESHOLD] = 5  # compile at once: no probing first
    hart.set_x(A1, 1 << 40)  # a loop that keeps going, translated: it asks for nothing more
    first = tier1._remote
    assert first is not None
    deadline = time.monotonic() + 60
    while int(tier1.table[L.JT_NATIVE]) == 0 and time.monotonic() < deadline:
        hart.run(200_000)
    assert int(tier1.table[L.JT_NATIVE]) > 0 and tier1.stats.idle_stops == 0
    monkeypatch.setattr(engine, "SERVICE_IDLE_EXIT", 0.3)
    while tier1.stats.idle_stops == 0 and time.monotonic() < deadline:
        hart.run(200_000)
    assert tier1.stats.idle_stops == 1 and tier1._remote is None
    first.proc.wait(10)  # it ended (reaped by a thread: the hart did not wait for it)
    # New code gets hot: a service starts again and translates it.
    base = S.RAM_BASE + 0x5000
    for i, insn in enumerate([addi(A0, A0, 5), addi(A1, A1, -1), bne_back(A1, 0, 8), 0x0000006F]):
        hart.ram.write_int(base + 4 * i, 4, insn)
    hart.pc = base
    compiled = tier1.stats.blocks
    while tier1.stats.blocks == compiled and time.monotonic() < deadline:
        hart.run(200_000)
    assert tier1.stats.blocks > compiled and tier1.stats.starts == 2
    hart.pc = base  # and it runs exactly
    hart.set_x(A0, 0)
    hart.set_x(A1, 1000)
    before = int(hart.st[S.CSR + S.CSR_MINSTRET])
    hart.run(3010)
    assert hart.x(A0) == 5000 and hart.x(A1) == 0
    assert int(hart.st[S.CSR + S.CSR_MINSTRET]) - before == 3010
    assert "service started 2x, stopped when idle 1x" in tier1.report()
    tier1.close()


def test_code_compiled_quickly_counts_what_it_runs_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its budget checks (at entry and at the loop's head) add up what they
    checked in its slot's JT_HOT, as the interpreter adds what each call of it
    ran: so a block entered only by chaining gets hot too."""
    monkeypatch.setenv("POCKETVM_JIT_CACHE", "off")
    hart = loop_hart(0x1000)  # mode "all": compiled quickly, at once
    run_loop(hart)
    table = hart.tier1.table
    slot = L.find(table, L.block_key(0x1000, False))
    native = int(table[L.JT_NATIVE])
    assert slot >= 0 and native > 2900
    # The interpreter's calls credit `native`; the code itself about as much again.
    assert int(table[L.JT_HOT + slot]) > 1.8 * native, (int(table[L.JT_HOT + slot]), native)


def test_a_block_hot_by_its_own_count_is_asked_to_be_compiled_well_once(jit_cache: Path) -> None:
    hart = loop_hart(0x1000, jit="on")
    tier1 = hart.tier1
    assert tier1 is not None
    key = L.block_key(0x1000, False)
    L.install(tier1.table, key, 0x1234)  # (never called here)
    tier1.table[L.JT_HOT + L.find(tier1.table, key)] = engine_upgrade_instructions()
    tier1._ask_for_upgrades()
    assert key in tier1._waiting and key in tier1._upgrade_asked
    del tier1._waiting[key]
    tier1._ask_for_upgrades()  # once
    assert key not in tier1._waiting
    tier1.close()


def engine_upgrade_instructions() -> int:
    from pocketvm.cpu.tier1 import engine

    return engine.UPGRADE_INSTRUCTIONS


_VM_SIDE = """
import sys
from pocketvm.cpu import native
if not native.prefer():
    sys.exit("no prebuilt CPU core: numba's loads LLVM anyway")
from pocketvm.cpu.tier1 import layout as L
from pocketvm.cpu.tier1.engine import Tier1
from pocketvm.cpu.tier1.translator import VERSION
tier1 = Tier1(L.MODE_ON)
tier1.close()
print(VERSION, "llvmlite.binding" in sys.modules)
"""


def test_a_vm_process_names_its_cache_without_loading_llvm(tmp_path: Path) -> None:
    """The cache's version names LLVM and the host CPU it compiles for.
    Asking LLVM costs a VM ~0.1 s of its start and ~40 MiB: the answer is
    kept per host, so a VM that finds its code in the cache never loads
    LLVM (the service does, and mends a wrong answer for the next ones)."""
    import subprocess
    import sys

    from pocketvm.cpu.tier1 import translator

    from pocketvm.cpu import native

    if not native.library_path().exists():
        pytest.skip("no prebuilt CPU core (setup.sh builds it): numba's core loads LLVM anyway")
    env = {**os.environ, "POCKETVM_JIT_CACHE": str(tmp_path / "jit")}

    def vm_side() -> tuple[str, bool]:
        out = subprocess.run([sys.executable, "-c", _VM_SIDE], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        version, loaded = out.stdout.split()
        return version, loaded == "True"

    first = vm_side()  # asks LLVM, once for this host
    assert first[1]
    assert vm_side() == (first[0], False)
    assert first[0] == translator.VERSION  # what this process found (it runs with a memo of its own)
    (memo,) = (tmp_path / "jit").glob("llvm-host-*.txt")
    memo.write_text("a wrong answer")
    wrong = vm_side()
    assert wrong[0] != first[0] and not wrong[1]
    # The service loads LLVM: it mends the memo, and the next VM is right again.
    mend = "from pocketvm.cpu.tier1.translator import ObjectCompiler; ObjectCompiler()"
    subprocess.run([sys.executable, "-c", mend], env=env, check=True, timeout=120)
    assert vm_side() == (first[0], False)

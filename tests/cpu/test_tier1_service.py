"""The translation service's spare time: what it compiles well, and when."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tier1_diff import addi, branch, jal

from pocketvm.cpu.rvc import expansion_table
from pocketvm.cpu.tier1 import service as svc
from pocketvm.cpu.tier1.objcache import ObjectCache
from pocketvm.cpu.tier1.service import PageWork, Request, TranslationService
from pocketvm.cpu.tier1.translator import GOOD, code_matches, entry_key

A0, A1 = 10, 11
LOOPS = 12  # more blocks than a burst (svc.BURST) in one request
LOOP_BYTES = 16


def loops_page() -> bytes:
    """A page of LOOPS small loops (a0 += k; a1 -= 1; bne back; jump on to the next)."""
    words = []
    for k in range(LOOPS):
        words += [addi(A0, A0, k + 1), addi(A1, A1, -1), branch(1, A1, 0, -4), jal(0, 4)]  # bne back; on to the next
    code = np.zeros(4096, dtype=np.uint8)
    code[: 4 * len(words)] = np.array(words, dtype=np.uint32).view(np.uint8)
    return code.tobytes()


def request(keys: list[int], page_off: int = 0x4000, upgrade: bool = False) -> Request:
    """`upgrade`: the VM asks again for installed blocks that ran much (`Tier1._ask_for_upgrades`)."""
    taken = np.zeros(2048, dtype=bool)
    for k in range(LOOPS):
        taken[(k * LOOP_BYTES) >> 1] = True  # each loop's entry
        taken[(k * LOOP_BYTES + 4) >> 1] = True  # ... and its head, where bne comes back
    flags = [True] * len(keys)
    page = PageWork(page_off, loops_page(), np.packbits(taken).tobytes(), keys, flags, [upgrade] * len(keys))
    return Request([page], 1 << 20, 1, GOOD)


def key(loop: int, page_off: int = 0x4000) -> int:
    return (page_off + loop * LOOP_BYTES) * 2  # unpaged


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TranslationService]:
    s = TranslationService(expansion_table(), ObjectCache(tmp_path / "cache.sqlite"))
    yield s
    s.close()


def test_a_burst_is_compiled_quickly_and_not_all_of_it_again_well(service: TranslationService) -> None:
    """A boot asks for many blocks at once: they are compiled quickly, and
    only those the VM asks for again (hot, see engine.UPGRADE_INSTRUCTIONS)
    are compiled well. Compiling every one of them well in spare time kept
    the service busy for ~55 s of CPU after a cold boot."""
    reply = service.handle(request([key(i) for i in range(LOOPS)]))
    assert reply.compiled == LOOPS
    assert not service.upgrades
    assert service.spare_wait() is None and service.spare_time() is None


def test_compiling_well_is_spaced_out_while_a_burst_is_on(
    service: TranslationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc, "BURST_WINDOW", 600.0)  # still on however slowly the test runs
    service.handle(request([key(i) for i in range(LOOPS)]))
    # Asked again without having run much (its slot was taken meanwhile): installed as it is.
    assert service.handle(request([key(2)])).cached == 1 and not service.upgrades
    # The VM asks for two of them because they ran much.
    assert service.handle(request([key(3), key(4)], upgrade=True)).cached == 2
    assert list(service.upgrades) == [key(3), key(4)]
    first = service.spare_time()  # the first at once, burst or not
    assert first is not None and first.upgrade and [k for k, _ in first.installs] == [key(3)]
    monkeypatch.setattr(svc, "UPGRADE_SPACING", 600.0)
    wait = service.spare_wait()
    assert wait is not None and 0 < wait <= 600.0
    assert service.spare_time() is None and list(service.upgrades) == [key(4)]
    monkeypatch.setattr(svc, "UPGRADE_SPACING", 0.0)  # (or the burst is over)
    second = service.spare_time()
    assert second is not None and second.upgrade and not second.solicited
    assert [k for k, _ in second.installs] == [key(4)] and not service.upgrades
    # ... and the cache holds that code for the next runs.
    code = loops_page()
    hit = service.cache.lookup(entry_key(key(4) >> 1, False, code), lambda sig: code_matches(sig, code), 1)
    assert hit is not None and hit[3] == GOOD


def test_warm_blocks_are_compiled_while_compiling_well_waits(
    service: TranslationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc, "BURST_WINDOW", 600.0)
    monkeypatch.setattr(svc, "UPGRADE_SPACING", 600.0)
    service.handle(request([key(i) for i in range(LOOPS - 2)]))
    service._last_upgrade = time.monotonic()  # one was compiled well just now
    service.handle(request([key(3)], upgrade=True))  # waits
    cold = request([key(LOOPS - 2), key(LOOPS - 1)])
    cold.pages[0].compile = [False, False]  # warm only: kept for spare time
    assert service.handle(cold).cold == [key(LOOPS - 2), key(LOOPS - 1)]
    assert service.spare_wait() == 0.0
    reply = service.spare_time()
    assert reply is not None and not reply.upgrade
    assert sorted(k for k, _ in reply.installs) == [key(LOOPS - 2), key(LOOPS - 1)]
    assert key(3) in service.upgrades

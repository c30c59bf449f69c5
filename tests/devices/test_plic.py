from __future__ import annotations

from pocketvm.cpu.state import EXT_IRQ, new_hart_state
from pocketvm.devices import plic as p
from pocketvm.devices.plic import Plic, hart_irq_setter

M0, S0 = 0, 1  # contexts of hart 0


def ctx_reg(ctx: int, reg: int) -> int:
    return p.CONTEXT_BASE + p.CONTEXT_STRIDE * ctx + reg


def enable(plic: Plic, ctx: int, *sources: int) -> None:
    words: dict[int, int] = {}
    for s in sources:
        words[s // 32] = words.get(s // 32, 0) | (1 << (s % 32))
    for w, bits in words.items():
        plic.write(p.ENABLE_BASE + p.ENABLE_STRIDE * ctx + 4 * w, 4, bits)


def claim(plic: Plic, ctx: int) -> int:
    return plic.read(ctx_reg(ctx, p.CONTEXT_CLAIM), 4)


def complete(plic: Plic, ctx: int, src: int) -> None:
    plic.write(ctx_reg(ctx, p.CONTEXT_CLAIM), 4, src)


def make(nharts: int = 1):
    harts = [new_hart_state(h) for h in range(nharts)]
    return Plic(nharts, hart_irq_setter(harts)), harts


def meip(st) -> bool:
    return bool(st[EXT_IRQ] >> 11 & 1)


def seip(st) -> bool:
    return bool(st[EXT_IRQ] >> 9 & 1)


def test_claim_complete_two_contexts():
    plic, (h0,) = make()
    uart, virtio = plic.irq_line(10), plic.irq_line(1)
    plic.write(4 * 10, 4, 1)
    plic.write(4 * 1, 4, 3)
    enable(plic, S0, 1, 10)
    enable(plic, M0, 10)
    uart.raise_()
    assert seip(h0) and meip(h0)
    assert plic.read(p.PENDING_BASE, 4) == 1 << 10
    virtio.raise_()
    # S context sees both; the higher priority (source 1, prio 3) comes first.
    assert claim(plic, S0) == 1
    # Claimed: no longer pending, even though the wire is still high.
    assert plic.read(p.PENDING_BASE, 4) == 1 << 10
    assert claim(plic, S0) == 10
    assert claim(plic, S0) == 0
    uart.raise_()  # a device re-asserting its line while in service changes nothing
    assert plic.read(p.PENDING_BASE, 4) == 0
    assert claim(plic, S0) == 0
    # The M context has nothing left either: source 10 is in service.
    assert not meip(h0) and not seip(h0)
    assert claim(plic, M0) == 0
    # Completing source 10 with its wire still high makes it pending again.
    complete(plic, S0, 10)
    assert meip(h0) and seip(h0)
    uart.lower()
    assert not meip(h0) and not seip(h0)
    # Source 1: device drops its line while in service; completion leaves nothing.
    virtio.lower()
    complete(plic, S0, 1)
    assert plic.read(p.PENDING_BASE, 4) == 0
    assert claim(plic, S0) == 0


def test_threshold_masks_notification_only():
    plic, (h0,) = make()
    line = plic.irq_line(5)
    plic.write(4 * 5, 4, 2)
    enable(plic, S0, 5)
    plic.write(ctx_reg(S0, p.CONTEXT_THRESHOLD), 4, 2)
    line.raise_()
    assert not seip(h0)  # priority must exceed the threshold
    assert plic.read(ctx_reg(S0, p.CONTEXT_THRESHOLD), 4) == 2
    plic.write(ctx_reg(S0, p.CONTEXT_THRESHOLD), 4, 1)
    assert seip(h0)


def test_priority_zero_never_interrupts_and_source0_is_reserved():
    plic, (h0,) = make()
    line = plic.irq_line(3)
    enable(plic, M0, 0, 3)
    line.raise_()
    assert not meip(h0)
    assert claim(plic, M0) == 0
    plic.write(0, 4, 7)  # priority of source 0: hardwired 0
    assert plic.read(0, 4) == 0
    assert plic.read(p.ENABLE_BASE, 4) == 1 << 3  # enable bit 0 hardwired 0
    plic.write(4 * 3, 4, 0xFFFF)  # clamped to the 3 implemented bits
    assert plic.read(4 * 3, 4) == p.PRIORITY_MAX
    assert meip(h0)


def test_lowest_id_wins_priority_ties_and_second_hart():
    plic, (h0, h1) = make(nharts=2)
    a, b = plic.irq_line(40), plic.irq_line(33)
    for s in (40, 33):
        plic.write(4 * s, 4, 1)
    enable(plic, 3, 33, 40)  # hart 1, S-mode
    a.raise_()
    b.raise_()
    assert seip(h1) and not seip(h0) and not meip(h1)
    assert plic.read(p.PENDING_BASE + 4, 4) == (1 << 1) | (1 << 8)
    assert claim(plic, 3) == 33
    assert claim(plic, 3) == 40


def test_completion_of_non_enabled_source_is_ignored():
    plic, _ = make()
    line = plic.irq_line(2)
    plic.write(8, 4, 1)
    enable(plic, S0, 2)
    line.raise_()
    assert claim(plic, S0) == 2
    complete(plic, M0, 2)  # M context has not enabled source 2
    assert claim(plic, S0) == 0  # still in service
    complete(plic, S0, 2)
    assert claim(plic, S0) == 2


def test_hostile_accesses_do_not_raise():
    plic, _ = make()
    for off in (0x0, 0x1000, 0x2000, 0x1FFFFC, 0x200000, 0x3FFFFC, 0x5FFFFC):
        for size in (1, 2, 4, 8):
            plic.write(off, size, 0xFFFF_FFFF_FFFF_FFFF)
            plic.read(off, size)
    complete(plic, S0, 0)
    complete(plic, S0, 5000)


def test_save_load_mid_claim():
    plic, (h0,) = make()
    lines = {s: plic.irq_line(s) for s in (1, 2)}
    for s in (1, 2):
        plic.write(4 * s, 4, s)
    enable(plic, S0, 1, 2)
    lines[1].raise_()
    lines[2].raise_()
    assert claim(plic, S0) == 2
    state = plic.save()

    harts = [new_hart_state(0)]
    plic2 = Plic(1, hart_irq_setter(harts))
    plic2.load(state)
    assert seip(harts[0])  # source 1 still pending
    assert claim(plic2, S0) == 1
    assert claim(plic2, S0) == 0
    complete(plic2, S0, 2)  # in service before the snapshot; wire still high
    assert claim(plic2, S0) == 2

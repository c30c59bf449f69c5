"""virtio-input through a scripted guest driver: config space, event delivery, bounds."""

from __future__ import annotations

import random
import struct

import pytest
from virtio_guest import GuestDriver, scramble_rings

from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_input as vi
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.base import IrqLine
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM
from pocketvm.snapshot.format import dump_state, load_state

SYN = (vi.EV_SYN, vi.SYN_REPORT, 0)


class Input:
    def __init__(self, device: vi.VirtioInput, ram: GuestRAM):
        self.ram = ram
        self.levels: list[bool] = []
        self.wakes = 0
        self.input = device
        device.wake = self._wake
        self.dev = VirtioMmio(ram, IrqLine(lambda s, lvl: self.levels.append(lvl), 1), device)
        self.events = GuestDriver(self.dev, ram)
        self.status = GuestDriver(self.dev, ram)
        self.status.DESC, self.status.AVAIL, self.status.USED = RAM_BASE + 0x5000, RAM_BASE + 0x7000, RAM_BASE + 0x8000
        self.status.data_next = RAM_BASE + 0x80000

    def _wake(self) -> None:
        self.wakes += 1

    def start(self) -> None:
        assert self.events.negotiate(v.F_VERSION_1)
        self.events.setup_queue(vi.EVENTQ)
        self.status.setup_queue(vi.STATUSQ)
        self.events.set(m.STATUS, self.events.reg(m.STATUS) | v.STATUS_DRIVER_OK)

    def post_buffers(self, n: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            addr = self.events.alloc(8)
            out.append((self.events.post_chain([(addr, 8, True)]), addr))
        self.events.notify(vi.EVENTQ)
        return out

    def received(self, bufs: dict[int, int]) -> list[tuple[int, int, int]]:
        got = []
        for head, length in self.events.used():
            assert length == 8
            got.append(struct.unpack("<HHi", self.ram.read(bufs[head], 8)))
        return got

    def config(self, select: int, subsel: int) -> bytes:
        self.dev.write(m.CONFIG, 1, select)
        self.dev.write(m.CONFIG + 1, 1, subsel)
        size = self.dev.read(m.CONFIG + 2, 1)
        return bytes(self.dev.read(m.CONFIG + 8 + i, 1) for i in range(size))


@pytest.fixture
def kbd(ram) -> Input:
    t = Input(vi.keyboard(), ram)
    t.start()
    return t


@pytest.fixture
def tab(ram) -> Input:
    t = Input(vi.tablet(), ram)
    t.start()
    return t


def bits(bitmap: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1}


def test_keyboard_config_space(kbd):
    assert kbd.dev.read(m.DEVICE_ID, 4) == 18
    assert kbd.config(vi.CFG_ID_NAME, 0) == b"pocketvm virtio keyboard"
    assert kbd.config(vi.CFG_ID_SERIAL, 0).startswith(b"pocketvm")
    bus, vendor, product, version = struct.unpack("<HHHH", kbd.config(vi.CFG_ID_DEVIDS, 0))
    assert (bus, vendor, product) == (vi.BUS_VIRTUAL, vi.VENDOR, 1)
    keys = bits(kbd.config(vi.CFG_EV_BITS, vi.EV_KEY))
    assert {1, 28, 30, 42, 57, 103, 125} <= keys and 0 not in keys  # Esc, Enter, A, LeftShift, Space, Up, Meta
    assert kbd.config(vi.CFG_EV_BITS, vi.EV_ABS) == b""  # no axes
    assert kbd.config(vi.CFG_EV_BITS, vi.EV_REL) == b""
    assert kbd.config(vi.CFG_ABS_INFO, vi.ABS_X) == b""
    assert kbd.config(vi.CFG_UNSET, 0) == b"" and kbd.config(0x7F, 3) == b""  # unknown select: size 0
    assert kbd.config(vi.CFG_ID_NAME, 1) == b""  # subsel must be 0 there


def test_tablet_config_space(tab):
    assert tab.config(vi.CFG_ID_NAME, 0) == b"pocketvm virtio tablet"
    assert bits(tab.config(vi.CFG_EV_BITS, vi.EV_KEY)) == {vi.BTN_LEFT, vi.BTN_RIGHT, vi.BTN_MIDDLE}
    assert bits(tab.config(vi.CFG_EV_BITS, vi.EV_ABS)) == {vi.ABS_X, vi.ABS_Y}
    assert bits(tab.config(vi.CFG_EV_BITS, vi.EV_REL)) == {vi.REL_WHEEL, vi.REL_HWHEEL}
    for axis in (vi.ABS_X, vi.ABS_Y):
        assert struct.unpack("<iiiii", tab.config(vi.CFG_ABS_INFO, axis)) == (0, vi.ABS_MAX, 0, 0, 0)
    assert tab.config(vi.CFG_ABS_INFO, 5) == b""


def test_config_writes(kbd):
    kbd.dev.write(m.CONFIG, 2, vi.CFG_EV_BITS | vi.EV_KEY << 8)  # select and subsel in one store
    assert kbd.dev.read(m.CONFIG, 1) == vi.CFG_EV_BITS and kbd.dev.read(m.CONFIG + 1, 1) == vi.EV_KEY
    size, first = kbd.dev.read(m.CONFIG + 2, 1), kbd.dev.read(m.CONFIG + 8, 4)
    kbd.dev.write(m.CONFIG + 2, 1, 0)  # size is read-only
    kbd.dev.write(m.CONFIG + 8, 4, 0x12345678)  # so is the payload
    assert kbd.dev.read(m.CONFIG + 2, 1) == size and kbd.dev.read(m.CONFIG + 8, 4) == first


def test_events_reach_the_driver_in_order(kbd):
    bufs = dict(kbd.post_buffers(8))
    report = [(vi.EV_KEY, 30, 1), SYN, (vi.EV_KEY, 30, 0), SYN]
    kbd.input.post(report)
    assert kbd.wakes == 1  # the VM is woken, the guest sees nothing yet
    assert kbd.events.used() == []
    kbd.input.deliver()
    assert kbd.received(bufs) == report
    assert kbd.levels[-1] is True  # interrupt
    assert kbd.input.pending() == 0


def test_events_wait_for_buffers(tab):
    tab.input.post([(vi.EV_ABS, vi.ABS_X, 100), (vi.EV_ABS, vi.ABS_Y, 200), SYN])
    tab.input.deliver()  # no buffers yet
    assert tab.input.pending() == 3
    bufs = dict(tab.post_buffers(2))  # posting buffers delivers (the notify)
    assert tab.received(bufs) == [(vi.EV_ABS, vi.ABS_X, 100), (vi.EV_ABS, vi.ABS_Y, 200)]
    assert tab.input.wants_attention() is False  # one event left, no buffer
    more = dict(tab.post_buffers(1))
    assert tab.received(more) == [SYN]


def test_nothing_before_driver_ok(ram):
    t = Input(vi.keyboard(), ram)
    t.input.post([(vi.EV_KEY, 30, 1), SYN])
    t.input.deliver()
    assert t.input.pending() == 2


def test_pending_events_are_bounded(kbd):
    for i in range(vi.MAX_PENDING):  # a guest that never reads
        kbd.input.post([(vi.EV_KEY, 30, i & 1), SYN])
    assert kbd.input.pending() <= vi.MAX_PENDING
    assert kbd.input.stats["dropped"] > 0
    # Whole reports were dropped: what is left starts at a report's start.
    bufs = dict(kbd.post_buffers(4))
    got = kbd.received(bufs)
    assert got[0][0] == vi.EV_KEY and got[1] == SYN


def test_bad_event_buffers(kbd):
    small = kbd.events.alloc(4)
    h1 = kbd.events.post_chain([(small, 4, True)])  # too small for an event
    ro = kbd.events.alloc(8)
    h2 = kbd.events.post_chain([(ro, 8, False)])  # not device-writable
    kbd.input.post([(vi.EV_KEY, 30, 1), SYN])
    kbd.events.notify(vi.EVENTQ)
    assert kbd.events.used() == [(h1, 0), (h2, 0)]
    assert kbd.input.pending() == 2  # still there for good buffers
    bufs = dict(kbd.post_buffers(2))
    assert kbd.received(bufs) == [(vi.EV_KEY, 30, 1), SYN]


def test_status_queue_is_drained(kbd):
    led = struct.pack("<HHi", 0x11, 1, 1)  # EV_LED, LED_CAPSL, on
    head = kbd.status.post_chain([(kbd.status.alloc(led), 8, False)])
    kbd.status.notify(vi.STATUSQ)
    assert kbd.status.used() == [(head, 0)]


def test_reset_drops_pending_events(kbd):
    kbd.input.post([(vi.EV_KEY, 30, 1), SYN])
    kbd.events.set(m.STATUS, 0)
    assert kbd.input.pending() == 0 and kbd.input.select == 0


def test_snapshot_round_trip(kbd, ram):
    kbd.config(vi.CFG_EV_BITS, vi.EV_KEY)
    kbd.input.post([(vi.EV_KEY, 28, 1), SYN])
    state = load_state(dump_state({"k": kbd.dev.save()}))["k"]
    other = Input(vi.keyboard(), ram)
    other.dev.load(state)
    assert other.input.pending() == 2
    assert (other.input.select, other.input.subsel) == (vi.CFG_EV_BITS, vi.EV_KEY)


def test_scrambled_rings_never_crash(ram, caplog):
    rnd = random.Random(5)
    for _ in range(40):
        t = Input(vi.tablet(), ram)
        t.start()
        t.input.post([(vi.EV_ABS, 0, 1), SYN] * 4)
        scramble_rings(t.events, rnd, [RAM_BASE + 0x10000, 0, RAM_BASE + (1 << 20) - 4], [0, 4, 8, 1 << 31])
        t.events.notify(vi.EVENTQ)
        t.input.deliver()
    assert "crashed" not in caplog.text

from __future__ import annotations

from pocketvm.devices import rtc as r
from pocketvm.devices.base import IrqLine
from pocketvm.devices.rtc import GoldfishRtc


class FakeClock:
    def __init__(self, ns: int):
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def make(ns: int = 0x1_2345_6789_ABCD):
    clock = FakeClock(ns)
    irq = IrqLine()
    return GoldfishRtc(irq, clock), clock, irq


def test_time_low_latches_high():
    dev, clock, _ = make(0x0000_0005_FFFF_FFF0)
    assert dev.read(r.TIME_LOW, 4) == 0xFFFF_FFF0
    clock.ns += 0x20  # low word wraps before the guest reads the high word
    assert dev.read(r.TIME_HIGH, 4) == 5  # still the latched value
    assert dev.read(r.TIME_LOW, 4) == 0x10
    assert dev.read(r.TIME_HIGH, 4) == 6


def test_guest_sets_time():
    dev, clock, _ = make(1_000)
    dev.write(r.TIME_HIGH, 4, 7)
    dev.write(r.TIME_LOW, 4, 0)
    clock.ns += 500
    assert dev.now() == (7 << 32) + 500


def test_alarm_in_past_fires_immediately_when_enabled():
    dev, clock, irq = make(10_000)
    dev.write(r.IRQ_ENABLED, 4, 1)
    dev.write(r.ALARM_HIGH, 4, 0)
    dev.write(r.ALARM_LOW, 4, 5_000)
    assert irq.level
    assert dev.read(r.ALARM_STATUS, 4) == 0  # fired, no longer running
    dev.write(r.CLEAR_INTERRUPT, 4, 1)
    assert not irq.level


def test_future_alarm_fires_on_poll():
    dev, clock, irq = make(10_000)
    dev.write(r.ALARM_HIGH, 4, 0)
    dev.write(r.ALARM_LOW, 4, 20_000)
    assert dev.read(r.ALARM_STATUS, 4) == 1
    assert dev.next_deadline() == 20_000
    dev.poll(19_999)
    assert dev.read(r.ALARM_STATUS, 4) == 1
    dev.poll(20_000)
    assert dev.read(r.ALARM_STATUS, 4) == 0
    assert not irq.level  # interrupt pending but not enabled
    dev.write(r.IRQ_ENABLED, 4, 1)
    assert irq.level
    assert dev.next_deadline() is None


def test_clear_alarm_disarms():
    dev, clock, irq = make(10_000)
    dev.write(r.IRQ_ENABLED, 4, 1)
    dev.write(r.ALARM_LOW, 4, 20_000)
    dev.write(r.CLEAR_ALARM, 4, 1)
    clock.ns = 30_000
    dev.poll()
    assert not irq.level


def test_save_load_keeps_offset_and_pending_alarm():
    dev, clock, _ = make(1_000)
    dev.write(r.TIME_HIGH, 4, 1)
    dev.write(r.TIME_LOW, 4, 0)
    dev.write(r.IRQ_ENABLED, 4, 1)
    dev.write(r.ALARM_HIGH, 4, 1)
    dev.write(r.ALARM_LOW, 4, 100)
    state = dev.save()
    dev2, clock2, irq2 = make(50_000)  # restored later on the host
    dev2.load(state)
    assert dev2.now() == (1 << 32) + 49_000
    assert not irq2.level and dev2.read(r.ALARM_STATUS, 4) == 1
    dev2.poll()
    assert irq2.level

"""Goldfish RTC (`google,goldfish-rtc`): wall-clock time and one alarm.

Guest time is the host's clock (ns since the Unix epoch) plus an offset
that changes when the guest sets the time, so a snapshot restored later
keeps the guest's notion of "how far from host time" rather than freezing
the clock. The alarm fires when guest time reaches it: immediately if it is
already in the past when armed, otherwise when the run loop calls `poll()`
(`next_deadline()` tells it when that will be).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from pocketvm.devices.base import IrqLine
from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

TIME_LOW = 0x00
TIME_HIGH = 0x04
ALARM_LOW = 0x08
ALARM_HIGH = 0x0C
IRQ_ENABLED = 0x10
CLEAR_ALARM = 0x14
ALARM_STATUS = 0x18
CLEAR_INTERRUPT = 0x1C

MASK32 = 0xFFFF_FFFF
MASK64 = (1 << 64) - 1


class GoldfishRtc:
    name = "rtc"

    def __init__(self, irq: IrqLine, clock: Callable[[], int] = time.time_ns):
        self.irq = irq
        self.clock = clock
        self.offset = 0  # guest time - host time, in ns
        self.reset()

    def reset(self) -> None:
        """A machine reset disarms the alarm and quiets the interrupt, as on
        QEMU; the clock keeps the time the guest set, like a battery-backed one."""
        self.time_high = 0  # latched by a TIME_LOW read
        self.set_high = 0  # staged high half for a guest time write
        self.alarm_high = 0  # staged high half of the next alarm
        self.alarm = 0  # armed alarm, guest ns
        self.alarm_running = False
        self.irq_enabled = False
        self.irq_pending = False
        self._update_irq()

    def now(self, host_ns: int | None = None) -> int:
        """Guest time in ns, from the host clock (or the host time given)."""
        host = self.clock() if host_ns is None else host_ns
        return (host + self.offset) & MASK64

    # --- run loop ---------------------------------------------------------------

    def poll(self, now_ns: int | None = None) -> None:
        """Fire the alarm if guest time has reached it; `now_ns` is host time."""
        if self.alarm_running and self.now(now_ns) >= self.alarm:
            self._fire()

    def next_deadline(self) -> int | None:
        """Host time (ns) at which the armed alarm fires, None if disarmed."""
        return self.alarm - self.offset if self.alarm_running else None

    # --- guest side -------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size == 8 and offset == TIME_LOW:
            value = self.now()
            self.time_high = value >> 32
            return value
        if size != 4 or offset & 3:
            guest_error(log, "rtc: unsupported %d-byte read at %#x", size, offset)
            return 0
        if offset == TIME_LOW:
            value = self.now()
            self.time_high = value >> 32
            return value & MASK32
        if offset == TIME_HIGH:
            return self.time_high
        if offset == ALARM_LOW:
            return self.alarm & MASK32
        if offset == ALARM_HIGH:
            return self.alarm >> 32
        if offset == IRQ_ENABLED:
            return int(self.irq_enabled)
        if offset == ALARM_STATUS:
            return int(self.alarm_running)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 8 and offset in (TIME_LOW, ALARM_LOW):
            # A 64-bit store sets both halves at once.
            self.write(offset + 4, 4, value >> 32)
            self.write(offset, 4, value & MASK32)
            return
        if size != 4 or offset & 3:
            guest_error(log, "rtc: unsupported %d-byte write at %#x", size, offset)
            return
        value &= MASK32
        if offset == TIME_HIGH:
            self.set_high = value
        elif offset == TIME_LOW:
            # Setting the clock: Linux writes TIME_HIGH first, then TIME_LOW.
            wanted = (self.set_high << 32) | value
            self.offset = wanted - self.clock()
        elif offset == ALARM_HIGH:
            self.alarm_high = value
        elif offset == ALARM_LOW:
            self.alarm = (self.alarm_high << 32) | value
            self.alarm_running = True
            self.poll()  # an alarm in the past fires at once
        elif offset == IRQ_ENABLED:
            self.irq_enabled = bool(value & 1)
        elif offset == CLEAR_ALARM:
            self.alarm_running = False
        elif offset == CLEAR_INTERRUPT:
            self.irq_pending = False
        self._update_irq()

    # --- internals --------------------------------------------------------------

    def _fire(self) -> None:
        self.alarm_running = False
        self.irq_pending = True
        self._update_irq()

    def _update_irq(self) -> None:
        level = self.irq_pending and self.irq_enabled
        if level != self.irq.level:
            self.irq.set(level)

    # --- snapshots --------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "time_high": self.time_high,
            "set_high": self.set_high,
            "alarm_high": self.alarm_high,
            "alarm": self.alarm,
            "alarm_running": int(self.alarm_running),
            "irq_enabled": int(self.irq_enabled),
            "irq_pending": int(self.irq_pending),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.offset = int(state["offset"])
        self.time_high = int(state["time_high"]) & MASK32
        self.set_high = int(state["set_high"]) & MASK32
        self.alarm_high = int(state["alarm_high"]) & MASK32
        self.alarm = int(state["alarm"]) & MASK64
        self.alarm_running = bool(state["alarm_running"])
        self.irq_enabled = bool(state["irq_enabled"])
        self.irq_pending = bool(state["irq_pending"])
        self.irq.set(self.irq_pending and self.irq_enabled)

"""The VM generation ID device: a new ID and an interrupt per restore."""

from __future__ import annotations

from pocketvm.devices.base import IrqLine
from pocketvm.devices.vmgenid import ID_SIZE, VmGenId


def _read_id(dev: VmGenId) -> bytes:
    return b"".join(dev.read(off, 8).to_bytes(8, "little") for off in (0, 8))


def test_new_generation_changes_the_id_and_interrupts_until_read():
    levels = []
    dev = VmGenId(IrqLine(lambda src, level: levels.append(level), 12))
    first = _read_id(dev)
    assert len(first) == ID_SIZE and not dev.irq.level
    dev.new_generation()
    assert dev.irq.level and levels[-1] is True
    second = _read_id(dev)
    assert second != first
    assert not dev.irq.level  # the driver's read of the ID is its acknowledgement
    assert dev.read(4, 4) == int.from_bytes(second[4:8], "little")


def test_hostile_accesses_are_harmless():
    dev = VmGenId(IrqLine())
    ident = _read_id(dev)
    assert dev.read(16, 4) == 0 and dev.read(12, 8) == 0 and dev.read(0xFFC, 4) == 0
    dev.write(0, 8, 0xDEAD)
    assert _read_id(dev) == ident


def test_state_round_trip_keeps_the_id_and_a_pending_interrupt():
    dev = VmGenId(IrqLine())
    dev.new_generation()
    state = dev.save()
    other = VmGenId(IrqLine())
    other.load(state)
    assert other.id == dev.id and other.irq.level
    other.reset()
    assert not other.irq.level

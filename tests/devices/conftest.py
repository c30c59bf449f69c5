"""Fixtures shared by the device tests."""

from __future__ import annotations

import pytest
from virtio_guest import Wire

from pocketvm.devices.base import IrqLine
from pocketvm.memory import GuestRAM


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(1 << 20)


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def irq(wire: Wire) -> IrqLine:
    return IrqLine(wire, 1)

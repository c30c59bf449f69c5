from __future__ import annotations

import pytest
from virtio_guest import GuestDriver

from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.base import IrqLine
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.devices.virtio_rng import VirtioRng


@pytest.fixture
def dev(ram, irq) -> VirtioMmio:
    return VirtioMmio(ram, irq, VirtioRng())


def test_identity_registers(dev):
    assert dev.read(m.MAGIC_VALUE, 4) == 0x74726976
    assert dev.read(m.VERSION, 4) == 2
    assert dev.read(m.DEVICE_ID, 4) == v.ID_ENTROPY
    assert dev.read(m.VENDOR_ID, 4) == 0x554D4551
    assert dev.read(m.SHM_LEN_LOW, 4) == 0xFFFF_FFFF


def test_empty_slot(ram, irq):
    dev = VirtioMmio(ram, irq, None)
    assert dev.read(m.MAGIC_VALUE, 4) == 0x74726976
    assert dev.read(m.DEVICE_ID, 4) == 0
    assert dev.read(m.QUEUE_NUM_MAX, 4) == 0
    dev.write(m.QUEUE_NOTIFY, 4, 0)
    dev.write(m.QUEUE_READY, 4, 1)
    assert dev.read(m.QUEUE_READY, 4) == 0


def test_feature_negotiation_requires_version_1(dev, ram):
    drv = GuestDriver(dev, ram)
    offered = drv.device_features()
    assert offered & v.F_VERSION_1
    assert not drv.negotiate(offered & ~v.F_VERSION_1)
    assert not drv.negotiate(offered | (1 << 40))  # a bit the device never offered
    assert drv.negotiate(v.F_VERSION_1)
    # After FEATURES_OK the driver features are frozen.
    drv.set(m.DRIVER_FEATURES_SEL, 1)
    drv.set(m.DRIVER_FEATURES, 0)
    assert dev.driver_features == v.F_VERSION_1
    # DRIVER_OK is refused without FEATURES_OK.
    drv.set(m.STATUS, 0)
    drv.set(m.STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER | v.STATUS_DRIVER_OK)
    assert not drv.reg(m.STATUS) & v.STATUS_DRIVER_OK


def test_queue_registers_and_reset(dev, ram, irq):
    drv = GuestDriver(dev, ram, qsize=8)
    drv.start()
    drv.set(m.QUEUE_SEL, 0)
    assert drv.reg(m.QUEUE_READY) == 1
    assert drv.reg(m.QUEUE_NUM) == 8
    assert drv.reg(m.QUEUE_DESC_LOW) == GuestDriver.DESC & 0xFFFF_FFFF
    # Reconfiguring a live queue is ignored.
    drv.set(m.QUEUE_NUM, 4)
    assert drv.reg(m.QUEUE_NUM) == 8
    drv.post_chain([(drv.alloc(16), 16, True)])
    drv.notify()
    assert irq.level and drv.reg(m.INTERRUPT_STATUS) == 1
    drv.set(m.STATUS, 0)
    assert not irq.level
    assert drv.reg(m.STATUS) == 0 and drv.reg(m.QUEUE_READY) == 0
    assert drv.reg(m.QUEUE_NUM) == dev.queues[0].num_max
    # Selecting a queue that does not exist reads as absent.
    drv.set(m.QUEUE_SEL, 5)
    assert drv.reg(m.QUEUE_NUM_MAX) == 0
    drv.set(m.QUEUE_NUM, 4)
    drv.set(m.QUEUE_READY, 1)


def test_invalid_queue_size_rejected(dev, ram):
    drv = GuestDriver(dev, ram)
    drv.negotiate(v.F_VERSION_1)
    drv.set(m.QUEUE_SEL, 0)
    for bad in (0, 3, 65536, 0xFFFF_FFFF):
        drv.set(m.QUEUE_NUM, bad)
        assert drv.reg(m.QUEUE_NUM) == dev.queues[0].num_max


def test_notify_before_driver_ok_waits(dev, ram, irq):
    drv = GuestDriver(dev, ram, qsize=8)
    assert drv.negotiate(drv.device_features())
    drv.setup_queue(0)
    buf = drv.alloc(32)
    drv.post_chain([(buf, 32, True)])
    drv.notify()
    assert drv.used() == [] and not irq.level
    drv.set(m.STATUS, drv.reg(m.STATUS) | v.STATUS_DRIVER_OK)
    assert drv.used() == [(0, 32)]
    assert irq.level
    assert drv.ack_interrupt() == 1
    assert not irq.level


def test_no_interrupt_flag_is_honoured(dev, ram, irq):
    drv = GuestDriver(dev, ram, qsize=8)
    drv.start()
    ram.write_int(GuestDriver.AVAIL, 2, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.post_chain([(drv.alloc(8), 8, True)])
    drv.notify()
    assert drv.used() == [(0, 8)]
    assert not irq.level


def test_hostile_register_accesses(dev, ram):
    for off in range(0, 0x200, 1):
        for size in (1, 2, 4, 8):
            dev.write(off, size, 0xFFFF_FFFF_FFFF_FFFF)
            dev.read(off, size)
    dev.write(m.STATUS, 4, 0)
    assert dev.read(m.MAGIC_VALUE, 4) == 0x74726976


def test_save_load_round_trip(dev, ram, irq):
    drv = GuestDriver(dev, ram, qsize=8)
    drv.start()
    drv.post_chain([(drv.alloc(8), 8, True)])
    drv.notify()
    state = dev.save()
    irq2 = IrqLine()
    dev2 = VirtioMmio(ram, irq2, VirtioRng())
    dev2.load(state)
    assert irq2.level
    assert dev2.read(m.STATUS, 4) == dev.read(m.STATUS, 4)
    assert dev2.queues[0].save() == dev.queues[0].save()
    drv.dev = dev2
    drv.post_chain([(drv.alloc(4), 4, True)])
    drv.notify()
    assert drv.used() == [(0, 8), (1, 4)]

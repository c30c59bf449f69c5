from __future__ import annotations

from virtio_guest import GuestDriver

from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.devices.virtio_rng import MAX_REQUEST, VirtioRng


def test_fills_writable_buffers(ram, irq):
    dev = VirtioMmio(ram, irq, VirtioRng())
    drv = GuestDriver(dev, ram, qsize=8)
    assert dev.read(m.DEVICE_ID, 4) == v.ID_ENTROPY
    drv.start()
    a, b = drv.alloc(64), drv.alloc(64)
    head = drv.post_chain([(a, 64, True), (b, 32, True)])
    drv.notify()
    assert drv.used() == [(head, 96)]
    assert irq.level
    got = ram.read(a, 64) + ram.read(b, 32)
    assert got != bytes(96) and len(set(got)) > 20
    assert ram.read(b + 32, 32) == bytes(32)  # nothing past the buffer


def test_huge_request_is_capped_and_readable_ignored(ram, irq):
    dev = VirtioMmio(ram, irq, VirtioRng())
    drv = GuestDriver(dev, ram, qsize=8)
    drv.start()
    ro = drv.alloc(16)
    big = drv.alloc(200 * 1024)
    head = drv.post_chain([(ro, 16, False), (big, 200 * 1024, True)])
    drv.notify()
    assert drv.used() == [(head, MAX_REQUEST)]
    assert ram.read(ro, 16) == bytes(16)
    assert ram.read(big + MAX_REQUEST, 1024) == bytes(1024)

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from virtio_guest import INDIRECT, NEXT, WRITE, GuestDriver

from pocketvm.backends.disk import DiskImage
from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_blk as b
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.base import IrqLine
from pocketvm.devices.virtio_blk import VirtioBlk
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM

DISK_SIZE = 256 * 1024


@pytest.fixture
def img(tmp_path) -> str:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.write(bytes(i % 256 for i in range(DISK_SIZE)))
    return str(path)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def disk_bytes(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class Blk:
    """A virtio-blk device on an image, with a started guest driver."""

    def __init__(self, ram, path: str, readonly: bool = False, qsize: int = 16):
        self.disk = DiskImage(path, readonly=readonly)
        self.irq = IrqLine()
        self.dev = VirtioMmio(ram, self.irq, VirtioBlk(self.disk, serial="pocket-serial-0001"))
        self.drv = GuestDriver(self.dev, ram, qsize)
        self.ram = ram

    def request(self, rtype: int, sector: int, data: bytes | None = None, read_len: int = 0) -> tuple[int, int]:
        """Post one request in the usual Linux framing; returns (head, status address)."""
        d = self.drv
        bufs = [(d.alloc(struct.pack("<IIQ", rtype, 0, sector)), 16, False)]
        if data is not None:
            bufs.append((d.alloc(data), len(data), False))
        if read_len:
            self.read_buf = d.alloc(read_len)
            bufs.append((self.read_buf, read_len, True))
        status = d.alloc(b"\xee")
        bufs.append((status, 1, True))
        return d.post_chain(bufs), status

    def status(self, addr: int) -> int:
        return self.ram.read_int(addr, 1)


@pytest.fixture
def blk(ram, img):
    dev = Blk(ram, img)
    dev.drv.start()
    yield dev
    dev.disk.close()


def test_config_space(blk):
    d = blk.drv
    features = d.device_features()
    assert features & (b.F_FLUSH | b.F_SEG_MAX | b.F_SIZE_MAX | b.F_BLK_SIZE | b.F_WRITE_ZEROES)
    assert not features & b.F_RO
    assert bool(features & b.F_DISCARD) == blk.disk.supports_discard
    assert not features & v.F_RING_EVENT_IDX
    assert blk.dev.read(m.CONFIG, 8) == DISK_SIZE // 512
    assert blk.dev.read(m.CONFIG, 4) == DISK_SIZE // 512  # low half
    assert blk.dev.read(m.CONFIG + 4, 4) == 0
    assert blk.dev.read(m.CONFIG + 12, 4) == b.QUEUE_SIZE - 2  # seg_max
    assert blk.dev.read(m.CONFIG + 20, 4) == 512  # blk_size
    assert blk.dev.read(m.CONFIG + 40, 4) == 1  # max_discard_seg
    assert blk.dev.read(m.CONFIG + 0x1000, 4) == 0  # past the config space


def test_write_then_read(blk, img):
    payload = os.urandom(1024)
    head, status = blk.request(b.T_OUT, 3, data=payload)
    blk.drv.notify()
    assert blk.drv.used() == [(head, 1)]
    assert blk.status(status) == b.S_OK
    assert blk.irq.level and blk.drv.ack_interrupt() == 1 and not blk.irq.level
    assert disk_bytes(img, 3 * 512, 1024) == payload

    head, status = blk.request(b.T_IN, 3, read_len=1536)
    blk.drv.notify()
    used = blk.drv.used()
    assert used == [(head, 1536 + 1)]
    assert blk.status(status) == b.S_OK
    data_addr = blk.read_buf
    assert blk.ram.read(data_addr, 1024) == payload
    assert blk.ram.read(data_addr + 1024, 512) == disk_bytes(img, 5 * 512, 512)


def test_unusual_framing(blk, img):
    # Header and data in one readable descriptor; status shares the data's buffer.
    d = blk.drv
    payload = b"\x42" * 512
    out = d.alloc(struct.pack("<IIQ", b.T_OUT, 0, 10) + payload)
    st = d.alloc(1)
    d.post_chain([(out, 16 + 512, False), (st, 1, True)])
    d.notify()
    assert blk.status(st) == b.S_OK
    assert disk_bytes(img, 10 * 512, 512) == payload
    hdr = d.alloc(struct.pack("<IIQ", b.T_IN, 0, 10))
    buf = d.alloc(513)
    d.post_chain([(hdr, 16, False), (buf, 100, True), (buf + 100, 413, True)])
    d.notify()
    assert blk.ram.read(buf, 512) == payload and blk.ram.read_int(buf + 512, 1) == b.S_OK


def test_errors_leave_disk_unchanged(blk, img):
    before = digest(img)
    cases = [
        (b.T_OUT, DISK_SIZE // 512, b"x" * 512, b.S_IOERR),  # just past the end
        (b.T_OUT, 2**63, b"x" * 512, b.S_IOERR),  # absurd sector
        (b.T_OUT, 0, b"x" * 100, b.S_IOERR),  # not whole sectors
        (99, 0, None, b.S_UNSUPP),
    ]
    for rtype, sector, data, expect in cases:
        _, status = blk.request(rtype, sector, data=data)
        blk.drv.notify()
        assert blk.status(status) == expect
    _, status = blk.request(b.T_IN, DISK_SIZE // 512 - 1, read_len=1024)
    blk.drv.notify()
    assert blk.status(status) == b.S_IOERR
    assert len(blk.drv.used()) == 5
    assert digest(img) == before


def test_get_id_and_flush(blk):
    head, status = blk.request(b.T_GET_ID, 0, read_len=20)
    blk.drv.notify()
    assert blk.drv.used() == [(head, 21)]
    assert blk.ram.read(blk.read_buf, 20) == b"pocket-serial-0001\0\0"
    _, status = blk.request(b.T_FLUSH, 0)
    blk.drv.notify()
    assert blk.status(status) == b.S_OK


def test_read_only_image(ram, img):
    before = digest(img)
    dev = Blk(ram, img, readonly=True)
    features = dev.drv.device_features()
    assert features & b.F_RO and not features & (b.F_DISCARD | b.F_WRITE_ZEROES)
    dev.drv.start()
    statuses = [dev.request(b.T_OUT, 0, data=b"\xaa" * 512)[1]]
    rng = struct.pack("<QII", 0, 8, 0)
    statuses.append(dev.request(b.T_WRITE_ZEROES, 0, data=rng)[1])
    statuses.append(dev.request(b.T_DISCARD, 0, data=rng)[1])
    statuses.append(dev.request(b.T_FLUSH, 0)[1])
    _, rd = dev.request(b.T_IN, 0, read_len=512)
    dev.drv.notify()
    assert [dev.status(s) for s in statuses] == [b.S_IOERR, b.S_IOERR, b.S_IOERR, b.S_OK]
    assert dev.status(rd) == b.S_OK
    assert ram.read(dev.read_buf, 512) == disk_bytes(img, 0, 512)
    dev.disk.close()
    assert digest(img) == before


def test_write_zeroes_and_discard(blk, img):
    _, st = blk.request(b.T_WRITE_ZEROES, 8, data=struct.pack("<QII", 8, 16, 0))
    blk.drv.notify()
    assert blk.status(st) == b.S_OK
    assert disk_bytes(img, 8 * 512, 16 * 512) == bytes(16 * 512)
    assert disk_bytes(img, 24 * 512, 4) == bytes(range(0, 4))
    # Unknown flags and unmap-on-discard are unsupported; two ranges exceed max_discard_seg.
    bad = [
        (b.T_WRITE_ZEROES, struct.pack("<QII", 0, 8, 2)),
        (b.T_DISCARD, struct.pack("<QII", 0, 8, 1)),
        (b.T_WRITE_ZEROES, struct.pack("<QII", 0, 8, 0) * 2),
    ]
    for rtype, data in bad:
        _, st = blk.request(rtype, 0, data=data)
        blk.drv.notify()
        assert blk.status(st) == b.S_UNSUPP
    _, st = blk.request(b.T_WRITE_ZEROES, 0, data=struct.pack("<QII", DISK_SIZE // 512 - 4, 8, 0))
    blk.drv.notify()
    assert blk.status(st) == b.S_IOERR
    _, st = blk.request(b.T_DISCARD, 0, data=struct.pack("<QII", 64, 64, 0))
    blk.drv.notify()
    if blk.disk.supports_discard:
        assert blk.status(st) == b.S_OK
        assert disk_bytes(img, 64 * 512, 64 * 512) == bytes(64 * 512)
    else:
        assert blk.status(st) == b.S_UNSUPP


def test_indirect_request(blk, img):
    d = blk.drv
    payload = os.urandom(512)
    hdr = d.alloc(struct.pack("<IIQ", b.T_OUT, 0, 20))
    data = d.alloc(payload)
    st = d.alloc(1)
    table = d.alloc(48)
    d.write_desc(0, hdr, 16, NEXT, 1, table=table)
    d.write_desc(1, data, 512, NEXT, 2, table=table)
    d.write_desc(2, st, 1, WRITE, 0, table=table)
    d.write_desc(5, table, 48, INDIRECT, 0)
    d.make_available(5)
    d.notify()
    assert d.used() == [(5, 1)]
    assert blk.status(st) == b.S_OK
    assert disk_bytes(img, 20 * 512, 512) == payload


def test_malformed_chains_complete_with_error(blk, img):
    d = blk.drv
    before = digest(img)
    hdr = d.alloc(struct.pack("<IIQ", b.T_OUT, 0, 0))
    st = d.alloc(1)

    # Data buffer outside RAM: IOERR in the (valid) status byte.
    d.write_desc(0, hdr, 16, NEXT, 1)
    d.write_desc(1, 0x1000, 512, NEXT, 2)
    d.write_desc(2, st, 1, WRITE, 0)
    d.make_available(0)
    d.notify()
    assert d.used() == [(0, 1)] and blk.status(st) == b.S_IOERR

    def ram_status_reset() -> None:
        blk.ram.write(st, b"\xee")

    # A loop: 3 -> 4 -> 12 -> 4 ...
    ram_status_reset()
    d.write_desc(3, hdr, 16, NEXT, 4)
    d.write_desc(4, st, 1, WRITE | NEXT, 12)
    d.write_desc(12, st, 1, WRITE | NEXT, 4)
    d.make_available(3)
    d.notify()
    assert d.used() == [(3, 1)] and blk.status(st) == b.S_IOERR

    # Next index beyond the table.
    ram_status_reset()
    d.write_desc(5, st, 1, WRITE | NEXT, 999)
    d.make_available(5)
    d.notify()
    assert d.used() == [(5, 1)] and blk.status(st) == b.S_IOERR

    # Device-readable after device-writable.
    ram_status_reset()
    d.write_desc(6, st, 1, WRITE | NEXT, 7)
    d.write_desc(7, hdr, 16, 0, 0)
    d.make_available(6)
    d.notify()
    assert d.used() == [(6, 1)] and blk.status(st) == b.S_IOERR

    # Nested indirect table, indirect with a bad length, indirect table outside RAM:
    # no status byte can be found, so the chain comes back with length 0.
    inner = d.alloc(16)
    outer = d.alloc(16)
    d.write_desc(0, inner, 16, INDIRECT, 0, table=outer)
    d.write_desc(8, outer, 16, INDIRECT, 0)
    d.write_desc(9, outer, 15, INDIRECT, 0)
    d.write_desc(10, 0x10, 64, INDIRECT, 0)
    d.write_desc(11, RAM_BASE + (1 << 20) - 8, 16, INDIRECT, 0)
    for head in (8, 9, 10, 11):
        d.make_available(head)
    d.notify()
    assert d.used() == [(8, 0), (9, 0), (10, 0), (11, 0)]

    # The device keeps working after all that.
    payload = b"\x99" * 512
    head, status = blk.request(b.T_OUT, 1, data=payload)
    d.notify()
    assert d.used() == [(head, 1)] and blk.status(status) == b.S_OK
    assert disk_bytes(img, 512, 512) == payload
    assert disk_bytes(img, 0, 512) == bytes(range(256)) * 2  # the malformed writes never landed
    assert digest(img) != before


def test_broken_queue_needs_reset(blk):
    d = blk.drv
    d.ram.write_int(GuestDriver.AVAIL + 4, 2, 999)  # head beyond the queue
    d.avail_idx = 1
    d.ram.write_int(GuestDriver.AVAIL + 2, 2, 1)
    d.notify()
    assert d.reg(m.STATUS) & v.STATUS_DEVICE_NEEDS_RESET
    assert d.ack_interrupt() == 2  # configuration change notification
    # Further notifications are ignored until the driver resets the device.
    d.notify()
    assert d.used() == []
    d.avail_idx = d.last_used = d.next_desc = 0
    d.ram.write(GuestDriver.AVAIL, bytes(64))
    d.ram.write(GuestDriver.USED, bytes(64))
    d.start()
    head, status = blk.request(b.T_FLUSH, 0)
    d.notify()
    assert d.used() == [(head, 1)] and blk.status(status) == b.S_OK


def test_too_many_available_and_rings_outside_ram(blk):
    d = blk.drv
    d.ram.write_int(GuestDriver.AVAIL + 2, 2, 100)  # 100 buffers in a queue of 16
    d.notify()
    assert d.reg(m.STATUS) & v.STATUS_DEVICE_NEEDS_RESET

    d.avail_idx = d.last_used = d.next_desc = 0
    d.ram.write(GuestDriver.AVAIL, bytes(64))
    d.ram.write(GuestDriver.USED, bytes(64))
    assert d.negotiate(d.device_features())
    d.set(m.QUEUE_SEL, 0)
    d.set(m.QUEUE_NUM, 16)
    d.set(m.QUEUE_DESC_LOW, 0x1000)  # below RAM
    d.set(m.QUEUE_DRIVER_LOW, GuestDriver.AVAIL & 0xFFFF_FFFF)
    d.set(m.QUEUE_DEVICE_LOW, 0xFFFF_F000)  # used ring outside RAM too
    d.set(m.QUEUE_READY, 1)
    d.set(m.STATUS, d.reg(m.STATUS) | v.STATUS_DRIVER_OK)
    d.make_available(0)
    d.notify()
    assert d.reg(m.STATUS) & v.STATUS_DEVICE_NEEDS_RESET


def test_index_wrap_around(blk, img):
    d = blk.drv
    q = blk.dev.queues[0]
    # As if the driver had already completed 65534 requests.
    q.last_avail = q.used_idx = 0xFFFE
    d.avail_idx = d.last_used = 0xFFFE
    d.ram.write_int(GuestDriver.AVAIL + 2, 2, 0xFFFE)
    d.ram.write_int(GuestDriver.USED + 2, 2, 0xFFFE)
    heads = []
    for i in range(5):
        head, status = blk.request(b.T_OUT, 100 + i, data=bytes([i + 1]) * 512)
        heads.append((head, status))
    d.notify()
    assert [h for h, _ in d.used()] == [h for h, _ in heads]
    assert d.ram.read_int(GuestDriver.USED + 2, 2) == 3  # wrapped past 0xFFFF
    for i, (_, status) in enumerate(heads):
        assert blk.status(status) == b.S_OK
        assert disk_bytes(img, (100 + i) * 512, 512) == bytes([i + 1]) * 512


def test_save_load_mid_operation(ram, img):
    first = Blk(ram, img)
    first.drv.start()
    first.request(b.T_OUT, 0, data=b"\x01" * 512)
    first.drv.notify()
    assert first.drv.used()
    # A request is posted but not yet notified when the snapshot is taken.
    head, status = first.request(b.T_OUT, 1, data=b"\x02" * 512)
    state = first.dev.save()
    ram_copy = ram.read(RAM_BASE, ram.size)
    first.disk.close()

    ram2 = GuestRAM(ram.size)
    ram2.write(RAM_BASE, ram_copy)
    second = Blk(ram2, img)
    second.dev.load(state)
    second.drv.avail_idx, second.drv.last_used = first.drv.avail_idx, first.drv.last_used
    second.drv.data_next, second.drv.next_desc = first.drv.data_next, first.drv.next_desc
    assert second.dev.read(m.STATUS, 4) & v.STATUS_DRIVER_OK
    second.drv.notify()
    assert second.drv.used() == [(head, 1)]
    assert ram2.read_int(status, 1) == b.S_OK
    assert disk_bytes(img, 0, 1024) == b"\x01" * 512 + b"\x02" * 512
    second.disk.close()

"""One test per hole the hostile-MMIO fuzz (test_devices_hostile_mmio.py) and
its review found, each built to fail on the device as it was before the fix."""

from __future__ import annotations

import struct
import tracemalloc

from virtio_guest import NEXT, WRITE, GuestDriver, Wire

from pocketvm.backends.disk import SECTOR_SIZE, DiskImage
from pocketvm.devices import rtc as r
from pocketvm.devices import uart as u
from pocketvm.devices import virtio_blk as b
from pocketvm.devices.base import IrqLine
from pocketvm.devices.rtc import GoldfishRtc
from pocketvm.devices.uart import Uart16550
from pocketvm.devices.virtio_blk import VirtioBlk
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM


def test_uart_loopback_keeps_a_fifo_of_bytes_not_all_of_them(irq: IrqLine) -> None:
    # Before: every byte transmitted in loopback mode was kept, so a guest
    # could grow host memory without end by writing THR in a loop.
    uart = Uart16550(irq, lambda data: None)
    uart.write(u.MCR, 1, u.MCR_LOOP)
    for i in range(1000):
        uart.write(u.RBR_THR_DLL, 1, i & 0xFF)
    received = []
    while uart.read(u.LSR, 1) & u.LSR_DR:
        received.append(uart.read(u.RBR_THR_DLL, 1))
    assert received == list(range(16))  # a 16550A holds 16; the rest overran


def test_uart_host_input_is_still_never_dropped(irq: IrqLine) -> None:
    uart = Uart16550(irq, lambda data: None)
    uart.feed(bytes(range(200)))
    received = []
    while uart.read(u.LSR, 1) & u.LSR_DR:
        received.append(uart.read(u.RBR_THR_DLL, 1))
    assert received == list(range(200))


def test_rtc_reset_disarms_the_alarm_and_lowers_its_interrupt(wire: Wire) -> None:
    # Before: the RTC had no reset, so after a guest reboot the new kernel
    # found the old alarm armed and its interrupt asserted.
    host = [10**18]
    rtc = GoldfishRtc(IrqLine(wire, 11), clock=lambda: host[0])
    guest_time = 5 * 10**18
    rtc.write(r.TIME_LOW, 8, guest_time)
    rtc.write(r.IRQ_ENABLED, 4, 1)
    rtc.write(r.ALARM_LOW, 8, guest_time - 1)  # in the past: fires at once
    rtc.write(r.ALARM_LOW, 8, guest_time + 10**9)  # and the next one armed
    assert wire.history[-1] is True and rtc.read(r.ALARM_STATUS, 4) == 1

    rtc.reset()
    assert wire.history[-1] is False
    assert rtc.read(r.ALARM_STATUS, 4) == 0 and rtc.read(r.IRQ_ENABLED, 4) == 0
    assert rtc.next_deadline() is None
    assert rtc.read(r.TIME_LOW, 8) == guest_time  # the clock keeps the guest's time
    host[0] += 2 * 10**9
    rtc.poll()
    rtc.write(r.IRQ_ENABLED, 4, 1)
    assert wire.history[-1] is False


def test_discard_payload_is_size_checked_before_it_is_copied(tmp_path, ram: GuestRAM) -> None:
    # Before: the whole device-readable part of the chain was copied first.
    # Descriptors may all alias the same RAM, so 100 of them claim 100 times
    # RAM; with indirect tables a guest made the host allocate terabytes.
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 1024))
    with DiskImage(path) as disk:
        drv = GuestDriver(VirtioMmio(ram, IrqLine(), VirtioBlk(disk)), ram, qsize=128)
        drv.start()
        header = drv.alloc(struct.pack("<IIQ", b.T_WRITE_ZEROES, 0, 0))
        status = drv.alloc(b"\xee")
        everything = [(RAM_BASE, ram.size, False)] * 100
        drv.post_chain([(header, 16, False), *everything, (status, 1, True)])
        tracemalloc.start()
        try:
            drv.notify()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert drv.used() == [(0, 1)]
    assert ram.read(status, 1) == bytes([b.S_UNSUPP])  # more ranges than max_discard_seg
    assert peak < ram.size


def test_a_notification_serves_at_most_a_queue_of_requests(tmp_path, ram: GuestRAM) -> None:
    # Each request reads a sector over its own available ring and header:
    # the read makes one more request available and points it at the next
    # sector. Before: one QUEUE_NOTIFY store served them all in a row (with
    # 65536 such sectors, forever), never returning to the guest or the run loop.
    qsize, chained = 16, 200
    readbuf = GuestDriver.AVAIL  # the sector lands on the available ring...
    header = readbuf + 0x100  # ...and on the request's own header
    sectors = []
    for k in range(chained):
        sector = bytearray(SECTOR_SIZE)
        struct.pack_into("<HH", sector, 0, 0, k + 2)  # avail flags, idx: one more available
        struct.pack_into("<IIQ", sector, header - readbuf, b.T_IN, 0, k + 1)  # ring entries stay 0
        sectors.append(bytes(sector))
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(sectors) + bytes(64 * SECTOR_SIZE))
    with DiskImage(path) as disk:
        drv = GuestDriver(VirtioMmio(ram, IrqLine(), VirtioBlk(disk)), ram, qsize=qsize)
        drv.start()
        status = drv.alloc(1)
        ram.write(header, struct.pack("<IIQ", b.T_IN, 0, 0))
        drv.write_desc(0, header, 16, NEXT, 1)
        drv.write_desc(1, readbuf, SECTOR_SIZE, WRITE | NEXT, 2)
        drv.write_desc(2, status, 1, WRITE, 0)
        drv.make_available(0)
        drv.notify()
        assert len(drv.used()) == qsize
        drv.notify()  # the rest were left waiting, not dropped
        assert len(drv.used()) == qsize
    assert ram.read(status, 1) == bytes([b.S_OK])

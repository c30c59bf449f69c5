"""One test per hole the hostile-MMIO fuzz (test_devices_hostile_mmio.py) and
its review found, each built to fail on the device as it was before the fix."""

from __future__ import annotations

from pocketvm.devices import uart as u
from pocketvm.devices.base import IrqLine
from pocketvm.devices.uart import Uart16550


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

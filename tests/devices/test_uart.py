from __future__ import annotations

import numpy as np

from pocketvm.cpu import state as S
from pocketvm.devices import uart as u
from pocketvm.devices.base import IrqLine
from pocketvm.devices.uart import Uart16550


def make() -> tuple[Uart16550, list[bytes], IrqLine]:
    out: list[bytes] = []
    irq = IrqLine()
    return Uart16550(irq, out.append), out, irq


def test_thr_bytes_go_to_output_and_dlab_registers_do_not():
    dev, out, _ = make()
    for b in b"hi\n":
        dev.write(u.RBR_THR_DLL, 1, b)
    dev.write(u.LCR, 1, 0x83)  # DLAB on
    dev.write(u.RBR_THR_DLL, 1, 0x01)
    dev.write(u.IER_DLM, 1, 0x02)
    assert dev.read(u.RBR_THR_DLL, 1) == 0x01
    assert dev.read(u.IER_DLM, 1) == 0x02
    dev.write(u.LCR, 1, 0x03)
    assert dev.read(u.IER_DLM, 1) == 0  # IER untouched by the DLM write
    assert b"".join(out) == b"hi\n"
    assert dev.read(u.LSR, 1) & (u.LSR_THRE | u.LSR_TEMT) == u.LSR_THRE | u.LSR_TEMT


def test_fed_input_is_read_in_order_and_never_dropped():
    dev, _, _ = make()
    assert dev.wants_input()
    data = bytes(range(256)) * 40  # far more than a 16-byte FIFO
    dev.feed(data[:5000])
    dev.feed(data[5000:])
    assert not dev.wants_input()
    got = bytearray()
    while dev.read(u.LSR, 1) & u.LSR_DR:
        got.append(dev.read(u.RBR_THR_DLL, 1))
    assert bytes(got) == data
    assert dev.wants_input()
    assert dev.read(u.RBR_THR_DLL, 1) == 0  # empty RBR reads 0


def test_fifo_reset_keeps_host_input():
    dev, _, _ = make()
    dev.feed(b"early")
    dev.write(u.IIR_FCR, 1, 0x07)  # enable + clear both FIFOs, as Linux at probe
    assert dev.read(u.RBR_THR_DLL, 1) == ord("e")


def test_rx_interrupt_and_iir_priority():
    dev, _, irq = make()
    assert dev.read(u.IIR_FCR, 1) == u.IIR_NO_INT
    dev.write(u.IER_DLM, 1, u.IER_RDI | u.IER_THRI)
    # THR is empty, so enabling THRI raises it at once.
    assert irq.level
    dev.feed(b"ab")
    assert dev.read(u.IIR_FCR, 1) & 0x0F == u.IIR_RDI  # RX beats THRE
    assert dev.read(u.RBR_THR_DLL, 1) == ord("a")
    assert dev.read(u.RBR_THR_DLL, 1) == ord("b")
    assert dev.read(u.IIR_FCR, 1) & 0x0F == u.IIR_THRI
    # Reading IIR while it reports THRE clears that interrupt.
    assert dev.read(u.IIR_FCR, 1) & 0x0F == u.IIR_NO_INT
    assert not irq.level
    # Writing THR re-arms it (the byte leaves immediately).
    dev.write(u.RBR_THR_DLL, 1, ord("x"))
    assert irq.level
    assert dev.read(u.IIR_FCR, 1) & 0x0F == u.IIR_THRI


def test_feed_raises_irq_only_when_enabled():
    dev, _, irq = make()
    dev.feed(b"x")
    assert not irq.level
    dev.write(u.IER_DLM, 1, u.IER_RDI)
    assert irq.level
    dev.read(u.RBR_THR_DLL, 1)
    assert not irq.level
    dev.feed(b"y")
    assert irq.level


def test_fifo_enabled_bits_in_iir():
    dev, _, _ = make()
    dev.write(u.IIR_FCR, 1, 0x01)
    assert dev.read(u.IIR_FCR, 1) == 0xC1


def test_loopback_and_modem_status():
    dev, out, _ = make()
    assert dev.read(u.MSR, 1) & 0xF0 == 0xB0
    dev.write(u.MCR, 1, u.MCR_LOOP | u.MCR_OUT2 | u.MCR_RTS)
    assert dev.read(u.MSR, 1) & 0xF0 == 0x90  # what Linux's 8250 probe checks
    dev.write(u.RBR_THR_DLL, 1, 0x5A)
    assert out == []
    assert dev.read(u.LSR, 1) & u.LSR_DR
    assert dev.read(u.RBR_THR_DLL, 1) == 0x5A


def test_scratch_and_unknown_registers():
    dev, _, _ = make()
    dev.write(u.SCR, 1, 0xA5)
    assert dev.read(u.SCR, 1) == 0xA5
    dev.write(0x40, 1, 1)  # outside the register file: ignored
    assert dev.read(0x40, 1) == 0


def test_save_load_mid_input():
    dev, _, _ = make()
    dev.write(u.IER_DLM, 1, u.IER_RDI)
    dev.write(u.SCR, 1, 7)
    dev.feed(b"hello")
    dev.read(u.RBR_THR_DLL, 1)
    state = dev.save()
    dev2, _, irq2 = make()
    dev2.load(state)
    assert irq2.level  # the pending RX interrupt is re-driven
    assert dev2.read(u.SCR, 1) == 7
    assert bytes(dev2.read(u.RBR_THR_DLL, 1) for _ in range(4)) == b"ello"
    assert not irq2.level


def attached() -> tuple[Uart16550, list[bytes], np.ndarray]:
    dev, out, _ = make()
    sh = S.new_shared_state(1)
    dev.attach_to_core(sh, BASE)
    return dev, out, sh


BASE = 0x1000_0000


def test_core_serves_thr_only_while_a_write_has_no_side_effect():
    dev, _, sh = attached()
    assert sh[S.SH_SINK_ADDR] == BASE + u.RBR_THR_DLL
    dev.write(u.LCR, 1, 0x83)  # DLAB: THR is the divisor latch
    assert sh[S.SH_SINK_ADDR] == 0
    dev.write(u.LCR, 1, 0x03)
    dev.write(u.IER_DLM, 1, u.IER_THRI)  # a THR write re-arms the THRE interrupt
    assert sh[S.SH_SINK_ADDR] == 0
    dev.write(u.IER_DLM, 1, 0)
    dev.write(u.MCR, 1, u.MCR_LOOP)  # loopback: the byte goes to the receiver
    assert sh[S.SH_SINK_ADDR] == 0
    dev.write(u.MCR, 1, 0)
    assert sh[S.SH_SINK_ADDR] == BASE


def test_core_reads_lsr_as_the_device_would():
    dev, _, sh = attached()
    assert sh[S.SH_CONST_ADDR] == BASE + u.LSR
    assert sh[S.SH_CONST_VALUE] == dev.read(u.LSR, 1) == u.LSR_THRE | u.LSR_TEMT
    dev.feed(b"x")
    assert sh[S.SH_CONST_VALUE] == dev.read(u.LSR, 1) == u.LSR_THRE | u.LSR_TEMT | u.LSR_DR
    dev.read(u.RBR_THR_DLL, 1)
    assert sh[S.SH_CONST_VALUE] == dev.read(u.LSR, 1) == u.LSR_THRE | u.LSR_TEMT


def test_drain_sends_the_sinks_bytes_before_a_later_write():
    dev, out, sh = attached()
    data = b"0123456789abcdefXYZ"
    sh[S.SH_SINK : S.SH_SINK + 3] = np.frombuffer(data + bytes(5), dtype=np.int64)
    sh[S.SH_SINK_LEN] = len(data)
    dev.drain()
    dev.write(u.RBR_THR_DLL, 1, ord("!"))
    assert b"".join(out) == data + b"!"
    assert sh[S.SH_SINK_LEN] == 0
    dev.drain()  # empty: nothing more
    assert b"".join(out) == data + b"!"


def test_a_restored_uart_rearms_and_forgets_a_sink_count():
    dev, _, sh = attached()
    state = dev.save()
    state["lcr"] = 0x83
    sh[S.SH_SINK_LEN] = 1 << 40
    dev.load(state)
    assert sh[S.SH_SINK_LEN] == 0 and sh[S.SH_SINK_ADDR] == 0
    state["lcr"] = 0x03
    dev.load(state)
    assert sh[S.SH_SINK_ADDR] == BASE

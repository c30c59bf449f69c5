"""ns16550a UART, laid out as on QEMU's virt board (reg-shift 0, 8-bit registers).

Transmission is instantaneous: every byte written to THR goes straight to
the `output` callback, so the transmitter is always empty (LSR.THRE|TEMT).

Reception never drops a byte. Host input is appended to an unbounded buffer
by `feed()`; the guest sees LSR.DR while that buffer is non-empty and pops
one byte per RBR read. A real 16550 would overrun its 16-byte FIFO when
input arrives before the driver is up; here the buffer simply waits.

With `attach_to_core()` the CPU core serves the two registers a polling
console driver uses for every byte (LSR reads and THR writes) without an
exit, while they have no side effect: THR while neither DLAB, loopback nor
the THRE interrupt is on, LSR always (its value only changes when the host
feeds input or the guest reads RBR, and both re-arm it). A Linux boot
prints ~15k bytes that way: ~30k exits, ~7 us of Python each.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from pocketvm.cpu.state import (
    SH_CONST_ADDR,
    SH_CONST_VALUE,
    SH_SINK,
    SH_SINK_ADDR,
    SH_SINK_LEN,
)
from pocketvm.devices.base import IrqLine
from pocketvm.devices.guestlog import guest_error

log = logging.getLogger(__name__)

# register offsets
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

# A 16550A's receive FIFO. Host input is kept whatever its length, but a byte
# the guest loops back to itself is lost when this many are waiting, as on
# the real part: otherwise a guest transmitting in loopback mode would grow
# host memory without end.
RX_FIFO_SIZE = 16

# Compact the input buffer once this many consumed bytes sit at its front;
# popping from the front of a bytearray one byte at a time would be O(n^2).
_COMPACT_AT = 4096


class Uart16550:
    name = "uart"

    def __init__(self, irq: IrqLine, output: Callable[[bytes], None]):
        self.irq = irq
        self.output = output
        self._rx = bytearray()
        self._rx_pos = 0
        self._sh: np.ndarray | None = None
        self._base = 0
        self.reset()

    def attach_to_core(self, sh: np.ndarray, base: int) -> None:
        """Let the core serve THR and LSR through `sh` (see the module's doc);
        the machine then calls `drain()` after every run of a hart."""
        self._sh = sh
        self._base = base
        self._arm()

    def drain(self) -> None:
        """Send what the core kept in its sink."""
        sh = self._sh
        if sh is None:
            return
        n = int(sh[SH_SINK_LEN])
        if n:
            data = sh[SH_SINK : SH_SINK + (n + 7) // 8].tobytes()[:n]
            sh[SH_SINK_LEN] = 0
            self.output(data)
            self.thr_ipending = True

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0x03  # 8N1, as firmware expects after reset
        self.mcr = MCR_OUT2
        self.scr = 0
        self.dll = 0x0C  # 9600 baud from a 1.8432 MHz clock
        self.dlm = 0
        self.fcr = 0
        # THRE interrupt latch: set when the holding register becomes empty,
        # cleared by reading IIR while it is the reported cause or writing THR.
        self.thr_ipending = False
        self._update_irq()

    # --- host side -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue bytes typed on the host console for the guest."""
        if data:
            self._rx += data
            self._update_irq()

    def wants_input(self) -> bool:
        """True when every fed byte has been read, so the host may read more stdin."""
        return self._rx_pos >= len(self._rx)

    # --- guest side ----------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            guest_error(log, "uart: %d-byte read at %#x treated as a byte read", size, offset)
        if offset == RBR_THR_DLL:
            value = self.dll if self.lcr & LCR_DLAB else self._pop_rx()
        elif offset == IER_DLM:
            value = self.dlm if self.lcr & LCR_DLAB else self.ier
        elif offset == IIR_FCR:
            value = self._iir()
            if value & 0x0F == IIR_THRI:
                self.thr_ipending = False
        elif offset == LCR:
            value = self.lcr
        elif offset == MCR:
            value = self.mcr
        elif offset == LSR:
            value = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx_pending() else 0)
        elif offset == MSR:
            value = self._msr()
        elif offset == SCR:
            value = self.scr
        else:
            guest_error(log, "uart: read of unknown register %#x", offset)
            value = 0
        self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            guest_error(log, "uart: %d-byte write at %#x treated as a byte write", size, offset)
        value &= 0xFF
        if offset == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                self.dll = value
            else:
                self._transmit(value)
        elif offset == IER_DLM:
            if self.lcr & LCR_DLAB:
                self.dlm = value
            else:
                changed = (self.ier ^ value) & IER_THRI
                self.ier = value & IER_MASK
                # Enabling THRI while THR is empty raises the interrupt at
                # once; drivers (Linux's 8250 "THRE test") rely on it.
                if changed:
                    self.thr_ipending = bool(self.ier & IER_THRI)
        elif offset == IIR_FCR:
            # Clearing the receive FIFO (bit 1) deliberately keeps host input:
            # drivers clear it at probe time, and no typed byte may be lost.
            self.fcr = value & 0xC9
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
        elif offset == SCR:
            self.scr = value
        elif offset in (LSR, MSR):
            pass  # read-only (factory test registers on a real part)
        else:
            guest_error(log, "uart: write of unknown register %#x", offset)
        self._update_irq()

    # --- internals -----------------------------------------------------------

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            if len(self._rx) - self._rx_pos < RX_FIFO_SIZE:
                self._rx.append(byte)
            else:
                guest_error(log, "uart: loopback byte lost, receive FIFO full", level=logging.DEBUG)
        else:
            self.output(bytes((byte,)))
        # The byte leaves at once, so THR is empty again: re-arm THRE.
        self.thr_ipending = True

    def _rx_pending(self) -> bool:
        return self._rx_pos < len(self._rx)

    def _pop_rx(self) -> int:
        if not self._rx_pending():
            return 0
        byte = self._rx[self._rx_pos]
        self._rx_pos += 1
        if self._rx_pos >= len(self._rx):
            self._rx.clear()
            self._rx_pos = 0
        elif self._rx_pos >= _COMPACT_AT:
            del self._rx[: self._rx_pos]
            self._rx_pos = 0
        return byte

    def _msr(self) -> int:
        if self.mcr & MCR_LOOP:
            # Loopback wires the modem outputs back to the inputs.
            value = 0
            if self.mcr & MCR_RTS:
                value |= MSR_CTS
            if self.mcr & MCR_DTR:
                value |= MSR_DSR
            if self.mcr & MCR_OUT1:
                value |= MSR_RI
            if self.mcr & MCR_OUT2:
                value |= MSR_DCD
            return value
        return MSR_DCD | MSR_DSR | MSR_CTS

    def _cause(self) -> int:
        """Highest-priority pending interrupt, as IIR bits 3:0."""
        if self.ier & IER_RDI and self._rx_pending():
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        return IIR_NO_INT

    def _iir(self) -> int:
        fifo = IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0
        return self._cause() | fifo

    def _update_irq(self) -> None:
        level = self._cause() != IIR_NO_INT
        if level != self.irq.level:
            self.irq.set(level)
        self._arm()

    def _arm(self) -> None:
        # Every change of state ends in _update_irq, which calls this.
        sh = self._sh
        if sh is None:
            return
        plain_thr = not (self.lcr & LCR_DLAB or self.mcr & MCR_LOOP or self.ier & IER_THRI)
        sh[SH_SINK_ADDR] = self._base + RBR_THR_DLL if plain_thr else 0
        sh[SH_CONST_ADDR] = self._base + LSR
        sh[SH_CONST_VALUE] = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx_pending() else 0)

    # --- snapshots -----------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "ier": self.ier,
            "lcr": self.lcr,
            "mcr": self.mcr,
            "scr": self.scr,
            "dll": self.dll,
            "dlm": self.dlm,
            "fcr": self.fcr,
            "thr_ipending": int(self.thr_ipending),
            "rx": bytes(self._rx[self._rx_pos :]),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.ier = int(state["ier"]) & IER_MASK
        self.lcr = int(state["lcr"]) & 0xFF
        self.mcr = int(state["mcr"]) & MCR_MASK
        self.scr = int(state["scr"]) & 0xFF
        self.dll = int(state["dll"]) & 0xFF
        self.dlm = int(state["dlm"]) & 0xFF
        self.fcr = int(state["fcr"]) & 0xC9
        self.thr_ipending = bool(state["thr_ipending"])
        self._rx = bytearray(state["rx"])
        self._rx_pos = 0
        # Re-drive the line unconditionally: the controller may have been reset.
        self.irq.set(self._cause() != IIR_NO_INT)
        if self._sh is not None:
            self._sh[SH_SINK_LEN] = 0  # the sink is drained before a save; never trust a count
        self._arm()

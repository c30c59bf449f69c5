"""A scripted guest for virtio-vsock device tests.

It drives the device through its MMIO registers and three rings in a real
GuestRAM, as Linux's virtio_transport does: receive buffers of one page
(header + 4 KiB), packets sent as a header buffer plus a payload buffer,
event buffers of 4 bytes. Host ends are real Unix sockets in a temporary
directory; `pump()` runs the device's poll as the run loop would.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from virtio_guest import WRITE, GuestDriver, Wire

from pocketvm.backends.vsock_unix import VsockUnixHost
from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices import virtio_vsock as vs
from pocketvm.devices.base import IrqLine
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM

HDR = vs.HDR
RX_BUF = HDR.size + 4096
GUEST_BUF_ALLOC = 256 * 1024


class Packet:
    def __init__(self, raw: bytes):
        (self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len, self.type, self.op, self.flags,
         self.buf_alloc, self.fwd_cnt) = HDR.unpack(raw[: HDR.size])  # fmt: skip
        self.payload = raw[HDR.size : HDR.size + self.len]

    def __repr__(self) -> str:
        return f"Packet(op={self.op}, {self.src_port}->{self.dst_port}, len={self.len}, flags={self.flags})"


class VsockGuest:
    """Guest side of a virtio-vsock device, with its host socket at `path`."""

    def __init__(self, path: Path, qsize: int = 64, cid: int = 3, ram_size: int = 16 << 20):
        self.ram = GuestRAM(ram_size)
        self.wire = Wire()
        self.host = VsockUnixHost(path)
        self.path = path
        self.dev = vs.VirtioVsock(self.host, cid)
        self.cid = cid
        self.mmio = VirtioMmio(self.ram, IrqLine(self.wire, 1), self.dev)
        self.qsize = qsize
        self.woken = threading.Event()
        self.host.attach(self.woken.set)
        self.drivers: list[GuestDriver] = []
        for q in range(3):
            d = GuestDriver(self.mmio, self.ram, qsize)
            base = RAM_BASE + 0x10000 * (q + 1)
            d.DESC, d.AVAIL, d.USED = base, base + 0x4000, base + 0x8000
            d.data_next = RAM_BASE + 0x100000 + q * 0x400000
            self.drivers.append(d)
        self.rx, self.tx, self.ev = self.drivers
        # Fixed buffers, one per descriptor, reused as the device returns them.
        self.rx_addr = [RAM_BASE + 0x100000 + i * 0x2000 for i in range(qsize)]
        self.tx_addr = [RAM_BASE + 0x500000 + i * 0x11000 for i in range(qsize)]
        self.tx_free = list(range(0, qsize, 2))  # header + payload descriptors in pairs
        self.received: list[Packet] = []
        self.events: list[int] = []
        self.repost = True  # collect() gives used receive buffers back at once
        self.repost_events = True  # collect() gives used event buffers back at once

    # --- bring-up ---------------------------------------------------------------------

    def start(self, rx_buffers: int | None = None, event_buffers: int = 4) -> None:
        assert self.rx.negotiate(v.F_VERSION_1)
        for q in range(3):
            self.drivers[q].setup_queue(q)
        self.rx.set(m.STATUS, self.rx.reg(m.STATUS) | v.STATUS_DRIVER_OK)
        self.post_rx(self.qsize if rx_buffers is None else rx_buffers)
        for i in range(event_buffers):
            self.post_event(i)

    def post_rx(self, count: int, notify: bool = True) -> None:
        for _ in range(count):
            idx = self.rx.next_desc
            self.rx.next_desc = (idx + 1) % self.qsize
            self.rx.write_desc(idx, self.rx_addr[idx], RX_BUF, WRITE, 0)
            self.rx.make_available(idx)
        if notify:
            self.rx.notify(vs.RX)

    def post_event(self, i: int) -> None:
        addr = RAM_BASE + 0xF00000 + 16 * i
        self.ev.write_desc(i, addr, 4, WRITE, 0)
        self.ev.make_available(i)
        self.ev.notify(vs.EVENT)

    # --- sending -------------------------------------------------------------------------

    def header(self, src_port: int, dst_port: int, op: int, length: int = 0, flags: int = 0,
               buf_alloc: int = GUEST_BUF_ALLOC, fwd_cnt: int = 0, src_cid: int | None = None,
               dst_cid: int = vs.HOST_CID, typ: int = vs.TYPE_STREAM) -> bytes:  # fmt: skip
        return HDR.pack(self.cid if src_cid is None else src_cid, dst_cid, src_port, dst_port, length, typ, op,
                        flags, buf_alloc, fwd_cnt)  # fmt: skip

    def send_raw(self, hdr: bytes, payload: bytes = b"", notify: bool = True, strict: bool = True) -> bool:
        """One packet as Linux sends it: a header buffer, then a payload buffer.
        False (or with `strict` an AssertionError) when the device took none back."""
        self._reclaim_tx()
        if not self.tx_free:
            assert not strict, "no free tx descriptors"
            return False
        idx = self.tx_free.pop(0)
        addr = self.tx_addr[idx]
        self.ram.write(addr, hdr)
        if payload:
            self.ram.write(addr + 64, payload)
            self.tx.write_desc(idx, addr, len(hdr), 1, idx + 1)  # NEXT
            self.tx.write_desc(idx + 1, addr + 64, len(payload), 0, 0)
        else:
            self.tx.write_desc(idx, addr, len(hdr), 0, 0)
        self.tx.make_available(idx)
        if notify:
            self.tx.notify(vs.TX)
        return True

    def rx_outstanding(self) -> int:
        return (self.rx.avail_idx - self.rx.last_used) & 0xFFFF

    def send(self, src_port: int, dst_port: int, op: int, payload: bytes = b"", **kw: int) -> None:
        self.send_raw(self.header(src_port, dst_port, op, len(payload), **kw), payload)

    def _reclaim_tx(self) -> None:
        for head, _ in self.tx.used():
            self.tx_free.append(head)

    # --- receiving ------------------------------------------------------------------------

    def collect(self, repost: bool | None = None) -> list[Packet]:
        """Packets the device put in receive buffers since the last call."""
        got = []
        used = self.rx.used()
        for head, length in used:
            if length >= HDR.size:  # unusable buffers come back empty
                got.append(Packet(self.ram.read(self.rx_addr[head], length)))
        for head, length in self.ev.used():
            self.events.append(struct.unpack("<I", self.ram.read(RAM_BASE + 0xF00000 + 16 * head, 4))[0])
            if self.repost_events:  # as Linux does once it has handled the event
                self.post_event(head)
        if (self.repost if repost is None else repost) and used:
            self.post_rx(len(used))
        self.received += got
        return got

    def pump(self, until: Callable[[], bool] | None = None, timeout: float = 10.0) -> None:
        """Run the device's poll as the run loop does, until `until()` holds
        (collecting packets as it goes), or once when no condition is given."""
        deadline = time.monotonic() + timeout
        while True:
            self.woken.clear()
            self.dev.poll()
            self.collect()
            if until is None or until():
                return
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            self.woken.wait(0.01)

    def wait_packet(self, op: int, timeout: float = 10.0) -> Packet:
        def found() -> bool:
            return any(p.op == op for p in self.received)

        self.pump(found, timeout)
        for i, p in enumerate(self.received):
            if p.op == op:
                return self.received.pop(i)
        raise AssertionError

    # --- host side ----------------------------------------------------------------------------

    def host_connect(self, port: int) -> socket.socket:
        s = self.host_socket()
        s.sendall(f"CONNECT {port}\n".encode())
        return s

    def host_socket(self) -> socket.socket:
        """A host program's stream to the VM's socket, before its CONNECT line."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        deadline = time.monotonic() + 10
        while True:
            try:
                s.connect(str(self.path))
                break
            except BlockingIOError:  # the listen backlog is full: let the device accept
                assert time.monotonic() < deadline, "the device accepts no connection"
                self.dev.poll()
                time.sleep(0.005)
        s.settimeout(10)
        return s

    def close(self) -> None:
        self.dev.close()

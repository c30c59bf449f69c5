from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable

import pytest
from virtio_guest import NEXT, PER_DESCRIPTOR, WRITE, GuestDriver, scramble_rings

from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices import virtio_net as n
from pocketvm.devices.base import IrqLine
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.devices.virtio_net import HELD_MAX, VirtioNet, default_mac
from pocketvm.memory import RAM_BASE, GuestRAM
from pocketvm.snapshot.format import dump_state, load_state

HDR = 12
RX_BUF = 1526  # what a driver without offloads posts: header + a full-size frame
MAC = bytes.fromhex("525400123456")


class FakeBackend:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.incoming: deque[bytes] = deque()
        self.wakes = 0
        self.closed = False

    def attach(self, wake: Callable[[], None]) -> None:
        self.wake = wake

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def receive(self) -> bytes | None:
        return self.incoming.popleft() if self.incoming else None

    def close(self) -> None:
        self.closed = True

    def arrive(self, *frames: bytes) -> None:
        self.incoming.extend(frames)
        self.wakes += 1


def frame(i: int, size: int = 60) -> bytes:
    """A distinct Ethernet frame: dst, src, ethertype, payload starting with i."""
    head = bytes.fromhex("ffffffffffff") + MAC + b"\x08\x00"
    return (head + i.to_bytes(4, "little") + bytes(size))[:size]


class Nic:
    """A guest driver of both queues, each with its own rings and data area in RAM."""

    def __init__(self, ram: GuestRAM, irq: IrqLine, qsize: int = 16):
        self.ram = ram
        self.backend = FakeBackend()
        self.net = VirtioNet(self.backend, MAC)
        self.dev = VirtioMmio(ram, irq, self.net)
        self.rx = GuestDriver(self.dev, ram, qsize)
        self.tx = GuestDriver(self.dev, ram, qsize)
        self.tx.DESC, self.tx.AVAIL, self.tx.USED = RAM_BASE + 0x5000, RAM_BASE + 0x7000, RAM_BASE + 0x8000
        self.tx.data_next = RAM_BASE + 0x80000

    def start(self) -> None:
        self.set_up()
        self.driver_ok()

    def set_up(self) -> None:
        assert self.rx.negotiate(v.F_VERSION_1 | n.F_MAC | n.F_STATUS)
        self.rx.setup_queue(n.RX)
        self.tx.setup_queue(n.TX)

    def driver_ok(self) -> None:
        self.rx.set(m.STATUS, self.rx.reg(m.STATUS) | v.STATUS_DRIVER_OK)

    def post_rx(self, size: int = RX_BUF, notify: bool = True) -> tuple[int, int]:
        addr = self.rx.alloc(size)
        head = self.rx.post_chain([(addr, size, True)])
        if notify:
            self.rx.notify(n.RX)
        return head, addr

    def send(self, data: bytes, hdr: bytes = bytes(HDR)) -> int:
        h, d = self.tx.alloc(hdr), self.tx.alloc(data)
        head = self.tx.post_chain([(h, len(hdr), False), (d, len(data), False)])
        self.tx.notify(n.TX)
        return head


@pytest.fixture
def nic(ram, irq) -> Nic:
    return Nic(ram, irq)


def test_identity_features_and_config(nic):
    dev = nic.dev
    assert dev.read(m.DEVICE_ID, 4) == v.ID_NET
    offered = nic.rx.device_features()
    assert offered & n.F_MAC and offered & n.F_STATUS and offered & v.F_VERSION_1
    offloads = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 22]  # csum, gso, mrg_rxbuf, ctrl_vq, mq
    assert not [bit for bit in offloads if offered >> bit & 1]
    assert not nic.rx.negotiate(v.F_VERSION_1 | 1 << 15)  # mergeable buffers: never offered
    nic.start()
    for q in (n.RX, n.TX):
        nic.rx.set(m.QUEUE_SEL, q)
        assert nic.rx.reg(m.QUEUE_NUM_MAX) == 256
    nic.rx.set(m.QUEUE_SEL, 2)
    assert nic.rx.reg(m.QUEUE_NUM_MAX) == 0  # no control queue
    assert bytes(dev.read(m.CONFIG + i, 1) for i in range(6)) == MAC
    assert dev.read(m.CONFIG + 6, 2) == n.S_LINK_UP
    assert dev.read(m.CONFIG + 8, 2) == 1  # max_virtqueue_pairs
    dev.write(m.CONFIG, 4, 0xFFFF_FFFF)  # the mac is not writable
    assert bytes(dev.read(m.CONFIG + i, 1) for i in range(6)) == MAC


def test_default_mac_and_bad_macs():
    assert default_mac(0) == bytes.fromhex("525400123456")
    assert default_mac(3) == bytes.fromhex("525400123459")
    with pytest.raises(ValueError):
        default_mac(-1)
    with pytest.raises(ValueError):
        default_mac(200)
    for bad in (b"\x52\x54\x00", bytes.fromhex("015400123456")):  # too short, multicast
        with pytest.raises(ValueError):
            VirtioNet(FakeBackend(), bad)


def test_transmit_strips_the_header(nic, irq):
    nic.start()
    data = frame(1, 98)
    head = nic.send(data, hdr=bytes(range(HDR)))
    assert nic.backend.sent == [data]
    assert nic.tx.used() == [(head, 0)]
    assert irq.level
    assert nic.net.stats["tx_frames"] == 1


def test_transmit_from_any_split_of_the_chain(nic):
    nic.start()
    data = frame(2, 1514)
    stream = bytes(HDR) + data
    # Header and frame in one buffer, then cut at odd places across three.
    one = nic.tx.alloc(stream)
    nic.tx.post_chain([(one, len(stream), False)])
    parts = [stream[:5], stream[5:700], stream[700:]]
    nic.tx.post_chain([(nic.tx.alloc(p), len(p), False) for p in parts])
    nic.tx.notify(n.TX)
    assert nic.backend.sent == [data, data]


@pytest.mark.parametrize("size", [0, 13, 65536])
def test_implausible_transmit_is_dropped(nic, size):
    nic.start()
    head = nic.send(bytes(size))
    assert nic.backend.sent == []
    assert nic.tx.used() == [(head, 0)]
    assert nic.net.stats["tx_dropped"] == 1


def test_transmit_with_writable_buffer_is_dropped(nic):
    nic.start()
    h, d = nic.tx.alloc(HDR), nic.tx.alloc(frame(3))
    head = nic.tx.post_chain([(h, HDR, False), (d, 60, True)])
    nic.tx.notify(n.TX)
    assert nic.backend.sent == []
    assert nic.tx.used() == [(head, 0)]
    assert nic.net.stats["tx_dropped"] == 1


def test_receive_into_posted_buffers(nic, irq, wire):
    nic.start()
    posted = [nic.post_rx() for _ in range(3)]
    assert not irq.level
    frames = [frame(10, 60), frame(11, 1514)]
    nic.backend.arrive(*frames)
    nic.net.deliver()
    assert nic.rx.used() == [(posted[0][0], HDR + 60), (posted[1][0], HDR + 1514)]
    assert wire.history == [True]
    for (_, addr), f in zip(posted, frames):
        got = nic.ram.read(addr, HDR + len(f))
        assert got[:HDR] == struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)  # num_buffers = 1
        assert got[HDR:] == f
    assert nic.ram.read(posted[2][1], RX_BUF) == bytes(RX_BUF)
    assert nic.net.stats["rx_frames"] == 2
    # Nothing more to deliver: no more interrupts, no more used entries.
    assert nic.rx.ack_interrupt() == m.INT_USED_BUFFER
    nic.net.deliver()
    assert nic.rx.used() == [] and not irq.level


def test_receive_across_several_writable_buffers(nic):
    nic.start()
    a, b = nic.rx.alloc(20), nic.rx.alloc(RX_BUF)
    head = nic.rx.post_chain([(a, 20, True), (b, RX_BUF, True)])
    f = frame(12, 100)
    nic.backend.arrive(f)
    nic.net.deliver()
    assert nic.rx.used() == [(head, HDR + 100)]
    assert (nic.ram.read(a, 20) + nic.ram.read(b, 92))[HDR:] == f


def test_frames_wait_for_buffers_and_keep_their_order(nic):
    nic.set_up()
    nic.backend.arrive(frame(0))
    nic.net.deliver()  # the driver is not ready yet
    nic.post_rx(notify=False)
    assert nic.net.held_frames == 1
    assert not nic.net.wants_attention()
    nic.driver_ok()  # buffers posted before DRIVER_OK are served now
    assert [u[1] for u in nic.rx.used()] == [HDR + 60]
    nic.backend.arrive(frame(1), frame(2), frame(3))
    nic.net.deliver()
    assert nic.net.held_frames == 3
    assert not nic.net.wants_attention()  # nothing to put them in
    posted = [nic.post_rx(notify=False) for _ in range(2)]
    assert nic.net.wants_attention()
    nic.rx.notify(n.RX)  # posting buffers delivers
    assert nic.rx.used() == [(h, HDR + 60) for h, _ in posted]
    assert [nic.ram.read(a + HDR, 60) for _, a in posted] == [frame(1), frame(2)]
    assert nic.net.held_frames == 1
    head, addr = nic.post_rx()
    assert nic.rx.used() == [(head, HDR + 60)]
    assert nic.ram.read(addr + HDR, 60) == frame(3)
    assert not nic.net.wants_attention()


def test_held_frames_are_bounded_oldest_dropped(nic):
    nic.start()
    extra = 37
    nic.backend.arrive(*(frame(i) for i in range(HELD_MAX + extra)))
    nic.net.deliver()
    assert nic.net.wants_attention()  # the backend may hold more than one batch
    nic.net.deliver()
    assert not nic.net.wants_attention()
    assert nic.net.held_frames == HELD_MAX
    assert nic.net.stats["rx_dropped"] == extra
    _, addr = nic.post_rx()
    assert nic.ram.read(addr + HDR, 60) == frame(extra)  # the oldest kept one
    # A flood of frames nobody reads keeps the monitor's memory where it was.
    for _ in range(20):
        nic.backend.arrive(*(frame(i) for i in range(500)))
        while nic.backend.incoming:
            nic.net.deliver()
        assert nic.net.held_frames <= HELD_MAX


def test_oversized_frame_is_dropped_not_truncated(nic):
    nic.start()
    small, small_addr = nic.post_rx(100)
    ok, ok_addr = nic.post_rx()
    nic.backend.arrive(frame(20, 200), frame(21, 80))
    nic.net.deliver()
    assert nic.rx.used() == [(small, 0), (ok, HDR + 80)]
    assert nic.ram.read(small_addr, 100) == bytes(100)
    assert nic.ram.read(ok_addr + HDR, 80) == frame(21, 80)
    assert nic.net.stats == {"tx_frames": 0, "rx_frames": 1, "rx_dropped": 1, "tx_dropped": 0}


def test_backend_frame_beyond_ethernet_size_is_not_held(nic):
    nic.start()
    nic.backend.arrive(bytes(65536), frame(22))
    nic.net.deliver()
    assert nic.net.held_frames == 1
    assert nic.net.stats["rx_dropped"] == 1


def test_readable_rx_buffer_is_returned_and_the_frame_kept(nic):
    nic.start()
    ro = nic.rx.alloc(RX_BUF)
    bad = nic.rx.post_chain([(ro, RX_BUF, False)])
    good, addr = nic.post_rx(notify=False)
    nic.backend.arrive(frame(30))
    nic.net.deliver()
    assert nic.rx.used() == [(bad, 0), (good, HDR + 60)]
    assert nic.ram.read(ro, RX_BUF) == bytes(RX_BUF)
    assert nic.ram.read(addr + HDR, 60) == frame(30)


def test_descriptors_outside_ram_and_huge_lengths(nic, ram):
    nic.start()
    end = RAM_BASE + ram.size
    huge = 2**32 - 1
    for drv, writable in ((nic.tx, False), (nic.rx, True)):
        flag = WRITE if writable else 0
        for i, (addr, length) in enumerate(((0, 64), (end - 8, 64), (RAM_BASE, huge), (2**64 - 16, 32))):
            drv.write_desc(i, addr, length, flag, 0)
            drv.make_available(i)
        # Eight descriptors aliasing the same 128 KiB claim 1 MiB: refused before any copy.
        for i in range(4, 12):
            drv.write_desc(i, RAM_BASE + 0x10000, 0x20000, flag | (NEXT if i < 11 else 0), i + 1)
        drv.make_available(4)
    nic.tx.notify(n.TX)
    nic.backend.arrive(*(frame(i) for i in range(5)))
    nic.net.deliver()
    assert [u[1] for u in nic.tx.used()] == [0] * 5
    assert nic.backend.sent == []
    assert nic.net.stats["tx_dropped"] == 5
    # Broken chains are handed back empty and keep the frame; the aliasing one is fine for rx.
    assert [u[1] for u in nic.rx.used()] == [0, 0, 0, 0, HDR + 60]
    assert nic.ram.read(RAM_BASE + 0x10000 + HDR, 60) == frame(0)
    assert nic.net.held_frames == 4
    assert not nic.dev.read(m.STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET


def test_rx_ring_outside_ram_asks_for_reset(nic, ram):
    nic.rx.negotiate(v.F_VERSION_1)
    nic.rx.AVAIL = RAM_BASE + ram.size + 0x1000
    nic.rx.setup_queue(n.RX)
    nic.tx.setup_queue(n.TX)
    nic.rx.set(m.STATUS, nic.rx.reg(m.STATUS) | v.STATUS_DRIVER_OK)
    nic.backend.arrive(frame(40))
    nic.net.deliver()
    assert nic.dev.read(m.STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET
    assert not nic.net.wants_attention()
    nic.net.deliver()  # and keeps quiet afterwards


def test_reset_drops_held_frames(nic):
    nic.start()
    nic.backend.arrive(frame(50), frame(51))
    nic.net.deliver()
    assert nic.net.held_frames == 2
    nic.rx.set(m.STATUS, 0)
    assert nic.net.held_frames == 0
    nic.rx.avail_idx = nic.rx.last_used = nic.rx.next_desc = 0
    nic.tx.avail_idx = nic.tx.last_used = nic.tx.next_desc = 0
    nic.start()
    nic.post_rx()
    assert nic.rx.used() == []


def test_save_load_round_trip(nic, ram):
    nic.start()
    nic.send(frame(60))
    nic.send(bytes(3))
    nic.post_rx(notify=False)
    nic.backend.arrive(frame(61), frame(62))
    nic.net.deliver()
    assert nic.net.held_frames == 1
    stats = dict(nic.net.stats)
    assert stats == {"tx_frames": 1, "rx_frames": 1, "rx_dropped": 0, "tx_dropped": 1}
    state = load_state(dump_state(nic.dev.save()))

    other = VirtioNet(FakeBackend(), default_mac(5))
    other_dev = VirtioMmio(ram, IrqLine(), other)
    other_dev.load(state)
    assert other.mac == MAC
    assert bytes(other_dev.read(m.CONFIG + i, 1) for i in range(6)) == MAC
    assert other.stats == stats
    assert other.held_frames == 0  # a restored VM's network starts empty
    # The restored device carries on where the old one left the rings.
    assert len(nic.rx.used()) == 1
    head, addr = nic.post_rx(notify=False)
    other.backend.arrive(frame(64))
    other.deliver()
    assert nic.rx.used() == [(head, HDR + 60)]
    assert ram.read(addr + HDR, 60) == frame(64)
    assert other.stats["rx_frames"] == 2


@pytest.mark.parametrize("restored_link_up", [False, True])
def test_restore_with_the_cable_out_tells_the_driver(nic, ram, restored_link_up):
    nic.start()
    state = load_state(dump_state(nic.dev.save()))  # taken with the link up
    irq = IrqLine()
    other_dev = VirtioMmio(ram, irq, VirtioNet(FakeBackend(), MAC, link_up=restored_link_up))
    generation = int(state["config_generation"])
    other_dev.load(state)
    changed = not restored_link_up
    assert bool(other_dev.read(m.INTERRUPT_STATUS, 4) & m.INT_CONFIG_CHANGE) == changed
    assert irq.level == changed
    assert other_dev.read(m.CONFIG_GENERATION, 4) == generation + changed
    assert other_dev.read(m.CONFIG + 6, 2) == (n.S_LINK_UP if restored_link_up else 0)


def test_random_rings_never_raise(ram, caplog):
    rnd = random.Random(4321)
    nic = Nic(ram, IrqLine())
    for _ in range(300):
        nic.start()
        for drv in (nic.rx, nic.tx):
            scramble_rings(
                drv, rnd, [0, RAM_BASE, PER_DESCRIPTOR, RAM_BASE + ram.size - 8, 2**64 - 1],
                [0, 1, 12, 13, 26, 60, 1526, 0x10_0000, 2**32 - 1],
            )  # fmt: skip
        ram.write(RAM_BASE + 0x10000, rnd.randbytes(4096))
        nic.backend.arrive(*(rnd.randbytes(rnd.choice([0, 14, 60, 1514, 70000])) for _ in range(rnd.randrange(40))))
        for _ in range(3):
            op = rnd.randrange(4)
            if op == 0:
                nic.rx.notify(n.RX)
            elif op == 1:
                nic.tx.notify(n.TX)
            elif op == 2:
                nic.net.deliver()
            else:
                nic.dev.write(m.CONFIG + rnd.randrange(16), rnd.choice([1, 2, 4]), rnd.getrandbits(32))
            nic.net.wants_attention()
        assert nic.net.held_frames <= HELD_MAX
        assert all(14 <= len(f) <= 65535 for f in nic.backend.sent)
        nic.rx.set(m.STATUS, 0)
    stats = nic.net.stats
    assert stats["tx_frames"] + stats["tx_dropped"] > 50  # the garbage really got in
    assert stats["rx_frames"] + stats["rx_dropped"] > 50
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]

"""A hostile guest drives every device of a real VirtualMachine through the
run loop's own MMIO path, with random registers, values and DMA.

Accesses go through `VirtualMachine._mmio` exactly as after a hart's MMIO
exit (bus lookup, store value truncated to the access size, load result
written to a register), only with a bus that checks what each device hands
back. The CPU core produces 1, 2, 4 and 8-byte accesses at any alignment
inside a page, so those are what the fuzz issues.

Between register traffic, guest RAM is scribbled over and virtqueues are
pointed anywhere (into RAM, across its end, beyond it) and notified, with
block requests of every type, sector and length, and entropy requests.
Afterwards nothing has escaped as an exception, no host memory outside RAM
and no read-only image changed, device state still survives a snapshot
round trip, and the machine still works after a reset.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from virtio_guest import INDIRECT, NEXT, WRITE, GuestDriver

from pocketvm.board import memmap as mm
from pocketvm.console import CapturedConsole
from pocketvm.cpu import state as S
from pocketvm.devices import plic as p
from pocketvm.devices import rtc as r
from pocketvm.devices import testdev as t
from pocketvm.devices import uart as u
from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_blk as b
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices import virtio_rng
from pocketvm.machine import Bus, DiskSpec, MiB, VirtualMachine, VMConfig
from pocketvm.snapshot.format import dump_state, load_state

MASK64 = (1 << 64) - 1
MEMORY = 16 * MiB
RAM_END = mm.RAM_BASE + MEMORY
GUARD = 64 * 1024  # host memory right after guest RAM, which no device may touch
GUARD_BYTE = 0xA5
DISK_SIZE = 64 * 1024
CPUS = 2
UART_FIFO = 16

# stores 0x5555 to the test device (power off), then spins
POWEROFF_PROGRAM = struct.pack("<5I", 0x001002B7, 0x00005337, 0x55530313, 0x0062A023, 0x0000006F)

# (base, size, interesting register offsets) of every window on the bus
VIRTIO_REGS = [
    m.MAGIC_VALUE, m.VERSION, m.DEVICE_ID, m.VENDOR_ID, m.DEVICE_FEATURES, m.DEVICE_FEATURES_SEL,
    m.DRIVER_FEATURES, m.DRIVER_FEATURES_SEL, m.QUEUE_SEL, m.QUEUE_NUM_MAX, m.QUEUE_NUM, m.QUEUE_READY,
    m.QUEUE_NOTIFY, m.INTERRUPT_STATUS, m.INTERRUPT_ACK, m.STATUS, m.QUEUE_DESC_LOW, m.QUEUE_DESC_HIGH,
    m.QUEUE_DRIVER_LOW, m.QUEUE_DRIVER_HIGH, m.QUEUE_DEVICE_LOW, m.QUEUE_DEVICE_HIGH, m.SHM_SEL,
    m.SHM_LEN_LOW, m.SHM_LEN_HIGH, m.SHM_BASE_LOW, m.SHM_BASE_HIGH, m.CONFIG_GENERATION,
    m.CONFIG, m.CONFIG + 8, m.CONFIG + 0x3C, m.CONFIG + 0x40,
]
PLIC_REGS = [
    4, 4 * 10, 4 * 95, 4 * 96, 0x3FC, p.PENDING_BASE, p.PENDING_BASE + 8, p.PENDING_BASE + 12,
    *(p.ENABLE_BASE + ctx * p.ENABLE_STRIDE + w for ctx in range(2 * CPUS + 2) for w in (0, 4, 8, 12)),
    *(p.CONTEXT_BASE + ctx * p.CONTEXT_STRIDE + reg for ctx in range(2 * CPUS + 2) for reg in (0, 4, 8)),
]
CLINT_REGS = [
    *(mm.CLINT_MSIP + 4 * h for h in range(10)),
    *(mm.CLINT_MTIMECMP + 8 * h + half for h in range(10) for half in (0, 4)),
    mm.CLINT_MTIME, mm.CLINT_MTIME + 4,
]
REGIONS = [
    ("test", mm.TEST_BASE, mm.TEST_SIZE, [0, 2, 4, 8]),
    ("rtc", mm.RTC_BASE, mm.RTC_SIZE, list(range(0, 0x24, 4))),
    ("clint", mm.CLINT_BASE, mm.CLINT_SIZE, CLINT_REGS),
    ("plic", mm.PLIC_BASE, mm.PLIC_SIZE, PLIC_REGS),
    ("uart", mm.UART_BASE, mm.UART_SIZE, list(range(8))),
    *((f"virtio{i}", mm.VIRTIO_BASE + i * mm.VIRTIO_STRIDE, mm.VIRTIO_STRIDE, VIRTIO_REGS) for i in range(mm.VIRTIO_SLOTS)),
]
# addresses near no device at all
UNMAPPED = [0, 8, mm.TEST_BASE - 4, mm.RTC_BASE + mm.RTC_SIZE, mm.CLINT_BASE - 8, mm.UART_BASE + mm.UART_SIZE,
            mm.VIRTIO_BASE + mm.VIRTIO_SLOTS * mm.VIRTIO_STRIDE, mm.RAM_BASE - 8, RAM_END, MASK64 - 7]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_i64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


class CheckedDevice:
    """Forwards to a device and checks that each read returns an int of the access size."""

    def __init__(self, dev: Any):
        self.dev = dev

    def read(self, offset: int, size: int) -> int:
        value = self.dev.read(offset, size)
        assert type(value) is int, (self.dev.name, offset, size, type(value))
        assert 0 <= value < 1 << (8 * size), (self.dev.name, offset, size, value)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        assert 0 <= value < 1 << (8 * size)  # the run loop's truncation
        self.dev.write(offset, size, value)


class CheckedBus(Bus):
    def __init__(self, bus: Bus):
        super().__init__()
        self.bus = bus

    def find(self, addr: int) -> tuple[Any, int] | None:
        found = self.bus.find(addr)
        return None if found is None else (CheckedDevice(found[0]), found[1])


class Guest:
    """Hart 0's loads and stores, performed as the run loop performs an MMIO exit."""

    def __init__(self, vm: VirtualMachine):
        self.vm = vm
        self.hart = vm.harts[0]
        self.bus = CheckedBus(vm.bus)
        self.requests: list[tuple[str, int]] = []

    def load(self, addr: int, size: int) -> int:
        st = self.hart.st
        st[S.EXIT_ADDR] = to_i64(addr)
        st[S.EXIT_SIZE] = size
        st[S.EXIT_RD] = 10
        st[S.X + 10] = 0
        self.vm._mmio(self.hart, S.EXIT_MMIO_LOAD, self.bus)
        return int(st[S.X + 10]) & MASK64

    def store(self, addr: int, size: int, value: int) -> None:
        st = self.hart.st
        st[S.EXIT_ADDR] = to_i64(addr)
        st[S.EXIT_SIZE] = size
        st[S.EXIT_VALUE] = to_i64(value)
        self.vm._mmio(self.hart, S.EXIT_MMIO_STORE, self.bus)
        # The device only records a request; acting on it is the run loop's
        # business, which this loop stands in for by taking it.
        req = self.vm.testdev.request
        if req is not None:
            assert req[0] in t.KINDS
            self.requests.append(req)
            self.vm.testdev.request = None


class Port:
    """One virtio-mmio window as a `GuestDriver` device, reached through the bus."""

    def __init__(self, guest: Guest, base: int):
        self.guest = guest
        self.base = base

    def read(self, offset: int, size: int) -> int:
        return self.guest.load(self.base + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.guest.store(self.base + offset, size, value)


# --- random choices --------------------------------------------------------------


def pick_value(rnd: random.Random, size: int) -> int:
    bits = 8 * size
    k = rnd.randrange(bits)
    choices = [
        0, 1, (1 << bits) - 1, 1 << k, (1 << k) - 1, (1 << (bits - 1)), rnd.getrandbits(bits), rnd.randrange(16),
        t.FINISHER_PASS, t.FINISHER_FAIL | rnd.getrandbits(16) << 16, t.FINISHER_RESET, 0x5554, 0x7778,
        rnd.choice([63, 64, 65, 95, 96, 97, 255, 256, 257, 1023, 1024, 32768, 65535, 65536]),
        mm.RAM_BASE + rnd.randrange(MEMORY), RAM_END - rnd.choice([0, 1, 2, 8, 16]),
    ]
    return rnd.choice(choices) & ((1 << bits) - 1)


def pick_offset(rnd: random.Random, size: int, regs: list[int]) -> int:
    roll = rnd.random()
    if roll < 0.6:
        return rnd.choice(regs) + rnd.choice([0, 0, 0, 0, 1, 2, 3, 4, -1, -4])
    if roll < 0.8:
        return rnd.randrange(size)
    if roll < 0.9:
        return size - rnd.randrange(1, 9)  # the last bytes, accesses running past the end
    return rnd.choice([-8, -1, size, size + 4])  # just outside: a neighbour or nothing


def pick_ring_addr(rnd: random.Random, align: int) -> int:
    """Where a guest might put a ring or buffer: mostly in RAM, sometimes not."""
    if rnd.random() < 0.9:
        return mm.RAM_BASE + rnd.randrange(0, MEMORY - 0x8000, align)
    return rnd.choice([
        RAM_END - rnd.choice([2, 4, 6, 8, 16, 64]),  # overlapping the end
        RAM_END, RAM_END + 0x1000, mm.RAM_BASE - 16, 0, MASK64 - 15, 1 << 32, mm.RAM_BASE + rnd.randrange(MEMORY),
    ])


def scribble(rnd: random.Random, vm: VirtualMachine, near: int | None = None) -> None:
    """Random bytes over part of RAM (around `near`, often a ring)."""
    length = rnd.choice([2, 16, 256, 4096, 65536])
    start = near if near is not None and vm.ram.contains(near) else mm.RAM_BASE + rnd.randrange(MEMORY)
    length = min(length, RAM_END - start)
    vm.ram.write(start, rnd.randbytes(length))


def write_clipped(vm: VirtualMachine, addr: int, data: bytes) -> None:
    """The part of `data` that lands in RAM, as a guest would have stored it."""
    lo, hi = max(addr, mm.RAM_BASE), min(addr + len(data), RAM_END)
    if lo < hi:
        vm.ram.write(lo, data[lo - addr : hi - addr])


# --- virtio episodes -----------------------------------------------------------------


def blk_request(rnd: random.Random, vm: VirtualMachine, capacity: int) -> list[tuple[int, int, bool]]:
    """A block request, from well-formed to nonsense; returns its (addr, len, writable) buffers."""
    rtype = rnd.choice([b.T_IN, b.T_OUT, b.T_FLUSH, b.T_GET_ID, b.T_DISCARD, b.T_WRITE_ZEROES, 2, 0xFFFF_FFFF])
    sector = rnd.choice([0, 1, capacity - 1, capacity, capacity + 1, MASK64, MASK64 // 512, rnd.getrandbits(64)])
    header = mm.RAM_BASE + rnd.randrange(0x10_0000, MEMORY - 0x1_0000, 8)
    vm.ram.write(header, struct.pack("<IIQ", rtype, rnd.getrandbits(32), sector))
    bufs = [(header, rnd.choice([16, 16, 16, 8, 17]), False)]
    if rtype in (b.T_DISCARD, b.T_WRITE_ZEROES) and rnd.random() < 0.8:
        payload = header + 16
        count = rnd.choice([0, 1, 8, capacity, b.MAX_DISCARD_SECTORS + 1, 0xFFFF_FFFF])
        flags = rnd.choice([0, 1, 2, 0xFFFF_FFFF])
        vm.ram.write(payload, struct.pack("<QII", rnd.choice([0, capacity - 1, sector]), count, flags))
        bufs.append((payload, rnd.choice([16, 16, 32, 15]), False))
    for _ in range(rnd.choice([0, 1, 1, 2, 3])):
        length = rnd.choice([0, 1, 511, 512, 512, 4096, 65536, 0xFFFF_FFFF])
        addr = pick_ring_addr(rnd, 1) if rnd.random() < 0.2 else mm.RAM_BASE + rnd.randrange(0x20_0000, MEMORY - 0x1_0000)
        bufs.append((addr, length, rtype != b.T_OUT if rnd.random() < 0.9 else rnd.random() < 0.5))
    if rnd.random() < 0.95:
        bufs.append((mm.RAM_BASE + rnd.randrange(0x20_0000, MEMORY), 1, True))  # the status byte
    return bufs


def rng_request(rnd: random.Random) -> list[tuple[int, int, bool]]:
    return [
        (pick_ring_addr(rnd, 1), rnd.choice([0, 1, 64, 4096, 65536, 0x10_0000, 0xFFFF_FFFF]), rnd.random() < 0.9)
        for _ in range(rnd.choice([1, 1, 2, 4]))
    ]


def post(rnd: random.Random, vm: VirtualMachine, q: dict[str, int], bufs: list[tuple[int, int, bool]], slot: int) -> None:
    """Describe `bufs` as a chain (sometimes through an indirect table) and make it available."""
    num = q["num"]
    descs = [
        struct.pack("<QIHH", addr, length, (WRITE if w else 0) | (NEXT if i + 1 < len(bufs) else 0), (slot + i + 1) % num)
        for i, (addr, length, w) in enumerate(bufs)
    ]
    if rnd.random() < 0.2:  # indirect: the table holds the chain, numbered from 0
        table = mm.RAM_BASE + rnd.randrange(0x10_0000, MEMORY - 0x1_0000, 16)
        descs = [d[:14] + struct.pack("<H", (i + 1) % 64) for i, d in enumerate(descs)]
        vm.ram.write(table, b"".join(descs))
        length = rnd.choice([16 * len(descs), 16 * len(descs), 0, 8, 16 * 2000])
        descs = [struct.pack("<QIHH", table, length, INDIRECT | rnd.choice([0, 0, 0, NEXT]), 0)]
    for i, d in enumerate(descs):
        write_clipped(vm, q["desc"] + 16 * ((slot + i) % num), d)
    if rnd.random() < 0.1:  # garbage over the chain just built
        write_clipped(vm, q["desc"] + 16 * slot, rnd.randbytes(16 * len(descs)))
    idx = q["avail_idx"]
    write_clipped(vm, q["avail"] + 4 + 2 * (idx % num), struct.pack("<H", slot if rnd.random() < 0.95 else rnd.getrandbits(16)))
    q["avail_idx"] = (idx + 1) & 0xFFFF
    write_clipped(vm, q["avail"], struct.pack("<HH", rnd.choice([0, 0, 1, 0xFFFF]), q["avail_idx"]))


def virtio_episode(rnd: random.Random, guest: Guest, vm: VirtualMachine, slot: int) -> None:
    """Bring a virtio device up (more or less by the rules) and throw requests at it."""
    base = mm.VIRTIO_BASE + slot * mm.VIRTIO_STRIDE
    port = Port(guest, base)
    transport = vm.virtio[slot]
    device = transport.device

    def reg(off: int, value: int) -> None:
        guest.store(base + off, 4, value)

    if rnd.random() < 0.9:
        reg(m.STATUS, 0)
    status = 0
    for bit in (v.STATUS_ACKNOWLEDGE, v.STATUS_DRIVER):
        if rnd.random() < 0.95:
            status |= bit
            reg(m.STATUS, status)
    offered = 0
    for sel in (0, 1):
        reg(m.DEVICE_FEATURES_SEL, sel)
        offered |= port.read(m.DEVICE_FEATURES, 4) << (32 * sel)
    features = offered
    if rnd.random() < 0.2:
        features = rnd.choice([offered & ~v.F_RING_INDIRECT_DESC, 0, MASK64, offered | 1 << rnd.randrange(64)])
    for sel in (0, 1) if rnd.random() < 0.9 else rnd.choice([(1,), (2, 0, 1), (0xFFFF_FFFF,)]):
        reg(m.DRIVER_FEATURES_SEL, sel)
        reg(m.DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else rnd.getrandbits(32))
    status |= v.STATUS_FEATURES_OK
    reg(m.STATUS, status if rnd.random() < 0.95 else rnd.getrandbits(8))

    qsel = 0 if rnd.random() < 0.9 else rnd.choice([1, 0xFFFF_FFFF])
    reg(m.QUEUE_SEL, qsel)
    num_max = port.read(m.QUEUE_NUM_MAX, 4)
    num = rnd.choice([num_max, num_max, 16, 16, 1, 2, 0, 3, num_max * 2, 0xFFFF_FFFF]) if num_max else 16
    reg(m.QUEUE_NUM, num)
    q = {"num": port.read(m.QUEUE_NUM, 4) or 16, "avail_idx": 0}
    rings = {"desc": (m.QUEUE_DESC_LOW, 16), "avail": (m.QUEUE_DRIVER_LOW, 2), "used": (m.QUEUE_DEVICE_LOW, 4)}
    for name, (low, align) in rings.items():
        addr = pick_ring_addr(rnd, align)
        if name == "used" and rnd.random() < 0.1:  # right over the available ring
            addr = q["avail"] + rnd.choice([0, 2, 4])
        reg(low, addr & 0xFFFF_FFFF)
        reg(low + 4, addr >> 32)
        # What the device really uses (a ready queue ignores new addresses).
        q[name] = port.read(low, 4) | port.read(low + 4, 4) << 32
    if device is not None and qsel == 0 and rnd.random() < 0.7:
        # Continue the ring where the device's counters are, or nothing gets popped.
        q["avail_idx"] = transport.queues[0].last_avail
    reg(m.QUEUE_READY, 1 if rnd.random() < 0.9 else rnd.choice([0, 2, 0xFFFF_FFFF]))
    status |= v.STATUS_DRIVER_OK
    reg(m.STATUS, status)

    for _ in range(rnd.randrange(1, 6)):
        if isinstance(device, b.VirtioBlk):
            bufs = blk_request(rnd, vm, device.disk.sectors)
        else:
            bufs = rng_request(rnd)
        post(rnd, vm, q, bufs, rnd.randrange(q["num"]))
        if rnd.random() < 0.2:
            scribble(rnd, vm, near=rnd.choice([q["desc"], q["avail"], q["used"]]))
        reg(m.QUEUE_NOTIFY, rnd.choice([0, 0, 0, 0, 1, 0xFFFF, 0xFFFF_FFFF]))
        if rnd.random() < 0.3:
            guest.store(base + m.INTERRUPT_ACK, 4, port.read(m.INTERRUPT_STATUS, 4))


# --- other devices, as a guest driver (or attacker) would use them --------------------


def uart_episode(rnd: random.Random, guest: Guest) -> None:
    """A burst of transmitted bytes, often looped back to the receiver, then some reading."""
    base = mm.UART_BASE
    guest.store(base + u.LCR, 1, rnd.choice([0x03, 0x03, 0x03 | u.LCR_DLAB, rnd.getrandbits(8)]))
    guest.store(base + u.MCR, 1, rnd.choice([u.MCR_LOOP | u.MCR_OUT2, u.MCR_OUT2, 0xFF, rnd.getrandbits(8)]))
    guest.store(base + u.IER_DLM, 1, rnd.getrandbits(8))
    guest.store(base + u.IIR_FCR, 1, rnd.getrandbits(8))
    for _ in range(rnd.choice([1, 16, 17, 300, 3000])):
        guest.store(base + u.RBR_THR_DLL, rnd.choice([1, 1, 1, 2, 4, 8]), rnd.getrandbits(64))
    for _ in range(rnd.randrange(40)):
        guest.load(base + rnd.choice([u.RBR_THR_DLL, u.RBR_THR_DLL, u.IIR_FCR, u.LSR, u.MSR, 8, 0xFF]), rnd.choice([1, 1, 4]))


def rtc_episode(rnd: random.Random, guest: Guest, vm: VirtualMachine) -> None:
    """Clock set anywhere, alarms in the past, the future and at the end of time."""
    base = mm.RTC_BASE
    now = guest.load(base + r.TIME_LOW, 8)
    guest.store(base + r.IRQ_ENABLED, 4, rnd.choice([1, 1, 0, 0xFFFF_FFFF]))
    if rnd.random() < 0.3:
        wanted = rnd.choice([0, MASK64, now + (1 << 62), rnd.getrandbits(64)])
        guest.store(base + r.TIME_HIGH, 4, wanted >> 32)
        guest.store(base + r.TIME_LOW, 4, wanted & 0xFFFF_FFFF)
    alarm = rnd.choice([0, now - 10**9, now, now + 10**6, now + 10**15, MASK64, 1 << 63, rnd.getrandbits(64)]) & MASK64
    if rnd.random() < 0.5:
        guest.store(base + r.ALARM_LOW, 8, alarm)
    else:
        guest.store(base + r.ALARM_HIGH, 4, alarm >> 32)
        guest.store(base + r.ALARM_LOW, 4, alarm & 0xFFFF_FFFF)
    vm.rtc.poll()
    vm.rtc.next_deadline()
    guest.load(base + r.ALARM_STATUS, 4)
    for reg in (r.CLEAR_ALARM, r.CLEAR_INTERRUPT):
        if rnd.random() < 0.3:
            guest.store(base + reg, 4, rnd.getrandbits(32))


def plic_episode(rnd: random.Random, guest: Guest) -> None:
    """Priorities, enables and thresholds for any context, claims and bogus completions."""
    base = mm.PLIC_BASE
    ctx = rnd.randrange(2 * CPUS + 2)  # the last two contexts do not exist
    src = rnd.choice([0, 1, 2, 3, mm.IRQ_UART, mm.IRQ_RTC, 95, 96, 97, 1023, 1024])
    if 4 * src < p.PENDING_BASE:
        guest.store(base + 4 * src, 4, rnd.choice([0, 1, 7, 8, 0xFFFF_FFFF]))
    guest.store(base + p.ENABLE_BASE + ctx * p.ENABLE_STRIDE + 4 * (src // 32), 4, rnd.choice([1 << (src % 32), 0, 0xFFFF_FFFF]))
    context = base + p.CONTEXT_BASE + ctx * p.CONTEXT_STRIDE
    guest.store(context + p.CONTEXT_THRESHOLD, 4, rnd.choice([0, 0, 1, 7, 8, 0xFFFF_FFFF]))
    for _ in range(rnd.randrange(4)):
        claimed = guest.load(context + p.CONTEXT_CLAIM, 4)
        guest.store(context + p.CONTEXT_CLAIM, 4, rnd.choice([claimed, claimed, 0, src, 96, 0xFFFF_FFFF]))


# --- the fuzz ---------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    rnd = random.Random(7)
    rw, ro = tmp_path / "rw.img", tmp_path / "ro.img"
    rw.write_bytes(rnd.randbytes(DISK_SIZE))
    ro.write_bytes(rnd.randbytes(DISK_SIZE))
    return rw, ro


@pytest.fixture
def backing() -> Iterator[mmap.mmap]:
    """The VM's RAM mapping, with a guard region after RAM: any device write
    past the end of RAM would land there."""
    mapping = mmap.mmap(-1, MEMORY + GUARD)
    mapping[MEMORY:] = bytes([GUARD_BYTE]) * GUARD
    yield mapping


@pytest.fixture
def vm(
    tmp_path: Path, images: tuple[Path, Path], backing: mmap.mmap, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VirtualMachine]:
    program = tmp_path / "poweroff.bin"
    program.write_bytes(POWEROFF_PROGRAM)
    # Entropy that repeats, so the whole run does (it lands in rings and buffers).
    entropy = random.Random(11)
    monkeypatch.setattr(virtio_rng, "os", SimpleNamespace(urandom=entropy.randbytes))
    rw, ro = images
    config = VMConfig(
        memory=MEMORY, cpus=CPUS, kernel=program, bios=None, rng=True, deterministic=True,
        disks=[DiskSpec(rw), DiskSpec(ro, readonly=True)],
    )
    machine = VirtualMachine(config, CapturedConsole(), ram_backing=backing)
    # Wall-clock time that moves 1 ms per look, so alarms fire at the same points in every run.
    machine.rtc.clock = itertools.count(1_700_000_000 * 10**9, 10**6).__next__
    yield machine
    machine.close()


def counting(push: Any, counts: list[int], slot: int) -> Any:
    def push_and_count(head: int, written: int) -> None:
        counts[slot] += 1
        push(head, written)

    return push_and_count


def fuzz_registers(rnd: random.Random, guest: Guest, vm: VirtualMachine, rounds: int) -> None:
    for name, base, size, regs in REGIONS:
        for _ in range(rounds):
            width = rnd.choice([1, 2, 4, 4, 4, 8])
            addr = base + pick_offset(rnd, size, regs)
            if rnd.random() < 0.02:
                addr = rnd.choice(UNMAPPED)
            if rnd.random() < 0.55:
                guest.store(addr, width, pick_value(rnd, width))
            else:
                guest.load(addr, width)
            if rnd.random() < 0.01:
                scribble(rnd, vm)
            if name == "rtc" and rnd.random() < 0.1:
                vm.rtc.poll()
                vm.rtc.next_deadline()


def test_random_mmio_and_dma_through_the_run_loop_path(
    vm: VirtualMachine, images: tuple[Path, Path], backing: mmap.mmap, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rw, ro = images
    ro_digest = sha256(ro)
    guest = Guest(vm)
    rnd = random.Random(20240611)
    completed = [0] * mm.VIRTIO_SLOTS
    for slot, transport in enumerate(vm.virtio):
        for q in transport.queues:
            q.push = counting(q.push, completed, slot)  # type: ignore[method-assign]
    for _ in range(3):
        fuzz_registers(rnd, guest, vm, 1000)
        for _ in range(20):
            uart_episode(rnd, guest)
        for _ in range(200):
            rtc_episode(rnd, guest, vm)
            plic_episode(rnd, guest)
        for slot in range(mm.VIRTIO_SLOTS):
            for _ in range(150 if vm.virtio[slot].device is not None else 10):
                virtio_episode(rnd, guest, vm, slot)
                if rnd.random() < 0.1:
                    scribble(rnd, vm)
        rtc_episode(rnd, guest, vm)  # leave an alarm behind for the reset
        vm.guest_time()
        vm._next_timer_deadline()

        assert backing[MEMORY:] == bytes([GUARD_BYTE]) * GUARD
        assert sha256(ro) == ro_digest
        assert rw.stat().st_size == DISK_SIZE and ro.stat().st_size == DISK_SIZE
        # Transmitted bytes looped back to the receiver are bounded by its FIFO.
        assert len(vm.uart.save()["rx"]) <= UART_FIFO
        # Whatever state the guest left behind, a snapshot can hold it.
        for dev in vm.devices().values():
            state = load_state(dump_state({"s": dev.save()}))["s"]
            dev.load(state)
            assert load_state(dump_state({"s": dev.save()}))["s"] == state
        # A reboot starts from quiet devices: no interrupt asserted, no alarm armed.
        vm.reset()
        assert vm.plic.save()["levels"] == 0
        assert all(int(h.st[S.EXT_IRQ]) == 0 for h in vm.harts)
        assert vm.rtc.next_deadline() is None

    # The guest's poking really went deep: requests were completed and all
    # three test-device requests were seen (and left to the run loop).
    assert all(n > 50 for n in completed[:3]), completed
    assert {kind for kind, _ in guest.requests} == set(t.KINDS)
    # The transport's last-resort guard was never needed.
    assert not [rec for rec in caplog.records if "crashed" in rec.getMessage()]

    # The machine still works: devices answer normal requests, the program powers off.
    check_devices_work(guest, vm, rw)
    status = vm.run(max_instructions=1_000_000)
    assert status.reason == "poweroff", status
    vm.close()
    assert all(d.fd == -1 for d in vm.disks)


def check_devices_work(guest: Guest, vm: VirtualMachine, rw: Path) -> None:
    blk = GuestDriver(Port(guest, mm.VIRTIO_BASE), vm.ram)
    blk.start()
    header = blk.alloc(struct.pack("<IIQ", b.T_IN, 0, 3))
    data = blk.alloc(1024)
    status = blk.alloc(b"\xee")
    blk.post_chain([(header, 16, False), (data, 1024, True), (status, 1, True)])
    blk.notify()
    assert blk.used() == [(0, 1025)]
    assert vm.ram.read(status, 1) == bytes([b.S_OK])
    assert vm.ram.read(data, 1024) == rw.read_bytes()[3 * 512 : 5 * 512]

    rng = GuestDriver(Port(guest, mm.VIRTIO_BASE + 2 * mm.VIRTIO_STRIDE), vm.ram)
    rng.DESC, rng.AVAIL, rng.USED = (a + 0x10_0000 for a in (rng.DESC, rng.AVAIL, rng.USED))  # away from blk's rings
    rng.start()
    buf = rng.alloc(64)
    rng.post_chain([(buf, 64, True)])
    rng.notify()
    assert rng.used() == [(0, 64)]

    uart_out = len(vm.console.output)  # type: ignore[attr-defined]
    guest.store(mm.UART_BASE + u.RBR_THR_DLL, 1, ord("k"))
    assert bytes(vm.console.output[uart_out:]) == b"k"  # type: ignore[attr-defined]

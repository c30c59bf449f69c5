"""The flattened device tree (DTB) that describes pocketvm's board to the guest.

The tree follows what QEMU's `virt` machine gives OpenSBI and Linux (same node
names, addresses, interrupt numbers and phandle wiring), so a guest sees the
same hardware on both. It is built with the `fdt` package, which serializes a
version 17 blob with an empty memory reservation map.
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field

import fdt as libfdt

from pocketvm.board import memmap
from pocketvm.cpu.state import IRQ_MEI, IRQ_MSI, IRQ_MTI, IRQ_SEI, MAX_HARTS

UART_CLOCK_HZ = 3_686_400
ISA_EXTENSIONS = ("i", "m", "a", "f", "d", "c", "zicsr", "zifencei")
ISA_STRING = "rv64imafdc_zicsr_zifencei"
MMU_TYPE = "riscv,sv48"  # the widest mode the core supports; Linux probes downwards
TEST_POWEROFF_VALUE = 0x5555
TEST_REBOOT_VALUE = 0x7777
STDOUT_PATH = f"/soc/serial@{memmap.UART_BASE:x}"
# riscv,ndev counts sources 1..N; source 0 means "no interrupt" and is not a device.
PLIC_NDEV = memmap.PLIC_NUM_SOURCES - 1


@dataclass
class BoardConfig:
    memory_size: int
    nharts: int
    bootargs: str = ""
    initrd_range: tuple[int, int] | None = None  # [start, end) guest physical
    virtio_slots: list[int] = field(default_factory=list)  # populated slot numbers
    # Seeds the guest kernel's random pool at boot (/chosen/rng-seed), as QEMU
    # does; without it Linux burns CPU gathering jitter entropy before the
    # first getrandom() returns. None: fresh bytes from the host; b"": omit.
    rng_seed: bytes | None = None


def _cells64(value: int) -> tuple[int, int]:
    return (value >> 32) & 0xFFFF_FFFF, value & 0xFFFF_FFFF


def _reg(base: int, size: int) -> libfdt.PropWords:
    # Every bus in this tree uses #address-cells = #size-cells = 2.
    return libfdt.PropWords("reg", *_cells64(base), *_cells64(size))


def _node(name: str, *items: libfdt.Node | libfdt.Property) -> libfdt.Node:
    return libfdt.Node(name, *items)


def _validate(cfg: BoardConfig) -> None:
    if cfg.memory_size <= 0 or cfg.memory_size % 4096:
        raise ValueError(f"memory size must be a positive multiple of 4 KiB, got {cfg.memory_size}")
    if not 1 <= cfg.nharts <= MAX_HARTS:
        raise ValueError(f"number of harts must be 1..{MAX_HARTS}, got {cfg.nharts}")
    if len(set(cfg.virtio_slots)) != len(cfg.virtio_slots):
        raise ValueError(f"virtio slots listed twice: {cfg.virtio_slots}")
    for slot in cfg.virtio_slots:
        if not 0 <= slot < memmap.VIRTIO_SLOTS:
            raise ValueError(f"virtio slot {slot} does not exist (0..{memmap.VIRTIO_SLOTS - 1})")
    # The DTB string encoding is NUL-terminated ASCII; anything else would be
    # silently mangled by the serializer or cut short by the guest's parser.
    if not cfg.bootargs.isascii() or "\0" in cfg.bootargs:
        raise ValueError("bootargs must be ASCII text without NUL characters")
    if cfg.initrd_range is not None:
        start, end = cfg.initrd_range
        ram_end = memmap.RAM_BASE + cfg.memory_size
        if not memmap.RAM_BASE <= start < end <= ram_end:
            raise ValueError(f"initrd range {start:#x}..{end:#x} is not a non-empty range inside RAM")


class _Phandles:
    """Hands out phandles in creation order so the blob is deterministic."""

    def __init__(self) -> None:
        self._next = 1

    def new(self) -> int:
        value = self._next
        self._next += 1
        return value


def _cpus(nharts: int, ph: _Phandles) -> tuple[libfdt.Node, list[int]]:
    cpus = _node(
        "cpus",
        libfdt.PropWords("#address-cells", 1),
        libfdt.PropWords("#size-cells", 0),
        libfdt.PropWords("timebase-frequency", memmap.TIMEBASE_FREQUENCY),
    )
    intc_phandles = []
    cpu_phandles = []
    for hart in range(nharts):
        cpu_ph, intc_ph = ph.new(), ph.new()
        cpu_phandles.append(cpu_ph)
        intc_phandles.append(intc_ph)
        intc = _node(
            "interrupt-controller",
            # No interrupt-map ever points here; 0 says so and keeps dtc quiet.
            libfdt.PropWords("#address-cells", 0),
            libfdt.PropWords("#interrupt-cells", 1),
            libfdt.Property("interrupt-controller"),
            libfdt.PropStrings("compatible", "riscv,cpu-intc"),
            libfdt.PropWords("phandle", intc_ph),
        )
        cpus.append(
            _node(
                f"cpu@{hart:x}",
                libfdt.PropStrings("device_type", "cpu"),
                libfdt.PropWords("reg", hart),
                libfdt.PropStrings("status", "okay"),
                libfdt.PropStrings("compatible", "riscv"),
                libfdt.PropStrings("riscv,isa", ISA_STRING),
                libfdt.PropStrings("riscv,isa-base", "rv64i"),
                libfdt.PropStrings("riscv,isa-extensions", *ISA_EXTENSIONS),
                libfdt.PropStrings("mmu-type", MMU_TYPE),
                libfdt.PropWords("phandle", cpu_ph),
                intc,
            )
        )
    cluster = _node("cluster0")
    for hart, cpu_ph in enumerate(cpu_phandles):
        cluster.append(_node(f"core{hart}", libfdt.PropWords("cpu", cpu_ph)))
    cpus.append(_node("cpu-map", cluster))
    return cpus, intc_phandles


def _soc(cfg: BoardConfig, intc: list[int], plic_ph: int, test_ph: int) -> libfdt.Node:
    soc = _node(
        "soc",
        libfdt.PropWords("#address-cells", 2),
        libfdt.PropWords("#size-cells", 2),
        libfdt.PropStrings("compatible", "simple-bus"),
        libfdt.Property("ranges"),
    )
    # Interrupt wiring per hart, in PLIC/CLINT context order: the PLIC's
    # context 2*h is hart h's M-mode and 2*h+1 its S-mode, as on QEMU virt.
    clint_irqs = [cell for ph in intc for cell in (ph, IRQ_MSI, ph, IRQ_MTI)]
    plic_irqs = [cell for ph in intc for cell in (ph, IRQ_MEI, ph, IRQ_SEI)]
    soc.append(
        _node(
            f"clint@{memmap.CLINT_BASE:x}",
            libfdt.PropStrings("compatible", "sifive,clint0", "riscv,clint0"),
            _reg(memmap.CLINT_BASE, memmap.CLINT_SIZE),
            libfdt.PropWords("interrupts-extended", *clint_irqs),
        )
    )
    soc.append(
        _node(
            f"plic@{memmap.PLIC_BASE:x}",
            libfdt.PropWords("#address-cells", 0),
            libfdt.PropWords("#interrupt-cells", 1),
            libfdt.Property("interrupt-controller"),
            libfdt.PropStrings("compatible", "sifive,plic-1.0.0", "riscv,plic0"),
            _reg(memmap.PLIC_BASE, memmap.PLIC_SIZE),
            libfdt.PropWords("riscv,ndev", PLIC_NDEV),
            libfdt.PropWords("interrupts-extended", *plic_irqs),
            libfdt.PropWords("phandle", plic_ph),
        )
    )
    soc.append(
        _node(
            f"serial@{memmap.UART_BASE:x}",
            libfdt.PropStrings("compatible", "ns16550a"),
            _reg(memmap.UART_BASE, memmap.UART_SIZE),
            libfdt.PropWords("clock-frequency", UART_CLOCK_HZ),
            libfdt.PropWords("interrupts", memmap.IRQ_UART),
            libfdt.PropWords("interrupt-parent", plic_ph),
        )
    )
    soc.append(
        _node(
            f"rtc@{memmap.RTC_BASE:x}",
            libfdt.PropStrings("compatible", "google,goldfish-rtc"),
            _reg(memmap.RTC_BASE, memmap.RTC_SIZE),
            libfdt.PropWords("interrupts", memmap.IRQ_RTC),
            libfdt.PropWords("interrupt-parent", plic_ph),
        )
    )
    soc.append(
        _node(
            f"vmgenid@{memmap.VMGENID_BASE:x}",
            libfdt.PropStrings("compatible", "microsoft,vmgenid"),
            _reg(memmap.VMGENID_BASE, 16),
            libfdt.PropWords("interrupts", memmap.IRQ_VMGENID),
            libfdt.PropWords("interrupt-parent", plic_ph),
        )
    )
    soc.append(
        _node(
            f"test@{memmap.TEST_BASE:x}",
            libfdt.PropStrings("compatible", "sifive,test1", "sifive,test0", "syscon"),
            _reg(memmap.TEST_BASE, memmap.TEST_SIZE),
            libfdt.PropWords("phandle", test_ph),
        )
    )
    # Linux probes virtio-mmio nodes in tree order, so ascending slots make
    # the first populated slot the first disk (/dev/vda).
    for slot in sorted(cfg.virtio_slots):
        base = memmap.VIRTIO_BASE + memmap.VIRTIO_STRIDE * slot
        soc.append(
            _node(
                f"virtio_mmio@{base:x}",
                libfdt.PropStrings("compatible", "virtio,mmio"),
                _reg(base, memmap.VIRTIO_STRIDE),
                libfdt.PropWords("interrupts", memmap.IRQ_VIRTIO_FIRST + slot),
                libfdt.PropWords("interrupt-parent", plic_ph),
            )
        )
    return soc


def _chosen(cfg: BoardConfig) -> libfdt.Node:
    chosen = _node("chosen")
    if cfg.bootargs:
        chosen.append(libfdt.PropStrings("bootargs", cfg.bootargs))
    chosen.append(libfdt.PropStrings("stdout-path", STDOUT_PATH))
    seed = os.urandom(64) if cfg.rng_seed is None else cfg.rng_seed
    if seed:
        chosen.append(libfdt.PropBytes("rng-seed", data=seed))
    if cfg.initrd_range is not None:
        start, end = cfg.initrd_range
        chosen.append(libfdt.PropWords("linux,initrd-start", *_cells64(start)))
        chosen.append(libfdt.PropWords("linux,initrd-end", *_cells64(end)))
    return chosen


def _syscon_action(name: str, compatible: str, regmap: int, value: int) -> libfdt.Node:
    return _node(
        name,
        libfdt.PropStrings("compatible", compatible),
        libfdt.PropWords("regmap", regmap),
        libfdt.PropWords("offset", 0),
        libfdt.PropWords("value", value),
    )


def build_dtb(cfg: BoardConfig) -> bytes:
    """Serialize the device tree for `cfg`. Raises ValueError for a bad config."""
    _validate(cfg)
    ph = _Phandles()
    cpus, intc = _cpus(cfg.nharts, ph)
    plic_ph, test_ph = ph.new(), ph.new()

    # A fresh list: the package's default reservation list is shared between instances.
    tree = libfdt.FDT(entries=[])
    root = tree.root
    root.append(libfdt.PropWords("#address-cells", 2))
    root.append(libfdt.PropWords("#size-cells", 2))
    root.append(libfdt.PropStrings("compatible", "riscv-virtio"))
    root.append(libfdt.PropStrings("model", "riscv-virtio,pocketvm"))
    root.append(_chosen(cfg))
    root.append(
        _node(
            f"memory@{memmap.RAM_BASE:x}",
            libfdt.PropStrings("device_type", "memory"),
            _reg(memmap.RAM_BASE, cfg.memory_size),
        )
    )
    root.append(cpus)
    root.append(_soc(cfg, intc, plic_ph, test_ph))
    root.append(_syscon_action("poweroff", "syscon-poweroff", test_ph, TEST_POWEROFF_VALUE))
    root.append(_syscon_action("reboot", "syscon-reboot", test_ph, TEST_REBOOT_VALUE))
    return tree.to_dtb(version=17, last_comp_version=16, boot_cpuid_phys=0)

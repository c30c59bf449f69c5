"""Where everything goes in guest RAM at power-on, and how each hart starts.

Two ways to start a VM:

* bare metal (no firmware): an ELF (or raw binary at RAM_BASE) runs in
  M-mode from its entry point, with a0 = hart id and a1 = device tree.
* firmware: OpenSBI's `fw_dynamic` at RAM_BASE, a Linux `Image` at
  RAM_BASE + text_offset (2 MiB). Every hart enters OpenSBI in M-mode with
  a0 = hart id, a1 = device tree, a2 = a `struct fw_dynamic_info` telling
  OpenSBI to continue at the kernel in S-mode.

Layout, low to high:

    RAM_BASE          firmware or bare-metal program
    + text_offset     kernel Image (its image_size, bss included)
    ...               free
    initrd            page aligned, just below fw_dynamic_info
    fw_dynamic_info   one page of its own, just below the DTB
    DTB               2 MiB aligned, near the top of RAM (below 3 GiB)
    + 64 KiB          room for OpenSBI to grow the DTB in place

The DTB goes where QEMU's virt puts it (top of RAM or of the 3 GiB
boundary, 2 MiB aligned), so the two machines hand the kernel the same
addresses. Initrd and DTB are high so a kernel that decompresses or
relocates itself upwards does not run into them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketvm.board.elf import ElfImage, is_elf, parse_elf, write_segments
from pocketvm.board.errors import BootError
from pocketvm.board.fdt import BoardConfig, build_dtb
from pocketvm.board.kimage import parse_kernel_image
from pocketvm.cpu import state
from pocketvm.memory import GuestRAM

log = logging.getLogger(__name__)

PAGE = 0x1000
MIB = 1 << 20
DTB_ALIGN = 2 * MIB
DTB_GROWTH_ROOM = 64 << 10  # OpenSBI's fixups add at most a few KiB in place
TOP_LIMIT = 0xC000_0000  # as QEMU: keep boot data 32-bit addressable
KERNEL_ALIGN = 2 * MIB
PRIV_M = 3

FW_DYNAMIC_MAGIC = 0x4942534F  # "OSBI"
FW_DYNAMIC_VERSION = 2
FW_DYNAMIC_NEXT_MODE_S = 1
# The hart OpenSBI relocates itself on (as QEMU sets it). It does not fix the
# cold-boot hart: sbi_init still lets the first hart to arrive win, so which
# hart enters the kernel depends on how the harts are scheduled.
FW_DYNAMIC_BOOT_HART = 0
# magic, version, next_addr, next_mode, options, boot_hart: unsigned long each.
FW_DYNAMIC_INFO = struct.Struct("<6Q")


@dataclass(frozen=True)
class HartStart:
    """Register values a hart has when the machine is switched on."""

    hartid: int
    pc: int
    a0: int
    a1: int
    a2: int
    priv: int

    def apply(self, st: np.ndarray) -> None:
        """Write these values into a hart state array (see pocketvm.cpu.state)."""
        st[state.PC] = self.pc
        st[state.PRIV] = self.priv
        st[state.X + 10] = self.a0
        st[state.X + 11] = self.a1
        st[state.X + 12] = self.a2


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class BootPlan:
    harts: list[HartStart]
    dtb_addr: int
    dtb: bytes
    regions: list[Region] = field(default_factory=list)  # what was written where
    fw_info_addr: int | None = None
    kernel_addr: int | None = None
    initrd_range: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)  # one line each, for the user


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _align_down(value: int, align: int) -> int:
    return value // align * align


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn a failure to open or read `path` into a one-line BootError."""
    try:
        yield
    except FileNotFoundError:
        raise BootError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise BootError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def _read(path: Path, what: str) -> bytes:
    with _reading(path, what):
        data = Path(path).read_bytes()
    if not data:
        raise BootError(f"{what} {path}: file is empty")
    return data


def _file_size(path: Path, what: str) -> int:
    with _reading(path, what):
        size = Path(path).stat().st_size
    if size == 0:
        raise BootError(f"{what} {path}: file is empty")
    return size


# What Linux can unpack as an initramfs: a cpio archive, plain or compressed.
_INITRD_MAGICS = (
    b"070701", b"070702", b"070707",  # cpio newc / crc / odc
    b"\x1f\x8b",  # gzip
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x02\x21\x4c\x18",  # lz4 legacy
    b"BZh",  # bzip2
    b"\x5d\x00\x00",  # lzma
    b"\x89LZO",  # lzo
)


def check_initrd(path: Path) -> None:
    """Refuse a file the kernel could not unpack, before booting a doomed guest."""
    with _reading(path, "initrd"), open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise BootError(f"initrd {path}: file is empty")
    if not head.startswith(_INITRD_MAGICS):
        raise BootError(f"initrd {path}: not an initramfs (neither a cpio archive nor a known compression)")


def _read_into(path: Path, dest: np.ndarray, what: str) -> None:
    """Stream a (possibly large) file straight into guest RAM."""
    buf = memoryview(dest)
    done = 0
    try:
        with open(path, "rb") as f:
            while done < len(buf):
                n = f.readinto(buf[done:])
                if not n:
                    break
                done += n
    except OSError as exc:
        raise BootError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if done != len(buf):
        raise BootError(f"{what} {path}: file shrank while loading ({done} of {len(buf)} bytes)")


def _mib(nbytes: int) -> int:
    return -(-nbytes // MIB)


class _Placed:
    """Things at fixed addresses (firmware, kernel, program) before the high layout."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self.writes: list[tuple[int, bytes]] = []
        self.elf_writes: list[tuple[bytes, ElfImage]] = []
        self.warnings: list[str] = []

    @property
    def end(self) -> int:
        return max(r.end for r in self.regions)


def _place_elf(placed: _Placed, ram: GuestRAM, data: bytes, name: str, label: str) -> int:
    image = parse_elf(data, ram, name)
    for seg in image.segments:
        placed.regions.append(Region(f"{label}[{seg.index}]", seg.paddr, seg.memsz))
    placed.elf_writes.append((data, image))
    placed.warnings += image.warnings
    return image.entry


def _place_raw(placed: _Placed, addr: int, data: bytes, size: int, label: str) -> None:
    placed.regions.append(Region(label, addr, size))
    placed.writes.append((addr, data))


def _check_no_overlap(regions: list[Region]) -> None:
    ordered = sorted(regions, key=lambda r: r.start)
    for a, b in zip(ordered, ordered[1:]):
        if a.end > b.start:
            raise BootError(f"{a.name} ({a.start:#x}..{a.end:#x}) overlaps {b.name} ({b.start:#x}..{b.end:#x})")


def prepare_boot(
    ram: GuestRAM,
    nharts: int,
    kernel: Path,
    bios: Path | None,
    initrd: Path | None,
    bootargs: str,
    virtio_slots: list[int],
) -> BootPlan:
    """Lay out and write the boot files into `ram`; return how each hart starts.

    `kernel` is the bare-metal program when `bios` is None, else a Linux Image
    that `bios` (OpenSBI fw_dynamic) starts in S-mode. Raises BootError, with
    nothing partially written, when the files are unusable or do not fit.
    """
    if not 1 <= nharts <= state.MAX_HARTS:
        raise BootError(f"number of harts must be 1..{state.MAX_HARTS}, got {nharts}")
    ram_end = ram.base + ram.size
    placed = _Placed()
    kernel_addr: int | None = None

    if bios is None:
        data = _read(kernel, "program")
        if is_elf(data):
            entry = _place_elf(placed, ram, data, f"program {kernel}", "program")
        else:
            _place_raw(placed, ram.base, data, len(data), "program")
            entry = ram.base
    else:
        fw = _read(bios, "firmware")
        if is_elf(fw):
            entry = _place_elf(placed, ram, fw, f"firmware {bios}", "firmware")
        else:
            _place_raw(placed, ram.base, fw, len(fw), "firmware")
            entry = ram.base
        image = parse_kernel_image(_read(kernel, "kernel"), f"kernel {kernel}")
        # OpenSBI's running footprint (heap, per-hart stacks) reaches past its
        # file; the kernel's 2 MiB text_offset leaves it that room.
        kernel_addr = ram.base + image.text_offset
        if kernel_addr < placed.end:
            kernel_addr = _align_up(placed.end, KERNEL_ALIGN)
        _place_raw(placed, kernel_addr, image.data, image.footprint, "kernel")

    if initrd is not None:
        check_initrd(initrd)
    initrd_size = _file_size(initrd, "initrd") if initrd is not None else 0
    fw_info_size = PAGE if bios is not None else 0

    # The DTB's length does not depend on the addresses written into it, so
    # measure it with a stand-in initrd range before the layout is known.
    cfg = BoardConfig(
        memory_size=ram.size,
        nharts=nharts,
        bootargs=bootargs,
        initrd_range=(ram.base, ram.base + PAGE) if initrd is not None else None,
        virtio_slots=list(virtio_slots),
    )
    try:
        dtb_len = len(build_dtb(cfg))
    except ValueError as exc:
        raise BootError(f"device tree: {exc}") from None

    # Smallest RAM that holds everything, for the error message and the check.
    low_end = _align_up(placed.end, PAGE)
    dtb_min = _align_up(low_end + _align_up(initrd_size, PAGE) + fw_info_size, DTB_ALIGN)
    top_needed = dtb_min + dtb_len + DTB_GROWTH_ROOM
    if top_needed > TOP_LIMIT:
        raise BootError(
            f"boot files need {_mib(top_needed - ram.base)} MiB from the start of RAM, "
            f"more than fits below {TOP_LIMIT:#x}"
        )
    top = min(ram_end, TOP_LIMIT)
    if top < top_needed:
        raise BootError(
            f"not enough RAM: these boot files need at least {_mib(top_needed - ram.base)} MiB, "
            f"the VM has {ram.size // MIB} MiB"
        )

    dtb_addr = _align_down(top - dtb_len - DTB_GROWTH_ROOM, DTB_ALIGN)
    below = dtb_addr
    fw_info_addr = None
    regions = list(placed.regions)
    if bios is not None:
        fw_info_addr = below - PAGE
        below = fw_info_addr
        regions.append(Region("fw_dynamic_info", fw_info_addr, FW_DYNAMIC_INFO.size))
    initrd_range = None
    if initrd is not None:
        start = _align_down(below - initrd_size, PAGE)
        initrd_range = (start, start + initrd_size)
        regions.append(Region("initrd", start, initrd_size))
    regions.append(Region("dtb", dtb_addr, dtb_len))
    _check_no_overlap(regions)
    for r in regions:
        if not ram.contains(r.start, r.size):  # a bug in the arithmetic above, not the user's fault
            raise BootError(f"{r.name} at {r.start:#x}..{r.end:#x} falls outside RAM")

    cfg.initrd_range = initrd_range
    dtb = build_dtb(cfg)
    assert len(dtb) == dtb_len

    # Everything is checked; now write.
    for addr, blob in placed.writes:
        ram.write(addr, blob)
    for blob, elf in placed.elf_writes:
        write_segments(ram, blob, elf)
    if initrd is not None and initrd_range is not None:
        _read_into(initrd, ram.view(initrd_range[0], initrd_size), "initrd")
    ram.write(dtb_addr, dtb)
    if fw_info_addr is not None:
        assert kernel_addr is not None
        info = FW_DYNAMIC_INFO.pack(
            FW_DYNAMIC_MAGIC, FW_DYNAMIC_VERSION, kernel_addr, FW_DYNAMIC_NEXT_MODE_S, 0, FW_DYNAMIC_BOOT_HART
        )
        ram.write(fw_info_addr, info)

    a2 = fw_info_addr if fw_info_addr is not None else 0
    harts = [HartStart(h, entry, h, dtb_addr, a2, PRIV_M) for h in range(nharts)]
    for r in sorted(regions, key=lambda r: r.start):
        log.info("boot: %-18s %#x..%#x (%d KiB)", r.name, r.start, r.end, -(-r.size // 1024))
    return BootPlan(
        harts=harts,
        dtb_addr=dtb_addr,
        dtb=dtb,
        regions=sorted(regions, key=lambda r: r.start),
        fw_info_addr=fw_info_addr,
        kernel_addr=kernel_addr,
        initrd_range=initrd_range,
        warnings=placed.warnings,
    )

"""Loader for bare-metal RISC-V ELF64 programs (and ELF firmware).

Segments are placed at their physical addresses (p_paddr): a bare-metal
program runs with translation off, and linkers that separate virtual from
load addresses (AT() in a linker script) mean the physical one for loading.
The file is checked completely before RAM is touched, so a bad file never
leaves a half-loaded guest behind.

A segment wholly outside RAM is skipped, with a warning, when it is
read-only (neither writable nor executable): a program linked the quick way
(`gcc -nostdlib -static -Wl,-Ttext=0x80000000`) has one at 0x10000 that
only holds the ELF headers and the build-id note, and QEMU runs such a
program (it drops every segment outside RAM without a word). A segment that
is executable or writable, or only partly in RAM, holds something the
program needs, so it stays an error, as does an entry point outside RAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pocketvm.board.errors import BootError
from pocketvm.memory import GuestRAM

__all__ = ["BootError", "ElfImage", "ElfSegment", "is_elf", "parse_elf", "write_segments", "load_elf"]

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
ET_DYN = 3
EM_RISCV = 243
PT_LOAD = 1
PF_X = 1
PF_W = 2

# e_ident(16) e_type e_machine e_version e_entry e_phoff e_shoff e_flags
# e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class ElfSegment:
    paddr: int
    offset: int  # of the segment's bytes in the file
    filesz: int
    memsz: int
    index: int = 0  # in the program header table, for messages

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfImage:
    entry: int
    segments: list[ElfSegment]  # PT_LOAD segments with memsz > 0, all in RAM
    skipped: list[ElfSegment] = field(default_factory=list)  # read-only, wholly outside RAM
    warnings: list[str] = field(default_factory=list)  # one line each, for the user

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, ram: GuestRAM, name: str = "ELF file") -> ElfImage:
    """Check that `data` is a loadable RISC-V ELF64 whose segments fit in `ram`."""
    if not is_elf(data):
        raise BootError(f"{name}: not an ELF file")
    if len(data) < _EHDR.size:
        raise BootError(f"{name}: truncated ELF header ({len(data)} bytes)")
    (ident, e_type, machine, _version, entry, phoff, _shoff, _flags,
     _ehsize, phentsize, phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data)
    if ident[4] != ELFCLASS64:
        raise BootError(f"{name}: not a 64-bit ELF (class {ident[4]})")
    if ident[5] != ELFDATA2LSB:
        raise BootError(f"{name}: not a little-endian ELF (data encoding {ident[5]})")
    if machine != EM_RISCV:
        raise BootError(f"{name}: ELF machine is {machine}, not RISC-V ({EM_RISCV})")
    if e_type not in (ET_EXEC, ET_DYN):
        raise BootError(f"{name}: ELF type {e_type} is not an executable")
    if phnum == 0:
        raise BootError(f"{name}: ELF has no program headers")
    if phentsize < _PHDR.size:
        raise BootError(f"{name}: ELF program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(data):
        raise BootError(f"{name}: truncated file (program headers end past {len(data)} bytes)")

    segments = []
    skipped = []
    for i in range(phnum):
        p_type, pflags, offset, _vaddr, paddr, filesz, memsz, _align = _PHDR.unpack_from(
            data, phoff + i * phentsize
        )
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise BootError(f"{name}: segment {i} has file size {filesz:#x} > memory size {memsz:#x}")
        if offset + filesz > len(data):
            raise BootError(
                f"{name}: truncated file (segment {i} needs bytes up to {offset + filesz:#x}, "
                f"file has {len(data):#x})"
            )
        seg = ElfSegment(paddr, offset, filesz, memsz, i)
        if ram.contains(paddr, memsz):
            segments.append(seg)
        elif _wholly_outside(ram, paddr, memsz) and not pflags & (PF_X | PF_W):
            skipped.append(seg)
        else:
            kind = "executable " if pflags & PF_X else "writable " if pflags & PF_W else ""
            part = "" if _wholly_outside(ram, paddr, memsz) else "partly "
            raise BootError(
                f"{name}: {kind}segment {i} at {paddr:#x}..{paddr + memsz:#x} is {part}outside RAM "
                f"({ram.base:#x}..{ram.base + ram.size:#x})"
            )
    if not segments and not skipped:
        raise BootError(f"{name}: ELF has no loadable segments")
    if not ram.contains(entry):
        raise BootError(f"{name}: entry point {entry:#x} is outside RAM")
    if not segments:
        raise BootError(f"{name}: ELF has no loadable segments in RAM")
    warnings = []
    if skipped:
        where = ", ".join(f"{s.index} at {s.paddr:#x}..{s.end:#x}" for s in skipped)
        plural = "s" if len(skipped) > 1 else ""
        warnings.append(
            f"{name}: not loading read-only segment{plural} {where}: outside RAM "
            f"({ram.base:#x}..{ram.base + ram.size:#x})"
        )
    return ElfImage(entry, segments, skipped, warnings)


def _wholly_outside(ram: GuestRAM, addr: int, size: int) -> bool:
    return addr + size <= ram.base or addr >= ram.base + ram.size


def write_segments(ram: GuestRAM, data: bytes, image: ElfImage) -> None:
    for seg in image.segments:
        ram.write(seg.paddr, memoryview(data)[seg.offset : seg.offset + seg.filesz])
        # bss: RAM may hold an earlier guest's bytes, so zero explicitly.
        ram.view(seg.paddr + seg.filesz, seg.memsz - seg.filesz)[:] = 0


def load_elf(ram: GuestRAM, data: bytes, name: str = "ELF file") -> int:
    """Load a RISC-V ELF64 into `ram` at its physical addresses; return the entry point."""
    image = parse_elf(data, ram, name)
    write_segments(ram, data, image)
    return image.entry

"""Executable memory for translated code: objects copied in, not linked by MCJIT.

The service's objects (`translator`) are LLVM's large code model: a
region's machine code is one `.ltext` section, at most with constants in
read-only sections beside it (`.rodata.cst8`: some FP constants) that the
code addresses absolutely, and no symbol from outside (translated code
finds the FPU through the translation table). Loading one is a copy of
its sections to executable memory and a few relocations, its functions at
their offsets. MCJIT linked each object into memory of its own: 2000
objects of 11 KB on average (a warm boot links ~1800) took 77 MiB of RSS;
here they take what their code takes (20 MiB), and load 5x faster. An
object this cannot take (writable data, outside symbols, other relocations:
other LLVM settings) is refused with `UnsupportedObject`, and the caller
links it with MCJIT.

Code is never freed (as with MCJIT): a replaced region's code stays,
unreachable. Pages are writable only while code is copied in, executable
after; nothing runs translated code meanwhile (the hart's thread loads it
between two run() calls).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass

CHUNK = 4 << 20  # executable memory is mapped this much at a time
PAGE = mmap.PAGESIZE

_SHT_PROGBITS, _SHT_SYMTAB, _SHT_RELA, _SHT_REL = 1, 2, 4, 9
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_STT_FUNC = 2
_EM_X86_64 = 62
# Relocations it applies: (size in bytes, relative to the place)
_RELOCATIONS = {1: (8, False), 2: (4, True), 4: (4, True), 24: (8, True)}  # R_X86_64_64, PC32, PLT32, PC64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class UnsupportedObject(ValueError):
    """An object that needs more than a copy and simple relocations."""


@dataclass
class Image:
    """An object's allocated sections laid out as they are placed."""

    data: bytes
    align: int
    functions: dict[str, int]  # offsets in `data`
    relocations: list[tuple[int, int, int]]  # (type, offset patched, offset of the target + addend)


def parse(obj: bytes) -> Image:
    """The image of an ELF64 x86-64 relocatable object, or UnsupportedObject."""
    try:
        return _parse(obj)
    except UnsupportedObject:
        raise
    except (struct.error, IndexError, KeyError, UnicodeDecodeError, ValueError) as e:
        raise UnsupportedObject(f"unreadable object: {e}") from None


def _parse(obj: bytes) -> Image:
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        raise UnsupportedObject("not a little-endian ELF64 object")
    e_type, e_machine = struct.unpack_from("<HH", obj, 16)
    if e_type != 1 or e_machine != _EM_X86_64:
        raise UnsupportedObject("not an x86-64 relocatable object")
    shoff = struct.unpack_from("<Q", obj, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)
    # (name, type, flags, offset, size, link, info, align)
    sections = []
    for i in range(shnum):
        name, typ, flags, _, offset, size, link, info, align, _ = struct.unpack_from(
            "<IIQQQQIIQQ", obj, shoff + i * shentsize
        )
        sections.append((name, typ, flags, offset, size, link, info, align))
    names_at = sections[shstrndx][3]

    def name_of(table_offset: int, at: int) -> str:
        start = table_offset + at
        return obj[start : obj.index(b"\0", start)].decode()

    # Code first, then read-only data: where each section goes in the image.
    placed: dict[int, int] = {}
    image = bytearray()
    align = 16
    chosen = [i for i, sec in enumerate(sections) if sec[2] & _SHF_ALLOC and sec[4] and name_of(names_at, sec[0]) != ".eh_frame"]
    for i in sorted(chosen, key=lambda i: not sections[i][2] & _SHF_EXECINSTR):  # (unwind tables: never unwound)
        name, typ, flags, offset, size, _, _, sec_align = sections[i]
        if typ != _SHT_PROGBITS or flags & _SHF_WRITE:
            raise UnsupportedObject(f"writable or uninitialised section {name_of(names_at, name)}")
        sec_align = max(int(sec_align), 1)
        align = max(align, sec_align)
        image += bytes(-len(image) % sec_align)
        placed[i] = len(image)
        image += obj[offset : offset + size]
        if len(image) != placed[i] + size:
            raise UnsupportedObject("truncated section")
    if not any(sections[i][2] & _SHF_EXECINSTR for i in placed):
        raise UnsupportedObject("no code")
    functions: dict[str, int] = {}
    targets: list[int | None] = []  # each symbol's offset in the image (None: not placed)
    for _, typ, _, offset, size, link, _, _ in sections:
        if typ != _SHT_SYMTAB:
            continue
        strings = sections[link][3]
        for k in range(size // 24):
            st_name, st_info, _, st_shndx, st_value, _ = struct.unpack_from("<IBBHQQ", obj, offset + 24 * k)
            if k and st_shndx == 0 and st_name:
                raise UnsupportedObject(f"outside symbol {name_of(strings, st_name)}")
            at = placed.get(st_shndx)
            targets.append(None if at is None or st_value > sections[st_shndx][4] else at + st_value)
            if at is not None and st_info & 0xF == _STT_FUNC and sections[st_shndx][2] & _SHF_EXECINSTR:
                functions[name_of(strings, st_name)] = at + st_value
    relocations: list[tuple[int, int, int]] = []
    for _, typ, _, offset, size, _, info, _ in sections:
        if typ not in (_SHT_RELA, _SHT_REL) or info not in placed:
            continue  # (those of the unwind tables)
        if typ == _SHT_REL:
            raise UnsupportedObject("REL relocations")
        for k in range(size // 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", obj, offset + 24 * k)
            kind, symbol = r_info & 0xFFFFFFFF, r_info >> 32
            target = targets[symbol] if symbol < len(targets) else None
            if kind not in _RELOCATIONS or target is None:
                raise UnsupportedObject(f"relocation of type {kind}")
            if r_offset + _RELOCATIONS[kind][0] > sections[info][4]:
                raise UnsupportedObject("relocation outside its section")
            relocations.append((kind, placed[info] + r_offset, target + r_addend))
    return Image(bytes(image), align, functions, relocations)


class CodeHeap:
    """Executable memory that objects are copied into."""

    def __init__(self) -> None:
        self._chunks: list[mmap.mmap] = []  # kept mapped for good
        self._chunk: mmap.mmap | None = None
        self._base = 0  # the current chunk's address
        self._used = 0
        self.bytes = 0  # code copied in

    def load(self, obj: bytes) -> dict[str, int]:
        """Copy an object in: {function: address}. UnsupportedObject if it needs more."""
        image = parse(obj)
        at = self._reserve(len(image.data), image.align)
        data = bytearray(image.data)
        for kind, where, target in image.relocations:
            size, relative = _RELOCATIONS[kind]
            value = at + target - (at + where if relative else 0)
            if size == 4 and not -(1 << 31) <= value < 1 << 31:
                raise UnsupportedObject("a 32-bit relocation out of range")  # (never for code and data placed together)
            data[where : where + size] = value.to_bytes(size, "little", signed=True)
        self._write(at, bytes(data))
        return {name: at + offset for name, offset in image.functions.items()}

    def _reserve(self, size: int, align: int) -> int:
        """The address where `size` bytes go next."""
        start = -(-self._used // align) * align
        if self._chunk is None or start + size > len(self._chunk):
            length = max(CHUNK, -(-size // PAGE) * PAGE)
            self._chunk = mmap.mmap(-1, length, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._chunks.append(self._chunk)
            self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._chunk))
            start = 0
        self._used = start + size
        self.bytes += size
        return self._base + start

    def _write(self, address: int, data: bytes) -> None:
        assert self._chunk is not None
        start = address - self._base
        lo = start // PAGE * PAGE
        span = -(-(start + len(data)) // PAGE) * PAGE - lo
        self._protect(self._base + lo, span, mmap.PROT_READ | mmap.PROT_WRITE)
        self._chunk[start : start + len(data)] = data
        self._protect(self._base + lo, span, mmap.PROT_READ | mmap.PROT_EXEC)

    @staticmethod
    def _protect(address: int, length: int, prot: int) -> None:
        if _libc.mprotect(address, length, prot) != 0:
            raise OSError(ctypes.get_errno(), "mprotect of translated code failed")

"""The RISC-V Linux kernel `Image` format (Documentation/arch/riscv/boot-image-header.rst).

An Image is the kernel's flat binary with a 64-byte header in front that says
where in RAM it wants to be loaded (text_offset) and how much memory it uses
once running, bss included (image_size). A gzip-compressed Image is accepted
too and inflated here, since some distributions ship it that way.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pocketvm.board.errors import BootError

HEADER_SIZE = 64
MAGIC = b"RISCV\0\0\0"  # at offset 0x30
MAGIC2 = b"RSC\x05"  # at offset 0x38
DEFAULT_TEXT_OFFSET = 0x20_0000  # what RV64 kernels use; also for headers that leave it 0
FLAG_BIG_ENDIAN = 1
# Far above any real kernel; stops a hostile "gzip bomb" from eating the host.
MAX_INFLATED_SIZE = 512 << 20

# code0 code1 text_offset image_size flags version res1 res2 magic magic2 res3
_HEADER = struct.Struct("<IIQQQII Q 8s 4s I")


@dataclass(frozen=True)
class KernelImage:
    data: bytes
    text_offset: int
    image_size: int  # memory the running kernel occupies from its load address

    @property
    def footprint(self) -> int:
        return max(self.image_size, len(self.data))


def _inflate(data: bytes, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED_SIZE)
    except zlib.error as exc:
        raise BootError(f"{name}: corrupt gzip data ({exc})") from None
    if inflater.unconsumed_tail:
        raise BootError(f"{name}: inflates to more than {MAX_INFLATED_SIZE >> 20} MiB")
    if not inflater.eof:
        raise BootError(f"{name}: truncated gzip data")
    return out


def parse_kernel_image(data: bytes, name: str = "kernel") -> KernelImage:
    """Check and describe a RISC-V Linux Image (raw or gzip-compressed)."""
    if data[:2] == b"\x1f\x8b":
        data = _inflate(data, name)
    if len(data) < HEADER_SIZE:
        raise BootError(f"{name}: too short for a RISC-V Linux Image ({len(data)} bytes)")
    (_c0, _c1, text_offset, image_size, flags, _ver, _r1, _r2, magic, magic2, _r3) = _HEADER.unpack_from(data)
    if magic != MAGIC or magic2 != MAGIC2:
        if data[:2] == b"MZ" and data[4:8] == b"zimg":
            raise BootError(f"{name}: an EFI zboot (compressed) kernel; give the uncompressed Image")
        raise BootError(f"{name}: not a RISC-V Linux Image (no 'RISCV'/'RSC\\x05' header magic)")
    if flags & FLAG_BIG_ENDIAN:
        raise BootError(f"{name}: a big-endian kernel; this machine is little-endian")
    if text_offset == 0:
        text_offset = DEFAULT_TEXT_OFFSET
    # RV64 kernels map themselves with 2 MiB pages and need that alignment.
    if text_offset % DEFAULT_TEXT_OFFSET:
        raise BootError(f"{name}: text_offset {text_offset:#x} is not 2 MiB aligned")
    return KernelImage(data=data, text_offset=text_offset, image_size=image_size)

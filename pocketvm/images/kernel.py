"""Turn the kernel file Debian ships into the raw RISC-V `Image` we load.

The RISC-V boot image header (Documentation/arch/riscv/boot-image-header.rst):

    0x00 code0/code1   (an "MZ" PE signature when the EFI stub is built in)
    0x08 text_offset   image load offset from the start of RAM, little endian
    0x10 image_size    effective image size
    0x18 flags
    0x20 version       header version
    0x30 magic         "RISCV\\0\\0\\0" (deprecated but still written)
    0x38 magic2        "RSC\\x05"
    0x3c res3          offset of the PE header

Debian's `vmlinux-*` for riscv64 is this raw Image with the EFI stub inside
(a PE file that is also directly bootable), so it is used as is. We also
accept a gzip-compressed Image (`vmlinuz`) and the EFI "zboot" wrapper
(a PE stub carrying a compressed Image), in case packaging changes.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass

from .errors import ImageError

MAGIC = b"RISCV\0\0\0"
MAGIC2 = b"RSC\x05"
_HEADER = struct.Struct("<IIQQQIIQ8s4sI")  # code0 code1 text_offset image_size flags version res1 res2 magic magic2 res3


@dataclass(frozen=True)
class ImageHeader:
    text_offset: int
    image_size: int
    flags: int
    version: int
    efi_stub: bool


def parse_image_header(data: bytes) -> ImageHeader:
    """Check the RISC-V Image magics; ImageError if this is not a raw Image."""
    if len(data) < 0x40:
        raise ImageError("kernel image is too small to hold a RISC-V Image header")
    if data[0x30:0x38] != MAGIC or data[0x38:0x3C] != MAGIC2:
        raise ImageError("kernel is not a raw RISC-V Image (magic 'RISCV' at 0x30 / 'RSC\\x05' at 0x38 missing)")
    (_c0, _c1, text_offset, image_size, flags, version, _r1, _r2, _m, _m2, _r3) = _HEADER.unpack_from(data, 0)
    return ImageHeader(text_offset, image_size, flags, version, data[:2] == b"MZ")


def _zboot_payload(data: bytes) -> bytes:
    # zboot header: "MZ" .. "zimg" at 4, payload offset at 8, payload size
    # at 12, NUL-terminated compression name at 0x18.
    offset, size = struct.unpack_from("<II", data, 8)
    comp = data[0x18 : data.index(b"\0", 0x18)].decode(errors="replace")
    if offset >= len(data) or size == 0:
        raise ImageError("EFI zboot kernel has an invalid payload location")
    # Decompressors stop at their end-of-stream marker, so hand them the rest
    # of the file rather than trusting the exact size field.
    payload = data[offset:]
    try:
        if comp == "gzip":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if comp in ("xzkern", "xz", "lzma"):
            return lzma.LZMADecompressor().decompress(payload)
    except (zlib.error, lzma.LZMAError) as exc:
        raise ImageError(f"cannot decompress the EFI zboot kernel ({comp}): {exc}") from None
    raise ImageError(f"EFI zboot kernel uses unsupported compression {comp!r}")


def raw_kernel_image(data: bytes) -> bytes:
    """The raw, uncompressed RISC-V Image for a raw, gzip or zboot kernel file."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageError(f"cannot decompress the gzip kernel: {exc}") from None
    elif data[:2] == b"MZ" and data[4:8] == b"zimg":
        data = _zboot_payload(data)
    parse_image_header(data)
    return data

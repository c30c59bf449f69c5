import gzip
import lzma
import struct

import pytest

from pocketvm.images.errors import ImageError
from pocketvm.images.kernel import parse_image_header, raw_kernel_image


def fake_image(efi: bool = True, size: int = 4096) -> bytes:
    code0 = b"MZ\x6f\x10" if efi else b"\x6f\x00\x00\x00"
    header = code0 + struct.pack("<IQQQII", 0, 0x200000, size, 0, 2, 0) + struct.pack("<Q", 0)
    header += b"RISCV\0\0\0" + b"RSC\x05" + struct.pack("<I", 0x40)
    assert len(header) == 0x40
    return header + bytes(range(256)) * ((size - 0x40) // 256)


def test_raw_image_is_returned_unchanged():
    img = fake_image()
    assert raw_kernel_image(img) == img
    h = parse_image_header(img)
    assert (h.text_offset, h.image_size, h.version, h.efi_stub) == (0x200000, 4096, 2, True)
    assert parse_image_header(fake_image(efi=False)).efi_stub is False


def test_gzip_kernel_is_decompressed():
    img = fake_image()
    assert raw_kernel_image(gzip.compress(img)) == img


@pytest.mark.parametrize("comp", ["gzip", "xzkern"])
def test_efi_zboot_wrapper_is_unwrapped(comp):
    img = fake_image()
    payload = gzip.compress(img) if comp == "gzip" else lzma.compress(img, format=lzma.FORMAT_XZ)
    offset = 0x100
    stub = bytearray(offset)
    stub[0:2] = b"MZ"
    stub[4:8] = b"zimg"
    struct.pack_into("<II", stub, 8, offset, len(payload) - 4)
    stub[0x18 : 0x18 + len(comp) + 1] = comp.encode() + b"\0"
    assert raw_kernel_image(bytes(stub) + payload + b"\0" * 64) == img


def test_non_images_are_rejected():
    with pytest.raises(ImageError, match="RISC-V Image"):
        raw_kernel_image(b"\x7fELF" + b"\0" * 200)
    with pytest.raises(ImageError):
        raw_kernel_image(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ImageError):
        raw_kernel_image(b"MZ")
    bad = bytearray(fake_image())
    bad[0x38:0x3C] = b"RSC\x04"
    with pytest.raises(ImageError):
        parse_image_header(bytes(bad))

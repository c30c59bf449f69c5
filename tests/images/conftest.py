"""Shared helpers for the image builder tests."""

from __future__ import annotations

import lzma
import struct

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network: downloads from the Debian archive (first run only; cached after)")


def make_elf_with_modinfo(pairs: list[str]) -> bytes:
    """A minimal ELF64 little-endian relocatable file whose .modinfo holds pairs."""
    modinfo = b"".join(p.encode() + b"\0" for p in pairs)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    modinfo_off = data_off
    shstr_off = modinfo_off + len(modinfo)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 243, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = bytearray(header)
    body += modinfo + shstrtab
    body += b"\0" * (shoff - len(body))

    def sh(name: int, typ: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)

    body += sh(0, 0, 0, 0)
    body += sh(1, 1, modinfo_off, len(modinfo))
    body += sh(10, 3, shstr_off, len(shstrtab))
    return bytes(body)


@pytest.fixture
def make_ko():
    """make_ko(pairs, xz=True) -> bytes of a fake kernel module file."""

    def make(pairs: list[str], xz: bool = True) -> bytes:
        elf = make_elf_with_modinfo(pairs)
        return lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) if xz else elf

    return make


@pytest.fixture
def fake_busybox():
    """fake_busybox(applets) -> bytes laid out like a BusyBox binary's applet name table."""

    def make(applets: list[str]) -> bytes:
        table = b"\0".join(a.encode() for a in sorted(applets)) + b"\0\0"
        return b"\x7fELF" + b"\x01" * 200 + b"usage text\0" + table + b"/var/log/wtmp\0" + b"\x02" * 100

    return make

"""The ELF loader, on programs built by the cross compiler and on broken files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from board_testlib import cross_build, make_elf, objcopy_binary

from pocketvm.board.elf import BootError, load_elf, parse_elf
from pocketvm.memory import GuestRAM

BASE = 0x8000_0000
MiB = 1 << 20


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(4 * MiB)


def test_compiled_program_loads_at_its_address(tmp_path, ram):
    elf = cross_build("dtb_check.S", tmp_path / "t.elf", BASE)
    flat = objcopy_binary(elf, tmp_path / "t.bin").read_bytes()
    ram.u8[:] = 0xAA
    entry = load_elf(ram, elf.read_bytes())
    assert entry == BASE
    assert ram.read(BASE, len(flat)) == flat
    assert ram.read(BASE + len(flat), 16) == b"\xaa" * 16  # nothing past the segment


def test_compiled_bss_is_zeroed(tmp_path, ram):
    # The SBI payload ends with a 4 KiB .bss, which the file does not contain.
    elf = cross_build("sbi_payload.S", tmp_path / "p.elf", BASE + 0x20_0000)
    image = parse_elf(elf.read_bytes(), ram)
    (seg,) = image.segments
    assert seg.memsz - seg.filesz >= 4096
    ram.u8[:] = 0xAA
    assert load_elf(ram, elf.read_bytes()) == BASE + 0x20_0000
    assert not ram.view(seg.paddr + seg.filesz, seg.memsz - seg.filesz).any()
    assert ram.read(seg.paddr + 0x30, 8) == b"RISCV\0\0\0"


def test_segments_go_to_physical_addresses(ram):
    code = bytes(range(64))
    data = b"data" * 4
    # Linked to run at a high virtual address, loaded (AT) at physical ones.
    blob = make_elf([(BASE + 0x1000, code, 64), (BASE + 0x8000, data, 0x100)], BASE + 0x1000,
                    vaddr_offset=0xFFFF_FFFF_0000_0000)
    ram.u8[:] = 0xAA
    assert load_elf(ram, blob) == BASE + 0x1000
    assert ram.read(BASE + 0x1000, 64) == code
    assert ram.read(BASE + 0x8000, 16) == data
    assert not ram.view(BASE + 0x8010, 0xF0).any()
    assert ram.read(BASE + 0x8100, 4) == b"\xaa" * 4


def test_host_binary_is_rejected_for_its_machine(ram):
    host = Path(shutil.which("true") or sys.executable).read_bytes()
    with pytest.raises(BootError, match="not RISC-V"):
        load_elf(ram, host)


GOOD_SEG = [(BASE, b"\x13\x00\x00\x00" * 4, 16)]


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"#!/bin/sh\necho hi\n", "not an ELF"),
        (b"\x7fELF\x02\x01\x01", "truncated ELF header"),
        (make_elf(GOOD_SEG, BASE, klass=1), "not a 64-bit ELF"),
        (make_elf(GOOD_SEG, BASE, data=2), "not a little-endian ELF"),
        (make_elf(GOOD_SEG, BASE, machine=62), "not RISC-V"),
        (make_elf(GOOD_SEG, BASE, e_type=1), "not an executable"),
        (make_elf(GOOD_SEG, BASE)[:64 + 20], "truncated file"),  # program header cut
        (make_elf(GOOD_SEG, BASE)[:-4], "truncated file"),  # segment bytes cut
        (make_elf([(BASE - 0x1000, b"x" * 16, 16)], BASE), "outside RAM"),
        (make_elf([(BASE + 4 * MiB - 8, b"x" * 16, 16)], BASE), "outside RAM"),  # straddles the end
        (make_elf([(BASE, b"x" * 16, 0x1000_0000)], BASE), "outside RAM"),  # bss too big
        (make_elf([(BASE, b"x" * 32, 16)], BASE), "file size"),
        (make_elf(GOOD_SEG, 0x1000), "entry point"),
        (make_elf([], BASE), "no program headers"),
    ],
)
def test_bad_files_give_one_line_errors(ram, blob, message):
    with pytest.raises(BootError, match=message) as info:
        load_elf(ram, blob, name="prog.elf")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("prog.elf: ")


def test_rejected_file_leaves_ram_untouched(ram):
    # First segment is fine, second is outside RAM: nothing may be written.
    blob = make_elf([(BASE, b"\xff" * 64, 64), (BASE + 8 * MiB, b"\xff" * 16, 16)], BASE)
    with pytest.raises(BootError, match="segment 1"):
        load_elf(ram, blob)
    assert not ram.u8.any()

"""The ELF loader, on programs built by the cross compiler and on broken files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from board_testlib import CROSS, PF_R, PF_RWX, PF_W, PF_X, cross_build, make_elf, need_tool, objcopy_binary, quick_link

from pocketvm.board.boot import prepare_boot
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
CODE = (BASE, b"\x13\x00\x00\x00" * 4, 16, PF_R | PF_X)
JUNK = b"\xee" * 64


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
        # Outside RAM and needed by the program: executable, writable, or cut by the edge of RAM.
        (make_elf([CODE, (0x10000, JUNK, 64, PF_R | PF_X)], BASE),
         "executable segment 1 at 0x10000..0x10040 is outside"),
        (make_elf([CODE, (0x10000, JUNK, 64, PF_X)], BASE), "executable segment 1"),
        (make_elf([CODE, (0x10000, JUNK, 64, PF_R | PF_W)], BASE), "writable segment 1 at 0x10000..0x10040 is outside"),
        (make_elf([CODE, (0x10000, b"", 64, PF_R | PF_W)], BASE), "writable segment 1"),  # bss
        (make_elf([CODE, (BASE + 4 * MiB - 8, JUNK, 64, PF_R)], BASE), "segment 1 at 0x803ffff8..0x80400038 is partly"),
        (make_elf([(BASE - 8, JUNK, 64, PF_R), (BASE + 64, b"\x13" * 4, 4, PF_R | PF_X)], BASE + 64),
         "segment 0 at 0x7ffffff8..0x80000038 is partly"),
        # A read-only segment that would be skipped, but the program starts in it.
        (make_elf([CODE, (0x10000, JUNK, 64, PF_R)], 0x10000), "entry point 0x10000 is outside RAM"),
        (make_elf([(0x10000, JUNK, 64, PF_R)], BASE), "no loadable segments in RAM"),
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


# --- segments outside RAM that QEMU ignores ----------------------------------


def test_quick_linked_program_skips_its_header_segment(tmp_path, ram):
    """`gcc -nostdlib -static -Wl,-Ttext=...` puts the ELF headers and the
    build-id note in a read-only segment at 0x10000: not loaded, one warning."""
    elf = quick_link("uart_hello.S", tmp_path / "hello.elf", BASE)
    data = elf.read_bytes()
    image = parse_elf(data, ram, name="hello.elf")
    assert [(s.index, s.paddr) for s in image.skipped] == [(1, 0x10000)]
    assert all(ram.contains(s.paddr, s.memsz) for s in image.segments)
    assert len(image.segments) == 2  # text+rodata, and the GOT the program reads its string through
    (warning,) = image.warnings
    assert "\n" not in warning
    assert warning.startswith("hello.elf: not loading read-only segment 1 at 0x10000..0x10")
    assert warning.endswith(f"outside RAM ({BASE:#x}..{BASE + 4 * MiB:#x})")

    ram.u8[:] = 0xAA
    assert load_elf(ram, data) == BASE
    text = tmp_path / "text.bin"
    subprocess.run([need_tool(CROSS + "objcopy"), "-O", "binary", "-j", ".text", "-j", ".rodata", str(elf), str(text)],
                   check=True)
    assert ram.read(BASE, text.stat().st_size) == text.read_bytes()
    loaded = sum(s.memsz for s in image.segments)
    assert int((ram.u8 != 0xAA).sum()) <= loaded  # nothing else was written


@pytest.mark.parametrize("addr, flags", [
    (0x10000, PF_R),  # where the quick link puts it
    (0x1000, PF_R),  # on QEMU's boot ROM (pocketvm has none)
    (0x1000_0000, PF_R),  # on the UART
    (BASE + 4 * MiB, PF_R),  # just past the end of RAM
    (0x10000, 0),  # no permissions at all
])
def test_read_only_segment_outside_ram_is_skipped(ram, addr, flags):
    blob = make_elf([(BASE, b"\x13\x00\x00\x00" * 4, 16, PF_RWX), (addr, JUNK, 64, flags)], BASE)
    ram.u8[:] = 0xAA
    image = parse_elf(blob, ram, name="prog.elf")
    assert [s.paddr for s in image.skipped] == [addr]
    assert image.warnings == [f"prog.elf: not loading read-only segment 1 at {addr:#x}..{addr + 64:#x}: "
                              f"outside RAM ({BASE:#x}..{BASE + 4 * MiB:#x})"]
    assert load_elf(ram, blob) == BASE
    assert ram.read(BASE, 16) == b"\x13\x00\x00\x00" * 4
    assert not (ram.u8 == 0xEE).any()


def test_several_skipped_segments_make_one_warning(ram):
    blob = make_elf([CODE, (0x10000, JUNK, 64, PF_R), (0x20000, JUNK[:32], 32, PF_R)], BASE)
    (warning,) = parse_elf(blob, ram, name="prog.elf").warnings
    assert "segments 1 at 0x10000..0x10040, 2 at 0x20000..0x20020: outside RAM" in warning


def test_boot_plan_carries_the_warning_and_no_region_for_the_skipped_segment(tmp_path):
    elf = quick_link("uart_hello.S", tmp_path / "hello.elf", BASE)
    plan = prepare_boot(GuestRAM(64 * MiB), 1, elf, None, None, "", [])
    (warning,) = plan.warnings
    assert warning.startswith(f"program {elf}: not loading read-only segment 1 at 0x10000")
    assert [r.name for r in plan.regions] == ["program[2]", "program[3]", "dtb"]
    assert plan.harts[0].pc == BASE


def _pocket_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pocketvm", "run", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize("segments, entry, needle", [
    ([CODE, (0x10000, JUNK, 64, PF_R | PF_X)], BASE, "executable segment 1 at 0x10000..0x10040 is outside RAM"),
    ([CODE, (0x10000, JUNK, 64, PF_R)], 0x10000, "entry point 0x10000 is outside RAM"),
])
def test_segments_that_matter_stop_pocket_run_with_one_line(tmp_path, segments, entry, needle):
    path = tmp_path / "prog.elf"
    path.write_bytes(make_elf(segments, entry))
    res = _pocket_run("--bios", "none", "--kernel", str(path))
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pocket: error:") and needle in lines[0], res.stderr

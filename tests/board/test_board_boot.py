"""Boot layout: what lands where in RAM and how the harts start."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from board_testlib import OPENSBI, cells, cross_build, make_elf, make_kernel_image, strings, tree_of, u64

from pocketvm.board.boot import BootPlan, prepare_boot
from pocketvm.board.errors import BootError
from pocketvm.cpu import state
from pocketvm.memory import GuestRAM

BASE = 0x8000_0000
MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def firmware(tmp_path) -> Path:
    """Debian's OpenSBI if present, else a stand-in blob of similar size."""
    if OPENSBI.exists():
        return OPENSBI
    path = tmp_path / "fw.bin"
    path.write_bytes(bytes(range(256)) * 450)
    return path


@pytest.fixture
def kernel(tmp_path) -> Path:
    path = tmp_path / "Image"
    path.write_bytes(make_kernel_image(bytes(range(256)) * 64, image_size=3 * MiB))
    return path


@pytest.fixture
def initrd(tmp_path) -> Path:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x1f\x8b" + np.random.default_rng(1).bytes(300_000))
    return path


def overlaps(plan: BootPlan) -> list[tuple[str, str]]:
    rs = plan.regions
    return [(a.name, b.name) for i, a in enumerate(rs) for b in rs[i + 1:] if a.start < b.end and b.start < a.end]


@pytest.mark.parametrize("nharts", [1, 4])
def test_firmware_boot_layout(tmp_path, firmware, kernel, initrd, nharts):
    ram = GuestRAM(256 * MiB)
    plan = prepare_boot(ram, nharts, kernel, firmware, initrd, "console=ttyS0", [0, 2])
    names = [r.name for r in plan.regions]
    assert names == ["firmware", "kernel", "initrd", "fw_dynamic_info", "dtb"]
    assert overlaps(plan) == []
    assert all(ram.contains(r.start, r.size) for r in plan.regions)

    fw = firmware.read_bytes()
    assert ram.read(BASE, len(fw)) == fw
    assert plan.kernel_addr == BASE + 0x20_0000
    image = kernel.read_bytes()
    assert ram.read(plan.kernel_addr, len(image)) == image
    regions = {r.name: r for r in plan.regions}
    assert regions["kernel"].size == 3 * MiB  # image_size (bss included), not the file size

    start, end = plan.initrd_range
    assert start % 4096 == 0 and start >= regions["kernel"].end
    assert ram.read(start, end - start) == initrd.read_bytes()
    assert end <= plan.fw_info_addr < plan.dtb_addr
    assert plan.dtb_addr % 8 == 0
    assert plan.dtb_addr == 0x8FE0_0000  # where QEMU's virt puts it for 256 MiB
    assert ram.read(plan.dtb_addr, len(plan.dtb)) == plan.dtb

    info = ram.read(plan.fw_info_addr, 48)
    assert plan.fw_info_addr % 8 == 0
    # magic "OSBI", version 2, next_addr = kernel, next_mode = S, options 0, boot_hart 0
    assert struct.unpack("<6Q", info) == (0x4942534F, 2, BASE + 0x20_0000, 1, 0, 0)

    assert [(h.hartid, h.pc, h.a0, h.a1, h.a2, h.priv) for h in plan.harts] == [
        (h, BASE, h, plan.dtb_addr, plan.fw_info_addr, 3) for h in range(nharts)
    ]

    tree = tree_of(plan.dtb, tmp_path)
    chosen = tree["/chosen"]
    assert (u64(chosen["linux,initrd-start"]), u64(chosen["linux,initrd-end"])) == plan.initrd_range
    assert strings(chosen["bootargs"]) == ["console=ttyS0"]
    assert cells(tree["/memory@80000000"]["reg"]) == [0, BASE, 0, 256 * MiB]
    assert len([p for p in tree if p.startswith("/cpus/cpu@")]) == 2 * nharts  # cpu + its intc
    assert [p for p in tree if p.startswith("/soc/virtio_mmio@")] == [
        "/soc/virtio_mmio@10001000", "/soc/virtio_mmio@10003000"]


def test_no_initrd(firmware, kernel, tmp_path):
    ram = GuestRAM(64 * MiB)
    plan = prepare_boot(ram, 1, kernel, firmware, None, "", [])
    assert plan.initrd_range is None
    assert [r.name for r in plan.regions] == ["firmware", "kernel", "fw_dynamic_info", "dtb"]
    assert "linux,initrd-start" not in tree_of(plan.dtb, tmp_path)["/chosen"]


def test_text_offset_is_honoured(tmp_path, firmware):
    path = tmp_path / "Image"
    path.write_bytes(make_kernel_image(text_offset=0x40_0000))
    ram = GuestRAM(64 * MiB)
    plan = prepare_boot(ram, 1, path, firmware, None, "", [])
    assert plan.kernel_addr == BASE + 0x40_0000
    assert ram.read(BASE + 0x40_0000, 64) == path.read_bytes()[:64]
    assert struct.unpack_from("<3Q", ram.read(plan.fw_info_addr, 24))[2] == BASE + 0x40_0000


def test_gzip_kernel_is_inflated(tmp_path, firmware):
    raw = make_kernel_image(bytes(range(256)) * 16)
    path = tmp_path / "Image.gz"
    path.write_bytes(gzip.compress(raw))
    ram = GuestRAM(64 * MiB)
    plan = prepare_boot(ram, 1, path, firmware, None, "", [])
    assert ram.read(plan.kernel_addr, len(raw)) == raw


def test_large_ram_keeps_boot_data_below_3gib(firmware, kernel, initrd):
    ram = GuestRAM(4 * GiB)  # lazily committed: only touched pages cost memory
    plan = prepare_boot(ram, 1, kernel, firmware, initrd, "", [])
    assert plan.dtb_addr == 0xBFE0_0000
    assert plan.initrd_range[1] <= 0xC000_0000


def test_too_small_ram_says_how_much_is_needed(firmware, kernel, initrd):
    with pytest.raises(BootError, match=r"need at least (\d+) MiB, the VM has 4 MiB") as info:
        prepare_boot(GuestRAM(4 * MiB), 1, kernel, firmware, initrd, "", [])
    need = int(info.value.args[0].split("at least ")[1].split(" MiB")[0])
    # The stated amount is enough, and one MiB less is not.
    prepare_boot(GuestRAM(need * MiB), 1, kernel, firmware, initrd, "", [])
    small = GuestRAM((need - 1) * MiB)
    with pytest.raises(BootError, match="not enough RAM"):
        prepare_boot(small, 1, kernel, firmware, initrd, "", [])
    assert not small.u8.any()  # a refused boot writes nothing


def test_kernel_beyond_ram(tmp_path, firmware):
    path = tmp_path / "Image"
    path.write_bytes(make_kernel_image(image_size=40 * MiB))
    with pytest.raises(BootError, match="not enough RAM"):
        prepare_boot(GuestRAM(32 * MiB), 1, path, firmware, None, "", [])


def test_file_errors(tmp_path, firmware, kernel, initrd):
    ram = GuestRAM(64 * MiB)
    missing = tmp_path / "nope"
    with pytest.raises(BootError, match="kernel .*nope: no such file"):
        prepare_boot(ram, 1, missing, firmware, None, "", [])
    with pytest.raises(BootError, match="firmware .*nope: no such file"):
        prepare_boot(ram, 1, kernel, missing, None, "", [])
    with pytest.raises(BootError, match="initrd .*nope: no such file"):
        prepare_boot(ram, 1, kernel, firmware, missing, "", [])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(BootError, match="initrd .*empty"):
        prepare_boot(ram, 1, kernel, firmware, empty, "", [])
    with pytest.raises(BootError, match="cannot read"):
        prepare_boot(ram, 1, tmp_path, firmware, None, "", [])  # a directory
    assert not ram.u8.any()


@pytest.mark.parametrize(
    "blob, message",
    [
        (make_elf([(BASE + 0x20_0000, b"\x13" * 64, 64)], BASE + 0x20_0000), "not a RISC-V Linux Image"),
        (b"\x00" * 32, "too short"),
        (make_kernel_image(flags=1), "big-endian"),
        (make_kernel_image(text_offset=0x30_0000), "not 2 MiB aligned"),
        (b"MZ\x00\x00zimg" + b"\x00" * 100, "EFI zboot"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
)
def test_kernel_that_is_not_an_image(tmp_path, firmware, blob, message):
    path = tmp_path / "kernel"
    path.write_bytes(blob)
    ram = GuestRAM(64 * MiB)
    with pytest.raises(BootError, match=message):
        prepare_boot(ram, 1, path, firmware, None, "", [])
    assert not ram.u8.any()


def test_bad_board_settings(firmware, kernel):
    ram = GuestRAM(64 * MiB)
    with pytest.raises(BootError, match="virtio slot 9"):
        prepare_boot(ram, 1, kernel, firmware, None, "", [9])
    with pytest.raises(BootError, match="harts"):
        prepare_boot(ram, 0, kernel, firmware, None, "", [])
    with pytest.raises(BootError, match="ASCII"):
        prepare_boot(ram, 1, kernel, firmware, None, "caf\u00e9", [])


def test_bare_metal_elf(tmp_path, initrd):
    elf = cross_build("dtb_check.S", tmp_path / "t.elf", BASE)
    ram = GuestRAM(32 * MiB)
    plan = prepare_boot(ram, 2, elf, None, initrd, "hello", [1])
    assert plan.fw_info_addr is None and plan.kernel_addr is None
    assert overlaps(plan) == []
    assert [(h.pc, h.a0, h.a1, h.a2, h.priv) for h in plan.harts] == [
        (BASE, h, plan.dtb_addr, 0, 3) for h in range(2)]
    assert ram.read(plan.dtb_addr, 4) == b"\xd0\x0d\xfe\xed"
    start, end = plan.initrd_range
    assert ram.read(start, end - start) == initrd.read_bytes()
    assert plan.regions[0].name.startswith("program")
    assert ram.read(BASE, 4) != b"\0\0\0\0"


def test_bare_metal_elf_entry_not_at_base(tmp_path):
    blob = make_elf([(BASE + 0x1000, b"\x6f\x00\x00\x00", 4)], BASE + 0x1000)
    path = tmp_path / "p.elf"
    path.write_bytes(blob)
    ram = GuestRAM(8 * MiB)
    plan = prepare_boot(ram, 1, path, None, None, "", [])
    assert plan.harts[0].pc == BASE + 0x1000
    assert ram.read(BASE + 0x1000, 4) == b"\x6f\x00\x00\x00"


def test_bare_metal_raw_binary(tmp_path):
    path = tmp_path / "prog.bin"
    path.write_bytes(b"\x6f\x00\x00\x00" * 8)
    ram = GuestRAM(8 * MiB)
    plan = prepare_boot(ram, 1, path, None, None, "", [])
    assert plan.harts[0].pc == BASE
    assert ram.read(BASE, 32) == path.read_bytes()
    assert plan.harts[0].a1 == plan.dtb_addr and plan.harts[0].a2 == 0


def test_bare_metal_program_too_big(tmp_path):
    path = tmp_path / "prog.bin"
    path.write_bytes(b"\x13" * (3 * MiB))
    with pytest.raises(BootError, match="not enough RAM"):
        prepare_boot(GuestRAM(4 * MiB), 1, path, None, None, "", [])


def test_hart_start_apply(firmware, kernel):
    plan = prepare_boot(GuestRAM(64 * MiB), 2, kernel, firmware, None, "", [])
    st = state.new_hart_state(1)
    plan.harts[1].apply(st)
    assert st[state.PC] == BASE
    assert st[state.PRIV] == 3
    assert list(st[state.X + 10 : state.X + 13]) == [1, plan.dtb_addr, plan.fw_info_addr]


@pytest.mark.parametrize("content", [b"this is not an archive", b"\x7fELF" + bytes(100)])
def test_initrd_that_is_no_initramfs_is_refused(tmp_path, firmware, kernel, content):
    bad = tmp_path / "bad-initrd"
    bad.write_bytes(content)
    ram = GuestRAM(64 * MiB)
    with pytest.raises(BootError, match="not an initramfs"):
        prepare_boot(ram, 1, kernel, firmware, bad, "", [])
    assert not ram.u8.any()

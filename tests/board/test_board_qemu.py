"""Cross-checks against QEMU's virt machine: our DTB and boot layout must work
for the same bare-metal program and the same OpenSBI there."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from board_testlib import (OPENSBI, cells, cross_build, decompile, objcopy_binary, parse_dts, quick_link, run_qemu,
                           strings, tree_of)

from pocketvm.board.boot import prepare_boot
from pocketvm.board.fdt import BoardConfig, build_dtb
from pocketvm.memory import GuestRAM

pytestmark = pytest.mark.qemu

BASE = 0x8000_0000
MiB = 1 << 20


@pytest.mark.parametrize("nharts, initrd", [(1, None), (4, (0x8400_0000, 0x8410_0000))])
def test_bare_metal_program_gets_our_dtb_under_qemu(tmp_path, nharts, initrd):
    dtb = build_dtb(BoardConfig(memory_size=128 * MiB, nharts=nharts, bootargs="console=ttyS0",
                                initrd_range=initrd, virtio_slots=[0, 1]))
    (tmp_path / "our.dtb").write_bytes(dtb)
    elf = cross_build("dtb_check.S", tmp_path / "t.elf", BASE, {"FIND_MODEL": 1})
    res = run_qemu(["-M", "virt", "-smp", str(nharts), "-m", "128M", "-bios", "none", "-kernel", str(elf),
                    "-dtb", str(tmp_path / "our.dtb"), "-nographic", "-monitor", "none"], timeout=30)
    assert "DTB OK" in res.stdout, (res.stdout, res.stderr)
    assert res.returncode == 0


def test_quick_linked_program_runs_as_under_qemu(tmp_path):
    """A program linked with just -Ttext has a read-only segment at 0x10000
    (ELF headers, build-id note). QEMU ignores it and runs the program;
    `pocket run` must too, with the same output and exit code, plus one
    warning line."""
    elf = quick_link("uart_hello.S", tmp_path / "hello.elf", BASE)
    theirs = run_qemu(["-M", "virt", "-m", "128M", "-bios", "none", "-kernel", str(elf), "-nographic",
                       "-monitor", "none"], timeout=30)
    ours = subprocess.run([sys.executable, "-m", "pocketvm", "run", "-m", "128M", "--bios", "none",
                           "--kernel", str(elf)], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert theirs.stdout == "hello from a quick-linked program\n", theirs
    assert theirs.returncode == 7, theirs
    assert ours.stdout == theirs.stdout, ours
    assert ours.returncode == theirs.returncode, ours
    assert "Traceback" not in ours.stderr
    warnings = [line for line in ours.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, ours.stderr
    assert warnings[0].startswith(f"pocket: warning: program {elf}: not loading read-only segment 1 at 0x10000.."), \
        ours.stderr


TRAMPOLINE = 0x8800_0000
STAGE = 0x8900_0000


@pytest.mark.skipif(not OPENSBI.exists(), reason="QEMU's OpenSBI fw_dynamic.bin is not installed")
@pytest.mark.parametrize("nharts", [1, 4])
def test_opensbi_starts_kernel_from_our_layout(tmp_path, nharts):
    """OpenSBI, started exactly as prepare_boot says, must parse our DTB and
    fw_dynamic_info and enter the kernel Image in S-mode with the DTB in a1.

    With several harts, which one OpenSBI cold-boots on is its own lottery
    (fw_dynamic_info's boot_hart only picks the hart that relocates; sbi_init
    then lets the first hart to arrive win), so any of our harts may be the
    one that enters the kernel: it must be one of ours, and a0 must say which."""
    payload_elf = cross_build("sbi_payload.S", tmp_path / "payload.elf", BASE + 0x20_0000)
    image = objcopy_binary(payload_elf, tmp_path / "Image")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"070701" + b"INITRD" * 5000)

    ram = GuestRAM(256 * MiB)
    plan = prepare_boot(ram, nharts, image, OPENSBI, initrd, "console=ttyS0", [0])
    low = [r for r in plan.regions if r.end <= TRAMPOLINE]
    high = [r for r in plan.regions if r.start >= STAGE + 16 * MiB]
    assert len(low) + len(high) == len(plan.regions), "test addresses collide with the layout"

    # Low part (firmware + kernel) goes straight to its place. The high part
    # (initrd, fw_dynamic_info, DTB) is where QEMU puts its own DTB, so it is
    # staged and copied into place by the trampoline.
    low_end = max(r.end for r in low)
    (tmp_path / "low.bin").write_bytes(ram.read(BASE, low_end - BASE))
    high_start = min(r.start for r in high) & ~7
    high_end = (max(r.end for r in high) + 7) & ~7
    (tmp_path / "high.bin").write_bytes(ram.read(high_start, high_end - high_start))
    tramp = cross_build("trampoline.S", tmp_path / "tramp.elf", TRAMPOLINE, {
        "STAGE_SRC": STAGE, "STAGE_DST": high_start, "STAGE_LEN": high_end - high_start,
        "DTB": plan.dtb_addr, "INFO": plan.fw_info_addr, "ENTRY": plan.harts[0].pc})

    args = ["-M", "virt", "-smp", str(nharts), "-m", "256M", "-bios", "none", "-nographic", "-monitor", "none",
            "-device", f"loader,file={tmp_path / 'low.bin'},addr={BASE:#x},force-raw=on",
            "-device", f"loader,file={tmp_path / 'high.bin'},addr={STAGE:#x},force-raw=on",
            "-device", f"loader,file={tramp},cpu-num=0"]
    for hart in range(1, nharts):
        args += ["-device", f"loader,addr={TRAMPOLINE:#x},cpu-num={hart}"]
    res = run_qemu(args, timeout=30)
    out = res.stdout
    entered = re.findall(r"^PAYLOAD hart=(0x[0-9a-f]{16}) dtb=(0x[0-9a-f]{16}) (OK|BAD)$", out, re.MULTILINE)
    assert len(entered) == 1, (out, res.stderr)  # exactly one hart reaches the kernel
    hart_hex, dtb_hex, verdict = entered[0]
    boot_hart = int(hart_hex, 16)
    assert boot_hart in range(nharts), out
    assert int(dtb_hex, 16) == plan.dtb_addr and verdict == "OK", out
    assert res.returncode == 0
    # OpenSBI found the devices and harts in our tree and read our fw_dynamic_info.
    expect = {
        "Platform HART Count": str(nharts),
        "Platform Console Device": "uart8250",
        "Platform Shutdown Device": "sifive_test",
        "Domain0 Next Address": f"{plan.kernel_addr:#018x}",
        "Domain0 Next Arg1": f"{plan.dtb_addr:#018x}",
        "Domain0 Next Mode": "S-mode",
        "Domain0 HARTs": ",".join(f"{h}*" for h in range(nharts)),
        "Domain0 Boot HART": str(boot_hart),
        "Boot HART ID": str(boot_hart),
    }
    seen = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    for key, value in expect.items():
        assert seen.get(key) == value, (key, seen.get(key), out)


def _irq_pairs(tree: dict[str, dict[str, bytes]], value: bytes) -> list[tuple[int, int]]:
    """interrupts-extended as (hart, irq) pairs, independent of phandle numbering."""
    by_phandle = {cells(p["phandle"])[0]: path for path, p in tree.items() if "phandle" in p}
    ext = cells(value)
    out = []
    for i in range(0, len(ext), 2):
        cpu = by_phandle[ext[i]].rsplit("/", 1)[0]
        out.append((cells(tree[cpu]["reg"])[0], ext[i + 1]))
    return out


def test_tree_matches_qemu_virt(tmp_path):
    dump = tmp_path / "qemu.dtb"
    res = run_qemu(["-M", f"virt,dumpdtb={dump}", "-smp", "2", "-m", "256M", "-nographic"], timeout=30)
    assert dump.exists(), res.stderr
    theirs = parse_dts(decompile(dump.read_bytes(), tmp_path)[0])
    ours = tree_of(build_dtb(BoardConfig(memory_size=256 * MiB, nharts=2, virtio_slots=list(range(8)))), tmp_path)

    assert ours["/memory@80000000"]["reg"] == theirs["/memory@80000000"]["reg"]
    assert ours["/cpus"]["timebase-frequency"] == theirs["/cpus"]["timebase-frequency"]
    assert ours["/chosen"]["stdout-path"] == theirs["/chosen"]["stdout-path"]
    for path in ("/poweroff", "/reboot"):
        for prop in ("compatible", "offset", "value"):
            assert ours[path][prop] == theirs[path][prop], (path, prop)
    # The VM generation ID is pocketvm's own addition (QEMU's virt has it
    # only with ACPI); it sits where QEMU's map has nothing.
    extra = {"/soc/vmgenid@102000"}
    assert extra <= set(ours) and not extra & set(theirs)
    soc_nodes = [p for p in ours if p.startswith("/soc/") and p not in extra]
    assert len(soc_nodes) == 5 + 8
    for path in soc_nodes:
        assert path in theirs, path
        for prop in ("reg", "compatible", "interrupts", "clock-frequency", "#interrupt-cells"):
            assert ours[path].get(prop) == theirs[path].get(prop), (path, prop)
        if "interrupts-extended" in ours[path]:
            assert _irq_pairs(ours, ours[path]["interrupts-extended"]) == \
                _irq_pairs(theirs, theirs[path]["interrupts-extended"]), path
    for hart in range(2):
        cpu = f"/cpus/cpu@{hart}"
        for prop in ("device_type", "reg", "status", "compatible", "mmu-type"):
            assert ours[cpu][prop] == theirs[cpu][prop], (cpu, prop)
        intc = cpu + "/interrupt-controller"
        assert strings(ours[intc]["compatible"]) == strings(theirs[intc]["compatible"])

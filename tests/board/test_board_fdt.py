"""The generated device tree, read back through dtc."""

from __future__ import annotations

import pytest
from board_testlib import cells, strings, tree_of, u64

from pocketvm.board.fdt import BoardConfig, build_dtb

MiB = 1 << 20
GiB = 1 << 30


def phandles(tree: dict[str, dict[str, bytes]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for path, props in tree.items():
        if "phandle" in props:
            (ph,) = cells(props["phandle"])
            assert ph not in out, f"phandle {ph} used by {out.get(ph)} and {path}"
            out[ph] = path
    return out


@pytest.mark.parametrize("nharts", [1, 4])
@pytest.mark.parametrize("initrd", [None, (0x8400_0000, 0x8480_1234)])
def test_dtc_accepts_tree_without_warnings(tmp_path, nharts, initrd):
    dtb = build_dtb(BoardConfig(memory_size=256 * MiB, nharts=nharts, bootargs="console=ttyS0",
                                initrd_range=initrd, virtio_slots=[0, 1]))
    tree = tree_of(dtb, tmp_path)  # asserts dtc printed no warnings
    assert dtb[:4] == b"\xd0\x0d\xfe\xed"
    assert int.from_bytes(dtb[20:24], "big") == 17  # version
    assert int.from_bytes(dtb[4:8], "big") == len(dtb)  # totalsize
    assert strings(tree["/"]["compatible"]) == ["riscv-virtio"]
    assert cells(tree["/"]["#address-cells"]) == [2] and cells(tree["/"]["#size-cells"]) == [2]


@pytest.mark.parametrize("nharts", [1, 4])
def test_cpus(tmp_path, nharts):
    tree = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=nharts)), tmp_path)
    ph = phandles(tree)
    assert cells(tree["/cpus"]["timebase-frequency"]) == [10_000_000]
    assert cells(tree["/cpus"]["#address-cells"]) == [1] and cells(tree["/cpus"]["#size-cells"]) == [0]
    cpu_nodes = [p for p in tree if p.startswith("/cpus/cpu@") and p.count("/") == 2]
    assert cpu_nodes == [f"/cpus/cpu@{h:x}" for h in range(nharts)]
    for hart in range(nharts):
        cpu = tree[f"/cpus/cpu@{hart:x}"]
        assert strings(cpu["device_type"]) == ["cpu"]
        assert cells(cpu["reg"]) == [hart]
        assert strings(cpu["status"]) == ["okay"]
        assert strings(cpu["compatible"]) == ["riscv"]
        assert strings(cpu["riscv,isa"]) == ["rv64imafdc_zicsr_zifencei"]
        assert strings(cpu["riscv,isa-base"]) == ["rv64i"]
        assert strings(cpu["riscv,isa-extensions"]) == ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei"]
        assert strings(cpu["mmu-type"]) == ["riscv,sv48"]
        intc = tree[f"/cpus/cpu@{hart:x}/interrupt-controller"]
        assert strings(intc["compatible"]) == ["riscv,cpu-intc"]
        assert intc["interrupt-controller"] == b""
        assert cells(intc["#interrupt-cells"]) == [1]
        assert "phandle" in intc
        # cpu-map points at this cpu
        (core_ph,) = cells(tree[f"/cpus/cpu-map/cluster0/core{hart}"]["cpu"])
        assert ph[core_ph] == f"/cpus/cpu@{hart:x}"


def intc_hart(tree: dict[str, dict[str, bytes]], ph: int) -> int:
    """Hart number of the cpu whose interrupt controller has phandle `ph`."""
    path = phandles(tree)[ph]
    assert path.endswith("/interrupt-controller"), path
    (hart,) = cells(tree[path.rsplit("/", 1)[0]]["reg"])
    return hart


@pytest.mark.parametrize("nharts", [1, 4])
def test_clint_and_plic_contexts(tmp_path, nharts):
    tree = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=nharts)), tmp_path)
    clint = tree["/soc/clint@2000000"]
    assert strings(clint["compatible"]) == ["sifive,clint0", "riscv,clint0"]
    assert cells(clint["reg"]) == [0, 0x0200_0000, 0, 0x1_0000]
    ext = cells(clint["interrupts-extended"])
    pairs = [(intc_hart(tree, ext[i]), ext[i + 1]) for i in range(0, len(ext), 2)]
    assert pairs == [p for h in range(nharts) for p in ((h, 3), (h, 7))]

    plic = tree["/soc/plic@c000000"]
    assert strings(plic["compatible"]) == ["sifive,plic-1.0.0", "riscv,plic0"]
    assert cells(plic["reg"]) == [0, 0x0C00_0000, 0, 0x60_0000]
    assert cells(plic["riscv,ndev"]) == [95]
    assert plic["interrupt-controller"] == b""
    assert cells(plic["#interrupt-cells"]) == [1]
    ext = cells(plic["interrupts-extended"])
    # context 2*h is hart h's M-mode (MEI, 11), 2*h+1 its S-mode (SEI, 9)
    contexts = [(intc_hart(tree, ext[i]), ext[i + 1]) for i in range(0, len(ext), 2)]
    assert contexts == [p for h in range(nharts) for p in ((h, 11), (h, 9))]


def test_uart_rtc_test_device_and_power_nodes(tmp_path):
    tree = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=1)), tmp_path)
    ph = phandles(tree)
    plic_ph = cells(tree["/soc/plic@c000000"]["phandle"])[0]

    uart = tree["/soc/serial@10000000"]
    assert strings(uart["compatible"]) == ["ns16550a"]
    assert cells(uart["reg"]) == [0, 0x1000_0000, 0, 0x100]
    assert cells(uart["clock-frequency"]) == [3_686_400]
    assert cells(uart["interrupts"]) == [10]
    assert cells(uart["interrupt-parent"]) == [plic_ph]

    rtc = tree["/soc/rtc@101000"]
    assert strings(rtc["compatible"]) == ["google,goldfish-rtc"]
    assert cells(rtc["reg"]) == [0, 0x10_1000, 0, 0x1000]
    assert cells(rtc["interrupts"]) == [11]
    assert cells(rtc["interrupt-parent"]) == [plic_ph]

    test = tree["/soc/test@100000"]
    assert strings(test["compatible"]) == ["sifive,test1", "sifive,test0", "syscon"]
    assert cells(test["reg"]) == [0, 0x10_0000, 0, 0x1000]
    for node, compatible, value in (("/poweroff", "syscon-poweroff", 0x5555), ("/reboot", "syscon-reboot", 0x7777)):
        assert strings(tree[node]["compatible"]) == [compatible]
        assert ph[cells(tree[node]["regmap"])[0]] == "/soc/test@100000"
        assert cells(tree[node]["offset"]) == [0]
        assert cells(tree[node]["value"]) == [value]

    soc = tree["/soc"]
    assert strings(soc["compatible"]) == ["simple-bus"] and soc["ranges"] == b""


def test_only_populated_virtio_slots_in_slot_order(tmp_path):
    tree = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=1, virtio_slots=[7, 0, 2])), tmp_path)
    plic_ph = cells(tree["/soc/plic@c000000"]["phandle"])[0]
    virtio = [p for p in tree if p.startswith("/soc/virtio_mmio@")]
    assert virtio == ["/soc/virtio_mmio@10001000", "/soc/virtio_mmio@10003000", "/soc/virtio_mmio@10008000"]
    for path, slot in zip(virtio, (0, 2, 7)):
        node = tree[path]
        assert strings(node["compatible"]) == ["virtio,mmio"]
        assert cells(node["reg"]) == [0, 0x1000_1000 + 0x1000 * slot, 0, 0x1000]
        assert cells(node["interrupts"]) == [1 + slot]
        assert cells(node["interrupt-parent"]) == [plic_ph]

    bare = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=1)), tmp_path)
    assert not [p for p in bare if "virtio" in p]


def test_memory_node_above_4gib(tmp_path):
    tree = tree_of(build_dtb(BoardConfig(memory_size=6 * GiB, nharts=1)), tmp_path)
    mem = tree["/memory@80000000"]
    assert strings(mem["device_type"]) == ["memory"]
    assert cells(mem["reg"]) == [0, 0x8000_0000, 1, 0x8000_0000]


def test_chosen(tmp_path):
    start, end = 0x1_2000_0000, 0x1_2345_6789  # high cells must survive
    tree = tree_of(build_dtb(BoardConfig(memory_size=8 * GiB, nharts=2, bootargs="console=ttyS0 root=/dev/vda rw",
                                         initrd_range=(start, end))), tmp_path)
    chosen = tree["/chosen"]
    assert strings(chosen["bootargs"]) == ["console=ttyS0 root=/dev/vda rw"]
    stdout = strings(chosen["stdout-path"])[0]
    assert stdout == "/soc/serial@10000000" and stdout in tree
    assert len(chosen["linux,initrd-start"]) == 8 and len(chosen["linux,initrd-end"]) == 8
    assert u64(chosen["linux,initrd-start"]) == start
    assert u64(chosen["linux,initrd-end"]) == end

    plain = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=1)), tmp_path)["/chosen"]
    assert "linux,initrd-start" not in plain and "linux,initrd-end" not in plain
    assert "bootargs" not in plain
    assert strings(plain["stdout-path"]) == ["/soc/serial@10000000"]


def test_same_config_same_bytes():
    cfg = BoardConfig(memory_size=128 * MiB, nharts=3, bootargs="quiet", virtio_slots=[1, 4], rng_seed=b"\x01" * 32)
    assert build_dtb(cfg) == build_dtb(cfg)


def test_fresh_rng_seed_each_boot(tmp_path):
    cfg = BoardConfig(memory_size=128 * MiB, nharts=1)
    first, second = build_dtb(cfg), build_dtb(cfg)
    assert first != second and len(first) == len(second)
    seed = tree_of(first, tmp_path)["/chosen"]["rng-seed"]
    assert len(seed) == 64
    unseeded = tree_of(build_dtb(BoardConfig(memory_size=128 * MiB, nharts=1, rng_seed=b"")), tmp_path)
    assert "rng-seed" not in unseeded["/chosen"]


@pytest.mark.parametrize(
    "cfg",
    [
        BoardConfig(memory_size=0, nharts=1),
        BoardConfig(memory_size=128 * MiB + 1, nharts=1),
        BoardConfig(memory_size=128 * MiB, nharts=0),
        BoardConfig(memory_size=128 * MiB, nharts=65),
        BoardConfig(memory_size=128 * MiB, nharts=1, virtio_slots=[8]),
        BoardConfig(memory_size=128 * MiB, nharts=1, virtio_slots=[-1]),
        BoardConfig(memory_size=128 * MiB, nharts=1, virtio_slots=[3, 3]),
        BoardConfig(memory_size=128 * MiB, nharts=1, bootargs="console=ttyS0 h\u00e9"),
        BoardConfig(memory_size=128 * MiB, nharts=1, bootargs="a\0b"),
        BoardConfig(memory_size=128 * MiB, nharts=1, initrd_range=(0x8800_0000, 0x8800_0000)),
        BoardConfig(memory_size=128 * MiB, nharts=1, initrd_range=(0x7000_0000, 0x8000_1000)),
        BoardConfig(memory_size=128 * MiB, nharts=1, initrd_range=(0x87FF_F000, 0x8800_1000)),
    ],
)
def test_bad_config_is_rejected(cfg):
    with pytest.raises(ValueError):
        build_dtb(cfg)

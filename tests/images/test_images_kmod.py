import pytest

from pocketvm.images import kmod

# A synthetic modules.dep in depmod's format: each line lists the module's
# dependencies (here transitive, in depmod's "load from the end" order).
MODULES_DEP = """\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/drivers/virtio/virtio_mmio.ko.xz:
"""
SOFTDEP = """\
# comment
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c post: nothing
softdep libcrc32c pre: crc32c
"""
ALIAS = """\
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias of:N*T*Cvirtio,mmio virtio_mmio
"""


def index() -> kmod.ModuleIndex:
    paths, depends = kmod.parse_modules_dep(MODULES_DEP)
    return kmod.ModuleIndex(paths, depends, kmod.parse_modules_softdep(SOFTDEP),
                            kmod.parse_modules_alias(ALIAS),
                            kmod.parse_modules_builtin("kernel/drivers/virtio/virtio.ko\n"))


def assert_deps_first(order, depends):
    for i, name in enumerate(order):
        for dep in depends[name]:
            assert dep in order[:i], f"{dep} must load before {name}"


def test_parse_modules_dep_names_and_paths():
    paths, depends = kmod.parse_modules_dep(MODULES_DEP)
    assert paths["virtio_rng"] == "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
    assert depends["ext4"] == ["jbd2", "mbcache", "crc16"]
    assert depends["failover"] == []


def test_dependencies_load_first_each_once():
    _, depends = kmod.parse_modules_dep(MODULES_DEP)
    order = kmod.resolve_load_order(["virtio_net", "ext4", "net_failover"], depends)
    assert_deps_first(order, depends)
    assert len(order) == len(set(order))
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert "crc32c_generic" not in order  # no index: soft dependencies unknown


def test_softdeps_through_aliases_and_builtins_skipped():
    idx = index()
    order = kmod.resolve_load_order(["virtio-rng", "virtio", "ext4"], idx.depends, idx)
    assert "virtio" not in order  # built in
    assert order.index("crc32c_generic") < order.index("jbd2") < order.index("ext4")
    assert order[0] == "virtio_rng"
    assert_deps_first(order, idx.depends)


def test_alias_patterns_resolve_wanted_names():
    idx = index()
    assert kmod.resolve_load_order(["of:NvirtioTCvirtio,mmio"], idx.depends, idx) == ["virtio_mmio"]


def test_missing_and_cyclic_modules_are_errors():
    with pytest.raises(kmod.ModuleError, match="no kernel module"):
        kmod.resolve_load_order(["nope"], {"a": []})
    with pytest.raises(kmod.ModuleError, match="needed by"):
        kmod.resolve_load_order(["a"], {"a": ["b"]})
    with pytest.raises(kmod.ModuleError, match="cycle"):
        kmod.resolve_load_order(["a"], {"a": ["b"], "b": ["c"], "c": ["a"]})


def test_modinfo_from_elf(make_ko):
    elf = make_ko(["license=GPL", "softdep=pre: crypto-crc32c post: x", "alias=fs-ext4",
                   "depends=jbd2,mbcache,crc16", "name=ext4"], xz=False)
    info = kmod.module_info("kernel/fs/ext4/ext4.ko", elf)
    assert info.depends == ["jbd2", "mbcache", "crc16"]
    assert info.softdep_pre == ["crypto-crc32c"]
    assert info.aliases == ["fs-ext4"]
    with pytest.raises(kmod.ModuleError):
        kmod.read_modinfo(b"\x7fELF\x01\x01" + b"\0" * 100)  # 32-bit
    with pytest.raises(kmod.ModuleError):
        kmod.read_modinfo(elf[:80])  # section table cut off


def test_scan_and_generated_index_round_trip(tmp_path, make_ko):
    files = {
        "kernel/fs/ext4/ext4.ko.xz": ["softdep=pre: crypto-crc32c", "depends=jbd2,crc16"],
        "kernel/fs/jbd2/jbd2.ko.xz": ["depends="],
        "kernel/lib/crc16.ko.xz": ["depends="],
        "kernel/crypto/crc32c_generic.ko.xz": ["alias=crypto-crc32c", "depends="],
        "kernel/a/top.ko.xz": ["depends=ext4"],
    }
    for rel, pairs in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(make_ko(pairs))
    infos = kmod.scan_modules(tmp_path)
    (tmp_path / "modules.dep").write_text(kmod.format_modules_dep(infos))
    (tmp_path / "modules.softdep").write_text(kmod.format_modules_softdep(infos))
    (tmp_path / "modules.alias").write_text(kmod.format_modules_alias(infos))
    dep_lines = dict(line.split(":", 1) for line in (tmp_path / "modules.dep").read_text().splitlines())
    # Transitive dependencies are listed, as depmod does.
    assert set(dep_lines["kernel/a/top.ko.xz"].split()) == {
        "kernel/fs/ext4/ext4.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz", "kernel/lib/crc16.ko.xz"}
    idx = kmod.load_index(tmp_path)
    order = kmod.resolve_load_order(["top"], idx.depends, idx)
    assert order[-1] == "top" and order[-2] == "ext4"
    assert order.index("crc32c_generic") < order.index("ext4")
    assert set(order) == {"top", "ext4", "jbd2", "crc16", "crc32c_generic"}


def test_corrupt_module_file_is_reported(tmp_path):
    (tmp_path / "bad.ko.xz").write_bytes(b"not xz")
    with pytest.raises(kmod.ModuleError, match="bad.ko.xz"):
        kmod.scan_modules(tmp_path)


def test_index_tolerates_unshipped_dependencies(tmp_path, make_ko):
    (tmp_path / "a.ko.xz").write_bytes(make_ko(["depends=b,ghost"]))
    (tmp_path / "b.ko.xz").write_bytes(make_ko(["depends=a"]))  # a cycle too
    (tmp_path / "c.ko.xz").write_bytes(make_ko(["depends="]))
    text = kmod.format_modules_dep(kmod.scan_modules(tmp_path))
    paths, depends = kmod.parse_modules_dep(text)
    assert depends == {"a": ["b"], "b": ["a"], "c": []}
    assert kmod.resolve_load_order(["c"], depends) == ["c"]
    kmod.check_complete(["c"], kmod.scan_modules(tmp_path))
    infos = kmod.scan_modules(tmp_path)
    infos[1].depends = []  # break the cycle: b loads alone, then a still lacks "ghost"
    with pytest.raises(kmod.ModuleError, match="'ghost'"):
        kmod.check_complete(["b", "a"], infos)
    with pytest.raises(kmod.ModuleError, match="cycle"):
        kmod.resolve_load_order(["a"], depends)

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from pocketvm.images import BootFiles, ImageError, pull
from pocketvm.images.apt import Package, PrivateApt, find_keyrings, kernel_package_name
from pocketvm.images.cli import image as image_cli
from pocketvm.images.cpio import read_newc

needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                               reason="needs Debian's apt-get and dpkg-deb")
RELEASE = "6.1.0-9-riscv64"


def riscv_image(size: int = 8192) -> bytes:
    head = b"MZ\x6f\x10" + struct.pack("<IQQQIIQ", 0, 0x200000, size, 0, 2, 0, 0) + b"RISCV\0\0\0RSC\x05" + b"\0" * 4
    return head + b"\x13\x00\x00\x00" * ((size - len(head)) // 4)


def pkg(name: str, version: str = "1.0-1", depends: str = "") -> Package:
    return Package(name, version, "riscv64", "", 0, depends)


# ----- package metadata -------------------------------------------------

def test_kernel_package_from_meta_package():
    meta = pkg("linux-image-riscv64", "6.12.1-1", "linux-image-6.12.1+deb13-riscv64 (= 6.12.1-1)")
    assert kernel_package_name(meta) == ("linux-image-6.12.1+deb13-riscv64", "6.12.1-1")
    alt = pkg("linux-image-riscv64", depends="linux-image-6.1.0-9-riscv64-unsigned | linux-image-6.1.0-9-riscv64")
    assert kernel_package_name(alt) == ("linux-image-6.1.0-9-riscv64-unsigned", None)
    with pytest.raises(ImageError):
        kernel_package_name(pkg("linux-image-riscv64", depends="kmod, initramfs-tools"))


def test_deb_filename_escapes_epoch():
    assert Package("busybox-static", "1:1.37.0-6", "riscv64", "", 0, "").deb_filename == \
        "busybox-static_1%3a1.37.0-6_riscv64.deb"


def test_keyring_discovery(tmp_path):
    with pytest.raises(ImageError, match="debian-archive-keyring"):
        find_keyrings("trixie", environ={}, keyring_dir=tmp_path)
    (tmp_path / "debian-archive-keyring.gpg").write_bytes(b"k")
    (tmp_path / "debian-archive-trixie-stable.gpg").write_bytes(b"k")
    (tmp_path / "debian-archive-bookworm-stable.gpg").write_bytes(b"k")
    assert [p.name for p in find_keyrings("trixie", environ={}, keyring_dir=tmp_path)] == [
        "debian-archive-keyring.gpg", "debian-archive-trixie-stable.gpg"]
    with pytest.raises(ImageError):
        find_keyrings("trixie", environ={"POCKETVM_KEYRING": str(tmp_path / "missing.gpg")})


# ----- apt failures become one-line ImageErrors -------------------------

@needs_apt
def test_unreachable_mirror_is_a_fetch_error(tmp_path):
    apt = PrivateApt(tmp_path / "apt", (tmp_path / "nothing").as_uri(), "trixie", "riscv64",
                     find_keyrings("trixie"))
    apt.prepare()
    with pytest.raises(ImageError, match="cannot fetch") as info:
        apt.update()
    assert "\n" not in str(info.value)


@needs_apt
def test_unsigned_archive_is_a_signature_error(tmp_path):
    repo = tmp_path / "repo"
    (repo / "dists/trixie/main/binary-riscv64").mkdir(parents=True)
    packages = b""
    (repo / "dists/trixie/main/binary-riscv64/Packages").write_bytes(packages)
    digest = hashlib.sha256(packages).hexdigest()
    (repo / "dists/trixie/Release").write_text(
        "Suite: trixie\nCodename: trixie\nArchitectures: riscv64\nComponents: main\n"
        f"SHA256:\n {digest} 0 main/binary-riscv64/Packages\n")
    apt = PrivateApt(tmp_path / "apt", repo.as_uri(), "trixie", "riscv64", find_keyrings("trixie"))
    apt.prepare()
    with pytest.raises(ImageError, match="verify the signature"):
        apt.update()


@needs_apt
def test_cli_reports_failure_without_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(image_cli, ["pull", "--quiet", "--mirror", (tmp_path / "none").as_uri()])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot fetch")
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(image_cli, ["pull", "--quiet", "--mirror", "not a url"])
    assert bad.exit_code == 1 and "mirror" in bad.output


# ----- assembling and verifying an image (offline, synthetic packages) --

@pytest.fixture
def trees(tmp_path, make_ko, fake_busybox):
    k = tmp_path / "kernel"
    (k / "boot").mkdir(parents=True)
    (k / "boot" / f"vmlinux-{RELEASE}").write_bytes(riscv_image())
    (k / "boot" / f"config-{RELEASE}").write_text(
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_DEVTMPFS=y\nCONFIG_TMPFS=y\nCONFIG_VIRTIO_MMIO=m\n")
    moddir = k / "usr/lib/modules" / RELEASE
    mods = {
        "kernel/drivers/virtio/virtio_mmio.ko.xz": ["depends="],
        "kernel/drivers/block/virtio_blk.ko.xz": ["depends="],
        "kernel/drivers/char/hw_random/virtio-rng.ko.xz": ["depends="],
        "kernel/drivers/net/virtio_net.ko.xz": ["depends=net_failover"],
        "kernel/drivers/net/net_failover.ko.xz": ["depends="],
        "kernel/fs/ext4/ext4.ko.xz": ["softdep=pre: crypto-crc32c", "depends=jbd2"],
        "kernel/fs/jbd2/jbd2.ko.xz": ["depends="],
        "kernel/crypto/crc32c_generic.ko.xz": ["alias=crypto-crc32c", "depends="],
        "kernel/sound/unrelated.ko.xz": ["depends="],
        "kernel/drivers/gpu/drm/virtio/virtio-gpu.ko.xz": ["depends=drm"],
        "kernel/drivers/gpu/drm/drm.ko.xz": ["depends="],
        "kernel/drivers/virtio/virtio_input.ko.xz": ["depends="],
        "kernel/drivers/input/evdev.ko.xz": ["depends="],
        "kernel/net/vmw_vsock/vsock.ko.xz": ["depends="],
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz": ["depends=vsock"],
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz": ["depends=vmw_vsock_virtio_transport_common,vsock"],
    }
    for rel, pairs in mods.items():
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(make_ko(pairs + [f"name={rel}"]))
    (moddir / "modules.builtin").write_text("kernel/drivers/char/virtio_console.ko\n")
    b = tmp_path / "busybox" / "usr/bin"
    b.mkdir(parents=True)
    (b / "busybox").write_bytes(fake_busybox(["[", "[[", "sh", "mount", "insmod", "poweroff", "reboot",
                                              "setsid", "hostname", "ls"]))
    o = tmp_path / "opensbi" / "usr/lib/riscv64-linux-gnu/opensbi/generic"
    o.mkdir(parents=True)
    (o / "fw_dynamic.bin").write_bytes(b"\x97\x02\x00\x00opensbi")
    return {"kernel": k, "busybox": tmp_path / "busybox", "opensbi": tmp_path / "opensbi"}


def packages():
    return {"kernel": pkg(f"linux-image-{RELEASE}"), "busybox": pkg("busybox-static"), "opensbi": pkg("opensbi")}


def assemble(trees, out: Path) -> dict:
    out.mkdir()
    manifest = pull._assemble(trees, packages(), pkg("linux-image-riscv64"), out, pull._Steps(quiet=True))
    (out / pull.MANIFEST_FILE).write_text(json.dumps(manifest))
    return manifest


def test_assemble_offline_from_package_trees(trees, tmp_path):
    out = tmp_path / "out"
    manifest = assemble(trees, out)
    assert (out / "Image").read_bytes() == riscv_image()
    assert (out / "fw_dynamic.bin").read_bytes() == b"\x97\x02\x00\x00opensbi"
    order = manifest["modules"]
    assert set(order) == {"virtio_mmio", "virtio_blk", "virtio_rng", "net_failover", "virtio_net",
                          "crc32c_generic", "jbd2", "ext4", "drm", "virtio_gpu", "virtio_input", "evdev",
                          "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}
    assert order.index("drm") < order.index("virtio_gpu")
    assert order.index("vsock") < order.index("vmw_vsock_virtio_transport_common") < order.index("vmw_vsock_virtio_transport")
    assert order.index("net_failover") < order.index("virtio_net")
    assert order.index("crc32c_generic") < order.index("ext4") and order.index("jbd2") < order.index("ext4")
    assert manifest["builtin_modules"] == ["virtio_console"]
    files = {e.name: e for e in read_newc((out / "initrd.img").read_bytes())}
    ext4 = files[f"lib/modules/{RELEASE}/kernel/fs/ext4/ext4.ko"].data
    assert ext4.startswith(b"\x7fELF")  # stored decompressed, insmod-ready
    assert f"lib/modules/{RELEASE}/kernel/sound/unrelated.ko" not in files
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()

    loaded = pull.load_image(out)
    assert loaded == BootFiles(out / "Image", out / "initrd.img", out / "fw_dynamic.bin", RELEASE)


def test_load_image_rejects_damaged_or_outdated_images(trees, tmp_path):
    out = tmp_path / "out"
    assert pull.load_image(out) is None
    assemble(trees, out)
    assert pull.load_image(out) is not None
    initrd = out / "initrd.img"
    good = initrd.read_bytes()
    initrd.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert pull.load_image(out) is None
    initrd.write_bytes(good)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(manifest, recipe=pull.RECIPE - 1)))
    assert pull.load_image(out) is None
    (out / "manifest.json").write_text("{not json")
    assert pull.load_image(out) is None


def test_assemble_reports_missing_pieces(trees, tmp_path):
    (trees["kernel"] / "boot" / f"config-{RELEASE}").write_text("CONFIG_BLK_DEV_INITRD=y\n")
    with pytest.raises(ImageError, match="CONFIG_DEVTMPFS"):
        assemble(trees, tmp_path / "a")
    shutil.rmtree(trees["opensbi"] / "usr")
    (trees["kernel"] / "boot" / f"config-{RELEASE}").write_text(
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_DEVTMPFS=y\nCONFIG_TMPFS=y\n")
    with pytest.raises(ImageError, match="fw_dynamic.bin"):
        assemble(trees, tmp_path / "b")
    (trees["kernel"] / "usr/lib/modules" / RELEASE / "kernel/fs/jbd2/jbd2.ko.xz").unlink()
    with pytest.raises(ImageError, match="jbd2"):
        assemble(trees, tmp_path / "c")


# ----- the real thing ----------------------------------------------------

@pytest.mark.network
@needs_apt
@pytest.mark.skipif(bool(os.environ.get("POCKETVM_SKIP_NETWORK")), reason="POCKETVM_SKIP_NETWORK is set")
def test_real_pull_of_debian_trixie():
    # Uses the user's real cache on purpose: the first run downloads (~115 MB),
    # later runs (and `pocket run`) reuse it.
    files = pull.pull_default_image(quiet=True)
    assert files == pull.load_default_image()
    image = files.kernel.read_bytes()
    assert image[0x30:0x38] == b"RISCV\0\0\0" and image[0x38:0x3C] == b"RSC\x05"
    assert files.bios.name == "fw_dynamic.bin" and files.bios.stat().st_size > 64 * 1024
    initrd = {e.name: e for e in read_newc(files.initrd.read_bytes())}
    assert initrd["init"].data.startswith(b"#!/bin/sh")
    assert initrd["bin/busybox"].data.startswith(b"\x7fELF")
    moddir = f"lib/modules/{files.version}/"
    shipped = {n.rsplit("/", 1)[-1] for n in initrd if n.startswith(moddir) and n.endswith(".ko")}
    assert {"virtio_mmio.ko", "virtio_blk.ko", "virtio-rng.ko", "virtio_net.ko", "ext4.ko", "jbd2.ko"} <= shipped
    manifest = json.loads((files.kernel.parent / "manifest.json").read_text())
    assert "linux-image-riscv64" in manifest["packages"]
    assert {"busybox-static", "opensbi"} <= set(manifest["packages"])

    # A second pull finds everything in place and touches nothing.
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (files.kernel, files.initrd, files.bios)}
    assert pull.pull_default_image(quiet=True) == files
    assert before == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before}

import stat

from pocketvm.images import InitramfsModule, build_initramfs
from pocketvm.images.busybox import busybox_applets
from pocketvm.images.cpio import read_newc

RELEASE = "6.1.0-test-riscv64"
APPLETS = ["[", "[[", "ash", "cat", "cttyhack", "halt", "hostname", "init", "insmod", "ls", "mount",
           "poweroff", "reboot", "setsid", "sh", "sleep", "sync"]


def test_applet_table_is_found(fake_busybox):
    assert busybox_applets(fake_busybox(APPLETS)) == sorted(APPLETS)
    assert busybox_applets(b"no table here") is None
    # A sorted table that lacks what /init needs is not taken for the applet table.
    assert busybox_applets(fake_busybox(["[", "[[", "cat", "ls"])) is None


def build(applets=APPLETS):
    mods = [InitramfsModule("virtio_mmio", "kernel/drivers/virtio/virtio_mmio.ko", b"\x7fELFmmio"),
            InitramfsModule("jbd2", "kernel/fs/jbd2/jbd2.ko", b"\x7fELFjbd2", "disk"),
            InitramfsModule("ext4", "kernel/fs/ext4/ext4.ko", b"\x7fELFext4", "disk"),
            InitramfsModule("virtio_net", "kernel/drivers/net/virtio_net.ko", b"\x7fELFnet", "net")]
    return build_initramfs(b"\x7fELFbusybox", RELEASE, mods, applets)


def entries(blob: bytes):
    return {e.name: e for e in read_newc(blob)}


def test_layout_init_busybox_and_modules():
    files = entries(build())
    init = files["init"]
    assert init.is_file and stat.S_IMODE(init.mode) == 0o755
    assert files["bin/busybox"].data == b"\x7fELFbusybox"
    assert files["bin/sh"].is_symlink and files["bin/ls"].data == b"busybox"
    assert "bin/init" not in files  # PID 1 is /init
    assert files["sbin"].is_symlink and files["sbin"].data == b"bin"
    console = files["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdevmajor, console.rdevminor) == (5, 1)
    moddir = f"lib/modules/{RELEASE}"
    assert files[f"{moddir}/kernel/fs/ext4/ext4.ko"].data == b"\x7fELFext4"
    assert files[f"{moddir}/modules.order"].data.decode().split() == [
        "kernel/drivers/virtio/virtio_mmio.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko",
        "kernel/drivers/net/virtio_net.ko"]


def test_init_script_loads_modules_in_order_and_handles_power():
    script = entries(build())["init"].data.decode()
    assert script.startswith("#!/bin/sh\n")
    for fs in ("proc", "sysfs", "devtmpfs", "tmpfs"):
        assert f"mount -t {fs}" in script
    loads = [line for line in script.splitlines() if line.startswith(("load ", "has_virtio 0x"))]
    # The base modules always; the disk and network stacks, in dependency
    # order, only when the kernel found such a virtio device.
    assert loads == [
        "load kernel/drivers/virtio/virtio_mmio.ko",
        "has_virtio 0x0002 && load kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko",
        "has_virtio 0x0001 && load kernel/drivers/net/virtio_net.ko",
    ]
    assert "hostname pocket" in script
    assert "PS1='pocket:\\w# '" in script
    assert "setsid cttyhack /bin/sh" in script
    # The applets signal PID 1; /init traps those signals and powers off itself.
    assert "trap 'power poweroff' USR2" in script and "trap 'power reboot' TERM" in script
    assert script.rstrip().endswith("done")  # never falls off the end
    assert "--install" not in script


def test_power_wrappers_force_the_kernel_call():
    files = entries(build())
    for name in ("poweroff", "reboot", "halt"):
        wrapper = files[f"bin/{name}"]
        assert wrapper.is_file
        text = wrapper.data.decode()
        assert "sync" in text and f"busybox {name} -f" in text


def test_without_applet_list_busybox_installs_links_at_boot():
    files = entries(build(applets=None))
    assert "bin/ls" not in files
    assert "/bin/busybox --install -s /bin" in files["init"].data.decode()


def test_build_is_deterministic():
    assert build() == build()

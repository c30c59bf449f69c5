"""The pocketvm initramfs: BusyBox, a shell-script /init, kernel modules.

Layout of the archive:

    /init                        shell script, PID 1 (must never exit)
    /bin/busybox, /bin/<applet>  applets as symlinks to busybox
    /sbin, /usr/bin, /usr/sbin   symlinks to /bin, so every usual path works
    /bin/poweroff|reboot|halt    wrappers that sync and call the kernel
                                 directly (-f): PID 1 is not BusyBox init.
                                 BusyBox's ash runs its own applets without
                                 a PATH lookup, so /init also traps the
                                 signals those applets send to PID 1
    /lib/modules/<release>/...   uncompressed modules, insmod'ed in order
    /dev/console                 the kernel opens it for init's stdio
                                 before /init can mount devtmpfs
    /etc/{passwd,group,profile,hostname}, /etc/mtab -> /proc/mounts

The archive is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .cpio import CpioWriter

HOSTNAME = "pocket"
PROMPT = r"pocket:\w# "
POWER_WRAPPERS = {"poweroff": "poweroff -f", "reboot": "reboot -f", "halt": "halt -f"}
# Applets not linked: `init`/`linuxrc` would mislead (PID 1 is /init).
_SKIPPED_APPLETS = frozenset({"busybox", "init", "linuxrc"}) | frozenset(POWER_WRAPPERS)


@dataclass(frozen=True)
class InitramfsModule:
    """A kernel module to ship and load: path relative to /lib/modules/<release>."""

    name: str
    path: str   # e.g. "kernel/fs/ext4/ext4.ko" (uncompressed)
    data: bytes
    # When /init loads it: "base" always; "disk" only when a virtio disk is
    # attached (the ext4 stack is most of the module bytes, and the kernel
    # hashes every byte to check its signature); "net" only with a NIC;
    # "display" only with a virtio-gpu; "vsock" only with a virtio-vsock.
    group: str = "base"


def init_script(kernel_release: str, module_paths: Sequence[str], banner: str,
                install_applets: bool = False, groups: Sequence[str] | None = None) -> str:
    moddir = f"/lib/modules/{kernel_release}"
    groups = list(groups) if groups is not None else ["base"] * len(module_paths)

    def mods(group: str) -> str:
        return " ".join(shlex.quote(p) for p, g in zip(module_paths, groups) if g == group)
    install = "/bin/busybox --install -s /bin\n" if install_applets else ""
    # Display drivers (virtio-gpu is device id 16).
    display_load = f'has_virtio 0x0010 && load {mods("display")}\n' if mods("display") else ""
    vsock_load = f'has_virtio 0x0013 && load {mods("vsock")}\n' if mods("vsock") else ""  # virtio-vsock: id 19
    return f"""#!/bin/sh
# pocketvm initramfs /init. This script is PID 1: it must never exit, or
# the kernel panics. When the shell ends, the machine powers off.
export PATH=/bin HOME=/root
{install}mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
hostname {HOSTNAME}

failed=
load() {{
    for m in "$@"; do
        insmod {moddir}/$m >/dev/null 2>&1 || failed="$failed ${{m##*/}}"
    done
}}
has_virtio() {{ grep -qx "$1" /sys/bus/virtio/devices/*/device 2>/dev/null; }}
load {mods("base")}
# Disk and network stacks only when such a device is there (virtio ids 2, 1).
has_virtio 0x0002 && load {mods("disk")}
has_virtio 0x0001 && load {mods("net")}
{display_load}{vsock_load}[ -n "$failed" ] && echo "pocketvm: could not load modules:$failed"

# root=DEV on the kernel command line: mount that disk and hand over to its
# init (init=PATH, default /sbin/init), which then owns networking too.
root= rinit=/sbin/init rflags=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${{arg#root=}}" ;;
        init=*) rinit="${{arg#init=}}" ;;
        ro) rflags=ro ;;
    esac
done
if [ -n "$root" ]; then
    mkdir -p /newroot
    if mount -t ext4 -o "$rflags" "$root" /newroot && [ -x "/newroot$rinit" ] || [ -L "/newroot$rinit" ]; then
        umount /tmp
        for fs in /dev /proc /sys; do mount --move $fs /newroot$fs; done
        exec switch_root /newroot "$rinit"
    fi
    echo "pocketvm: cannot start $rinit on root $root; here is the initramfs shell"
fi
ip link set lo up
# Every network interface asks for an address (pocketvm's user network
# answers at once; a network without DHCP costs two seconds).
for dev in /sys/class/net/eth*; do
    [ -e "$dev" ] || continue
    udhcpc -i "${{dev##*/}}" -q -n -t 2 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1 ||
        echo "pocketvm: no DHCP answer on ${{dev##*/}}"
done

# BusyBox's poweroff/reboot/halt applets (which its ash runs directly,
# whatever PATH says) ask PID 1 by signal: USR2, TERM, USR1. Honour them.
power() {{ sync; /bin/busybox "$1" -f; }}
trap 'power poweroff' USR2
trap 'power reboot' TERM
trap 'power halt' USR1

echo {shlex.quote(banner)}
export PS1={shlex.quote(PROMPT)}
cd /root
# setsid + cttyhack give the shell a controlling terminal (the real console
# device), so job control and Ctrl-C work. It runs in the background so that
# this script's `wait` can be interrupted by the signals above.
setsid cttyhack /bin/sh -l </dev/console >/dev/console 2>&1 &
shell=$!
# With a display, the framebuffer console (tty1) gets a shell of its own. Not
# through cttyhack, which would pick the serial console again: the shell
# opens tty1 itself as a session leader, which makes it its controlling tty.
# Its cursor does not blink: each blink redraws the whole screen through the
# GPU (five times a second), which an idle VM should not pay for.
if has_virtio 0x0010; then
    echo 0 > /sys/class/graphics/fbcon/cursor_blink 2>/dev/null
    ( while :; do setsid /bin/sh -c 'exec /bin/sh -l </dev/tty1 >/dev/tty1 2>&1'; sleep 1; done ) &
fi
while kill -0 $shell 2>/dev/null; do wait $shell; done
power poweroff
while :; do /bin/busybox sleep 3600; done
"""


# What BusyBox's udhcpc runs on a lease: configure the interface, the
# default route and the resolver from the variables it sets.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip link set "$interface" up
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
esac
"""


def _profile() -> str:
    return f"export PATH=/bin HOME=/root\nexport PS1={shlex.quote(PROMPT)}\n"


def build_initramfs(
    busybox: bytes,
    kernel_release: str,
    modules: Sequence[InitramfsModule] = (),
    applets: Iterable[str] | None = None,
    banner: str | None = None,
    mtime: int = 0,
) -> bytes:
    """An uncompressed newc initramfs; `modules` must be in load order.

    Not compressed: the guest would spend ~0.4 s of a 7 s boot inflating
    it (at emulated speed), against copying 11 MiB instead of 2.4 MiB into
    guest RAM on the host.

    With `applets=None` the symlinks are made at boot by `busybox --install`.
    """
    w = CpioWriter(mtime=mtime)
    for d in ("bin", "dev", "etc", "lib", "proc", "sys", "tmp", "run", "mnt", "var", "root", "usr"):
        w.add_dir(d, 0o700 if d == "root" else 0o1777 if d == "tmp" else 0o755)
    w.add_char_device("dev/console", 5, 1, 0o600)
    w.add_char_device("dev/null", 1, 3, 0o666)
    w.add_symlink("sbin", "bin")
    w.add_symlink("usr/bin", "../bin")
    w.add_symlink("usr/sbin", "../bin")
    w.add_file("bin/busybox", busybox, 0o755)
    w.add_symlink("bin/sh", "busybox")
    for name in applets or ():
        if name not in _SKIPPED_APPLETS and f"bin/{name}" not in w and "/" not in name:
            w.add_symlink(f"bin/{name}", "busybox")
    for name, command in POWER_WRAPPERS.items():
        w.add_file(f"bin/{name}", f"#!/bin/sh\nsync\nexec /bin/busybox {command}\n".encode(), 0o755)

    w.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.add_file("etc/group", b"root:x:0:\n")
    w.add_file("etc/hostname", f"{HOSTNAME}\n".encode())
    w.add_file("etc/profile", _profile().encode())
    w.add_symlink("etc/mtab", "/proc/mounts")
    w.add_file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)

    moddir = f"lib/modules/{kernel_release}"
    w.add_dir(moddir)
    for m in modules:
        w.add_file(f"{moddir}/{m.path}", m.data)
    w.add_file(f"{moddir}/modules.order", "".join(f"{m.path}\n" for m in modules).encode())

    if banner is None:
        banner = f"pocketvm: Debian riscv64 initramfs, Linux {kernel_release}. 'poweroff' to stop."
    script = init_script(kernel_release, [m.path for m in modules], banner, install_applets=applets is None,
                         groups=[m.group for m in modules])
    w.add_file("init", script.encode(), 0o755)
    return w.finish()

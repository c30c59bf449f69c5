#!/usr/bin/env bash
# Sets up pocketvm on a fresh Debian machine, then boots the default VM.
#
#   ./setup.sh             install everything, build the Debian guest, boot it
#   ./setup.sh --no-boot   the same without booting (what CI does)
#   ./setup.sh --desktop   also build the desktop image (debian-desktop, 8-15
#                          more minutes) and boot that one with its screen
#                          on a web page
#
# The first run builds the Debian system image (pocket image build debian,
# 15-30 minutes, cached in ~/.cache/pocketvm); later runs reuse it.
#
# It installs Debian packages (as root, or through sudo): the Python venv
# module, and the tools the test suite compares against (QEMU and qemu-img, the riscv64
# cross compiler, e2fsprogs, dtc). pocketvm itself goes into ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

boot=1
desktop=0
for arg in "$@"; do
    case "$arg" in
        --no-boot) boot=0 ;;
        --desktop) desktop=1 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

debs=(python3-venv qemu-system-misc qemu-user qemu-utils gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
      e2fsprogs device-tree-compiler cpio xz-utils debootstrap
      binutils  # ld links the prebuilt CPU core (pocketvm/cpu/native.py)
      kmod  # depmod indexes the guest's kernel modules on the host (pocketvm/images/rootfs.py)
      libseccomp2  # the seccomp filter of sandbox VM processes (pocketvm/manager/harden.py)
      novnc chromium)  # the web display's client; the browser its end-to-end test drives
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# pocketvm's bytecode, compiled once: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set Python never writes it, so every `pocket`
# command compiled the sources again (~80 ms of CPU at each start). A stale
# file is harmless: Python checks the source's time stamp.
.venv/bin/python -m compileall -q pocketvm
# The CPU core compiled ahead of time into a shared library (pocketvm/cpu/native.py,
# ~30 s once, cached under ~/.cache/pocketvm/core): a VM then starts without
# importing numba or loading its cache, ~0.4 s less at every start.
.venv/bin/python -m pocketvm.cpu.native || echo "setup.sh: no prebuilt CPU core; pocket uses numba's (slower to start)" >&2

# The boot files (Debian trixie riscv64 kernel, BusyBox initramfs, OpenSBI),
# then the Debian system on a qcow2 disk with its template.
.venv/bin/pocket image pull
.venv/bin/pocket image build debian
if [ "$desktop" -eq 1 ]; then
    .venv/bin/pocket image build debian --desktop
fi

if [ "$boot" -eq 1 ] && [ "$desktop" -eq 1 ]; then
    echo "setup.sh: starting the desktop VM; open the printed URL (Ctrl-A x quits)"
    exec .venv/bin/pocket run --image debian-desktop --display web --nic user
fi
if [ "$boot" -eq 1 ]; then
    echo "setup.sh: starting the Debian VM (Ctrl-A x quits, 'poweroff' in the guest stops it)"
    exec .venv/bin/pocket run --image debian --nic user
fi

"""The real Debian system of `pocket image build debian`, used as a person would.

Results are printed with shell arithmetic between '=' signs (`=$((6*7))=`)
so that the echo of a typed command line never satisfies a wait by itself.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from snaptools import Pocket

pytestmark = pytest.mark.slow

START = 120  # seconds until a restored template answers (busy machine)
REBOOT = 900  # a full systemd boot at emulated speed


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_apt_python_and_a_file_that_survives_reboot(debian_image):
    with Pocket("run", "--image", "debian", "--nic", "user", "--name", "deb-work") as vm:
        out = vm.command("echo OS-$(. /etc/os-release; echo $VERSION_CODENAME)-$(uname -m)=$((6*7))=", "=42=", START)
        assert "OS-trixie-riscv64=42=" in out
        out = vm.command("python3 -c 'print(\"PY\", sum(i * i for i in range(10**5)))'; echo P=$((1+1))=", "P=2=", 300)
        assert "PY 333328333350000" in out
        # A package from the mirror, through the user-mode NAT. (Without the
        # package descriptions, Translation-en: 6.5 MB more to unpack and parse
        # in the guest, ~50 s of this test; the download itself is ~3 s.)
        out = vm.command("apt-get -q -o Acquire::Languages=none update >/dev/null 2>&1 && "
                         "apt-get install -y -q hello >/dev/null 2>&1; "
                         "echo APT-$?=$((2+3))=", "=5=", 900)
        assert "APT-0=5=" in out, vm.out[-3000:]
        out = vm.command("hello; echo H=$((3+3))=", "H=6=", 60)
        assert "Hello, world!" in out
        vm.command("echo kept-across-reboot > /root/keep.txt; sync; echo W=$((4+4))=", "W=8=")
        mark = vm.mark()
        vm.send("reboot\n")
        # The shell may print its prompt once more before the system goes
        # down: wait for the firmware of the next boot, then the prompt.
        vm.wait_for("OpenSBI", REBOOT, after=mark)
        vm.wait_for("root@pocket", REBOOT, after=vm.mark())
        out = vm.command("echo K-$(cat /root/keep.txt)-$(command -v hello)=$((5+5))=", "=10=", 120)
        assert "K-kept-across-reboot-/usr/bin/hello=10=" in out
        vm.send("poweroff\n")
        assert vm.wait(300) == 0, vm.err
    assert "kept in" in vm.err  # the guest wrote to its overlay; it is kept, the base never changes
    assert _sha256(debian_image.base) == debian_image.manifest["base_sha256"]


def _identity(vm: Pocket, n: int) -> dict[str, str]:
    # The new identity is applied by a service udev starts after the restore.
    line = ("for i in $(seq 100); do [ \"$(cat /proc/sys/kernel/hostname)\" != pocket ] && break; sleep 0.1; done; "
            "echo ID-$(cat /proc/sys/kernel/hostname)-$(cat /etc/machine-id)-"
            "$(cat /sys/class/net/eth0/address)-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')"
            f"=$(({n}*11))=")
    out = vm.command(line, f"={n * 11}=", START)
    m = re.search(rf"ID-(\S+)-([0-9a-f]{{32}})-([0-9a-f:]{{17}})-([0-9a-f]{{32}})={n * 11}=", out)
    assert m, out
    return dict(zip(("hostname", "machine_id", "mac", "random"), m.groups()))


def test_two_vms_from_the_template_are_different_machines(debian_image, tmp_path):
    with Pocket("run", "--image", "debian", "--nic", "user", "--name", "twin-a") as a, \
            Pocket("run", "--image", "debian", "--nic", "user", "--name", "twin-b") as b:
        ida, idb = _identity(a, 1), _identity(b, 2)
        for key in ida:
            assert ida[key] != idb[key], key
        assert ida["hostname"].startswith("pocket-")
        a.command("echo from-a > /root/marker; sync; echo A=$((7+7))=", "A=14=")
        out = b.command("echo B-$(cat /root/marker 2>/dev/null || echo none)=$((8+8))=", "=16=")
        assert "B-none=16=" in out
        for vm in (a, b):
            vm.send("poweroff\n")
        for vm in (a, b):
            assert vm.wait(300) == 0, vm.err

"""Boot the real Debian riscv64 kernel and work in its shell through the console.

Each test is one boot of the unmodified Debian kernel with pocketvm's
initramfs, driven exactly as a user would: commands piped into `pocket run`.
Results are printed with shell arithmetic (`$((40+2))`) so the echo of the
command line can never satisfy an assertion by itself.
"""

from __future__ import annotations

import hashlib

import pytest
from e2etools import BOOT_TIMEOUT, debugfs_cat, make_ext4, pocket

pytestmark = pytest.mark.slow


def test_default_boot_shell_and_panic_exit(guest_image):
    script = "\n".join(
        [
            "uname -m",
            "echo HARTS-$(($(grep -c ^processor /proc/cpuinfo)+0))",
            "echo ANSWER-$((40+2))",
            # A guest kernel panic must end `pocket run` with a non-zero status.
            "echo c > /proc/sysrq-trigger",
        ]
    )
    run = pocket("run", stdin=script + "\n", timeout=BOOT_TIMEOUT)
    assert "ANSWER-42" in run.stdout, run.stdout[-3000:]
    assert "riscv64" in run.stdout.split("uname -m", 1)[1]
    assert "HARTS-1" in run.stdout
    assert "Kernel panic" in run.stdout
    assert run.returncode != 0
    assert "panicked" in run.stderr
    assert "Traceback" not in run.stderr


def test_two_harts_and_disks_read_write_and_read_only(tmp_path, guest_image):
    rw = make_ext4(tmp_path / "rw.img", 16, "rwdisk")
    ro = make_ext4(tmp_path / "ro.img", 24, "rodisk", {"existing.txt": "kept-on-ro-disk\n"})
    ro_digest = hashlib.sha256(ro.read_bytes()).hexdigest()
    script = "\n".join(
        [
            # This boot runs the kernel's crypto self-tests (not skipped, as by
            # default): thousands of known-answer tests of the emulated CPU on two harts.
            "echo SELFTEST-FAILURES-$(dmesg | grep -c 'self-tests.*failed')-END",
            "echo ONLINE-$(cat /sys/devices/system/cpu/online)-END",
            "echo HARTS-$(($(grep -c ^processor /proc/cpuinfo)+0))",
            # Which vdX is which: the read-only one reports ro=1.
            "for d in /sys/block/vd*; do [ $(cat $d/ro) = 0 ] && RW=${d##*/}; [ $(cat $d/ro) = 1 ] && RO=${d##*/}; done",
            "echo DEVS-$RW-$RO-END",
            "mkdir -p /mnt/rw /mnt/ro",
            "mount -t ext4 /dev/$RW /mnt/rw && echo hello-from-the-guest > /mnt/rw/hello.txt && sync && umount /mnt/rw"
            " && echo RW-$((1+1))-DONE",
            "mount -t ext4 -o ro /dev/$RO /mnt/ro && cat /mnt/ro/existing.txt",
            "echo new > /mnt/ro/new.txt || echo ROFS-$((2+2))-REFUSED",
            "dd if=/dev/zero of=/dev/$RO bs=512 count=1 conv=fsync || echo RAW-$((3+3))-REFUSED",
            "umount /mnt/ro",
            "poweroff",
        ]
    )
    run = pocket(
        "run", "--cpus", "2", "--append", "console=ttyS0", "--disk", str(rw), "--disk", f"{ro},ro",
        stdin=script + "\n", timeout=BOOT_TIMEOUT,
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 0, (run.stderr, out[-3000:])
    assert "SELFTEST-FAILURES-0-END" in out
    assert "cryptomgr.notests" not in out.split("Kernel command line:", 1)[1].split("\n", 1)[0]
    assert "ONLINE-0-1-END" in out
    assert "HARTS-2" in out
    assert "DEVS-vd" in out and "--END" not in out.split("DEVS-", 1)[1][:12]
    assert "RW-2-DONE" in out
    assert "kept-on-ro-disk" in out
    assert "ROFS-4-REFUSED" in out
    assert "RAW-6-REFUSED" in out
    # After poweroff the host reads back what the guest wrote...
    assert debugfs_cat(rw, "hello.txt") == "hello-from-the-guest\n"
    # ...and the read-only image did not change by a single byte.
    assert hashlib.sha256(ro.read_bytes()).hexdigest() == ro_digest


def test_guest_reboot_boots_again(guest_image):
    """`reboot` in the guest resets the machine through the test device and boots anew."""
    import os
    import select
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketvm", "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = b""
    banners = 0
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            # The kernel's first line appears once per boot.
            seen = out.count(b"Linux version ")
            if seen > banners and b"pocket:~# " in out.rsplit(b"Linux version ", 1)[1]:
                banners = seen
                proc.stdin.write(b"reboot\n" if seen == 1 else b"echo AGAIN-$((2+3))\npoweroff\n")
                proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace")
    assert text.count("Linux version ") == 2, text[-2000:]
    assert "AGAIN-5" in text
    assert proc.returncode == 0

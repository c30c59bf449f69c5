"""A Linux user program whose misaligned accesses cross into pages not yet faulted in.

glibc's memcpy uses misaligned 8-byte stores when the kernel reports fast
misaligned accesses; when such a store crosses into a page Linux has not
mapped yet, stval must name that page, or the kernel maps nothing and the
store faults again forever (issue 8: debootstrap hung in its first dpkg-deb).
The program (programs/misaligned_page_cross.c) is cross-compiled statically,
put on an ext4 disk and run from the BusyBox shell of the real Debian kernel,
under `timeout` so that the bug shows as a failure, not as a hung test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from e2etools import BOOT_TIMEOUT, make_ext4, pocket

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).with_name("programs") / "misaligned_page_cross.c"
CC = "riscv64-linux-gnu-gcc"


def build_static(source: Path, out: Path) -> Path:
    if shutil.which(CC) is None:
        pytest.fail(f"{CC} not found: install gcc-riscv64-linux-gnu (Debian package)")
    subprocess.run([CC, "-static", "-O2", "-Wall", "-Werror", str(source), "-o", str(out)], check=True)
    return out


def put_file(image: Path, host_file: Path, name: str) -> None:
    """Copy a host file into the image's root directory (mode bits included)."""
    subprocess.run(["debugfs", "-w", "-R", f"write {host_file} {name}", str(image)], check=True, capture_output=True)


def test_misaligned_store_and_load_into_unfaulted_pages(tmp_path, guest_image):
    program = build_static(SOURCE, tmp_path / "misaligned")
    disk = make_ext4(tmp_path / "prog.img", 8, "progs")
    put_file(disk, program, "misaligned")
    script = "\n".join(
        [
            "mkdir -p /mnt/p && mount -t ext4 -o ro /dev/vda /mnt/p",
            "timeout 30 /mnt/p/misaligned; echo EXIT-$((100+$?))-END",
            "poweroff",
        ]
    )
    run = pocket("run", "--disk", f"{disk},ro", stdin=script + "\n", timeout=BOOT_TIMEOUT)
    out = run.stdout
    assert "MISALIGNED-OK" in out, out[-3000:]
    assert "EXIT-100-END" in out, out[-3000:]
    assert run.returncode == 0, run.stderr[-2000:]

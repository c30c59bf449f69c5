"""An image's template: a snapshot of its system booted and idle.

The base image is booted once, from a throw-away qcow2 overlay, with the
template's RAM, harts and one user-mode NIC. When root's shell on the serial
console answers and systemd reports the boot finished, the VM is snapshotted
and stopped. The snapshot holds only the overlay (what the boot wrote) and
refers to the base by path and checksum; every VM later restored from it
gets an overlay of its own on top, and a fresh identity (see the vmgenid
device and pocketvm/guest/debian/pocketvm-newid).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ImageError

if TYPE_CHECKING:
    from .debian import DebianImage

TEMPLATE_MEMORY = "1G"
TEMPLATE_CPUS = 1
BOOT_TIMEOUT = 900.0  # seconds, at emulated speed on a busy 2-core machine
# Typed at the template's shell once it answers: waits for the end of the
# boot and for udev to have handled its events and let its idle workers go
# (after 3 s; a template taken before made every restored VM finish that
# work, doubling the guest's instructions to its first command's output),
# forgets the line, and prints a marker that the echo of the typed line
# does not contain ($((...)) is expanded only in the output).
READY_COMMAND = (b"systemctl is-system-running --wait >/dev/null 2>&1; udevadm settle --timeout=60 >/dev/null 2>&1; "
                 b"sleep 5; history -c; echo pocketvm-template-$((6*7))\n")
READY_MARK = b"pocketvm-template-42"
# An image whose manifest names a `template_ready_file` (the desktop image)
# is snapshotted only once that file exists in the guest, and a few seconds
# later, so that what it shows has been drawn.
READY_FILE_WAIT = 600  # seconds, in the guest
SETTLE = 10  # seconds, in the guest


def ready_command(image: DebianImage) -> bytes:
    ready = image.manifest.get("template_ready_file")
    if not isinstance(ready, str) or not ready.startswith("/"):
        return READY_COMMAND
    wait = (f"for i in $(seq {READY_FILE_WAIT}); do [ -e {shlex.quote(ready)} ] && break; sleep 1; done; "
            f"sleep {SETTLE}; [ -e {shlex.quote(ready)} ] && ")
    return READY_COMMAND.replace(b"history -c; ", b"history -c; " + wait.encode())


def display_args(image: DebianImage) -> list[str]:
    """--display for the template VM when the image's template has a screen."""
    size = image.manifest.get("template_display")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) for n in size)):
        return []
    return ["--display", "vnc", "--display-size", f"{size[0]}x{size[1]}"]


def boot_args(image: DebianImage, disk: Path, memory: str, cpus: int, nic: bool) -> list[str]:
    from pocketvm.backends.upload_window import DEFAULT_SIZE

    from .debian import BOOT_APPEND

    args = ["--kernel", str(image.boot.kernel), "--initrd", str(image.boot.initrd), "--bios", str(image.boot.bios),
            "--memory", memory, "--cpus", str(cpus), "--disk", str(disk), "--append", BOOT_APPEND]
    if nic:
        args += ["--nic", "user"]
    return args + ["--upload-window", f"{DEFAULT_SIZE >> 20}M"]  # sandboxes restored from the template upload through it


def make_template(image: DebianImage, quiet: bool = False) -> Path:
    from rich.console import Console

    from pocketvm.backends.qcow2_create import create_overlay

    console = Console(stderr=True, quiet=quiet)
    final = image.directory / "template"
    staging = image.directory / "template.new"
    shutil.rmtree(staging, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="template-", dir=image.directory))
    name = f"template-{image.name}-{secrets.token_hex(3)}"
    overlay = work / "root.qcow2"
    create_overlay(overlay, image.base)
    env = dict(os.environ, POCKETVM_LAUNCHER="off")
    cmd = [sys.executable, "-m", "pocketvm", "run", "--name", name,
           *boot_args(image, overlay, TEMPLATE_MEMORY, TEMPLATE_CPUS, nic=True), *display_args(image)]
    log = open(image.directory / "template.log", "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
    seen = bytearray()
    got = threading.Event()  # the awaited text showed, or the VM ended
    want = [b"root@pocket"]

    def reader() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            log.write(chunk)
            seen.extend(chunk)
            if want and want[0] in seen[-4096 - len(want[0]):]:
                got.set()
        got.set()  # a VM that ended (a kernel panic) shows nothing more: stop waiting

    def wait_for(what: str) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not got.wait(0.5) and t.is_alive():
            if time.monotonic() > deadline:
                raise ImageError(f"the template VM of {image.name} did not {what} in {BOOT_TIMEOUT / 60:.0f} minutes; "
                                 f"see {image.directory / 'template.log'}")
        if want[0] not in seen:
            proc.wait(timeout=30)
            raise ImageError(f"the template VM of {image.name} ended (status {proc.returncode}) before it could "
                             f"{what}; see {image.directory / 'template.log'}")

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    started = time.monotonic()
    try:
        with console.status(f"Template: booting {image.name} once (systemd, at emulated speed)"):
            wait_for("reach a root shell")
            got.clear()
            want[0] = READY_MARK
            seen.clear()
            assert proc.stdin is not None
            proc.stdin.write(ready_command(image))
            proc.stdin.flush()
            wait_for("finish booting" + (" with its desktop up" if image.manifest.get("template_ready_file") else ""))
            time.sleep(1.0)  # let the shell print its prompt and go idle
            snap = subprocess.run([sys.executable, "-m", "pocketvm", "snapshot", name, str(staging), "--stop"],
                                  capture_output=True, text=True, env=env, timeout=300)
            if snap.returncode != 0:
                raise ImageError(f"the template snapshot failed: {snap.stderr.strip().splitlines()[-1:]}")
            proc.wait(timeout=60)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        console.print(f"Template of {image.name}: booted in {time.monotonic() - started:.0f} s, saved to {final}")
        return final
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.join(timeout=5)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)

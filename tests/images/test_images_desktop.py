"""The desktop image's host-side pieces: its guest files, which template a
`pocket run --image` restores, and how the template VM is started (the
build and the desktop itself run in tests/system/test_desktop.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pocketvm.images import desktop
from pocketvm.images.template import READY_COMMAND, display_args, ready_command
from pocketvm.imagevm import _template_fits


def _image(manifest: dict, template: bool = True) -> SimpleNamespace:
    return SimpleNamespace(manifest=manifest, template=Path("/t") if template else None)


PLAIN = _image({})
DESKTOP = _image({"template_display": [1024, 768], "template_ready_file": desktop.READY_FILE})


@pytest.mark.parametrize("image, display, size, fits", [
    (PLAIN, "none", "1024x768", True),
    (PLAIN, "web", "1024x768", False),  # the plain template has no screen: boot with one
    (DESKTOP, "web", "1024x768", True),
    (DESKTOP, "vnc:5999", "1024x768", True),
    (DESKTOP, "web,vnc", "1024X768", True),
    (DESKTOP, "web", "1280x800", False),  # another screen size: boot, X takes that size
    (DESKTOP, "none", "1024x768", False),  # no screen: boot, and the system is the plain one
    (_image({"template_display": [1024, 768]}, template=False), "web", "1024x768", False),
])
def test_the_template_is_restored_only_for_its_own_display(image, display, size, fits):
    assert _template_fits(image, None, None, (), False, display, size) is fits


def test_other_memory_cpus_or_disks_boot_the_desktop_image():
    assert not _template_fits(DESKTOP, "2G", None, (), False, "web", "1024x768")
    assert not _template_fits(DESKTOP, None, 2, (), False, "web", "1024x768")
    assert not _template_fits(DESKTOP, None, None, ("data.img",), False, "web", "1024x768")
    assert _template_fits(DESKTOP, "1G", 1, (), False, "web", "1024x768")


def test_the_template_vm_of_the_desktop_image_has_a_screen_and_waits_for_the_desktop():
    assert display_args(PLAIN) == [] and ready_command(PLAIN) == READY_COMMAND
    assert display_args(DESKTOP) == ["--display", "vnc", "--display-size", "1024x768"]
    command = ready_command(DESKTOP)
    assert command.startswith(b"systemctl is-system-running --wait") and command.endswith(b"\n")
    assert desktop.READY_FILE.encode() in command
    assert command.index(desktop.READY_FILE.encode()) < command.index(b"echo pocketvm-template-")


def test_the_desktop_starts_only_with_a_display_and_marks_itself_up():
    files = desktop.desktop_files()
    assert {"configure.sh", "pocketvm-desktop.service", "xsession", "jwmrc", "20-pocketvm.conf"} <= set(files)
    unit = files["pocketvm-desktop.service"].decode()
    assert "ConditionPathExists=/dev/dri/card0" in unit
    assert desktop.READY_FILE in files["xsession"].decode()
    # configure.sh is run with `sh -e`: it must at least parse.
    subprocess.run(["sh", "-n"], input=files["configure.sh"], check=True)
    subprocess.run(["sh", "-n"], input=files["xsession"], check=True)
    assert len(desktop.desktop_files_digest()) == 16


def test_the_desktop_image_cannot_take_the_plain_images_name(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pocketvm", "image", "build", "debian", "--desktop", "--name",
                          "debian"], check=False, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "plain image" in run.stderr

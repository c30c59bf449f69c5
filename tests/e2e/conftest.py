"""Helpers for end-to-end tests that drive the real `pocket` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BOOT_TIMEOUT = 900  # seconds; a boot takes about a minute today


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def pocket(*args: str, stdin: str = "", timeout: float = 60) -> Run:
    """Run `pocket ARGS` as a user would, stdin piped in."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "pocketvm", *args],
        input=stdin.encode(),
        capture_output=True,
        timeout=timeout,
        env=env,
    )
    return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


@pytest.fixture(scope="session")
def guest_image():
    """The default Debian guest, pulled once (it is cached across runs)."""
    from pocketvm.images import load_default_image, pull_default_image

    return load_default_image() or pull_default_image(quiet=True)


def make_ext4(path: Path, size_mib: int, label: str, files: dict[str, str] | None = None) -> Path:
    """A raw disk image with an ext4 filesystem, optionally holding some files."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path)], check=True, capture_output=True)
    for name, content in (files or {}).items():
        src = path.parent / f".{label}-{name}"
        src.write_text(content)
        subprocess.run(["debugfs", "-w", "-R", f"write {src} {name}", str(path)], check=True, capture_output=True)
    return path


def debugfs_cat(image: Path, name: str) -> str:
    res = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, check=True)
    return res.stdout.decode(errors="replace")

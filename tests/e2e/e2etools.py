"""Helpers for end-to-end tests that drive the real `pocket` CLI.

(Not in conftest.py: test modules import these by name, and every test
directory's conftest module is called `conftest`.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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

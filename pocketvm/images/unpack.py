"""Unpacking Debian packages and finding the files we need inside them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import ImageError

KERNEL_PREFIXES = ("vmlinux-", "vmlinuz-", "Image-")


def unpack_deb(deb: Path, dest: Path) -> Path:
    """Extract a .deb's files (not its maintainer scripts) into dest."""
    exe = shutil.which("dpkg-deb")
    if exe is None:
        raise ImageError("dpkg-deb not found: pocket image pull needs Debian's dpkg tools")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([exe, "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ImageError(f"cannot unpack {deb.name}: {detail}")
    return dest


def find_kernel(tree: Path, package: str) -> tuple[Path, str]:
    """(kernel file, kernel release) from an unpacked linux-image package."""
    boot = tree / "boot"
    candidates = sorted(p for p in boot.glob("*") if p.name.startswith(KERNEL_PREFIXES)) if boot.is_dir() else []
    if not candidates:
        raise ImageError(f"{package} has no kernel in /boot (expected vmlinux-* or vmlinuz-*)")
    kernel = candidates[0]
    release = kernel.name.split("-", 1)[1]
    return kernel, release


def module_dir(tree: Path, release: str, package: str) -> Path:
    for base in ("usr/lib/modules", "lib/modules"):
        d = tree / base / release
        if d.is_dir():
            return d
    raise ImageError(f"{package} has no /usr/lib/modules/{release} directory")


def kernel_config(tree: Path, release: str, package: str) -> dict[str, str]:
    """CONFIG_* settings from /boot/config-<release> ("y", "m", or a value)."""
    path = tree / "boot" / f"config-{release}"
    if not path.is_file():
        raise ImageError(f"{package} has no /boot/config-{release}")
    config = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value.strip('"')
    return config


def find_file(tree: Path, candidates: tuple[str, ...], package: str, what: str) -> Path:
    for rel in candidates:
        if (tree / rel).is_file():
            return tree / rel
    raise ImageError(f"{package} has no {what} (looked for /{', /'.join(candidates)})")

"""The images in the cache: which there are, and deleting one.

Each image is a directory of <cache>/images with a manifest.json: the boot
files of `pocket image pull` (kind "boot") or a system built by `pocket image
build` (kind "debian-root", with root.qcow2 and maybe a template/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError
from .pull import IMAGE_NAME, cache_root


@dataclass(frozen=True)
class ImageInfo:
    name: str
    kind: str
    size: int  # bytes allocated on the host
    template: bool
    built: str


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_image_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ImageError(f"invalid image name {name!r}: use 1-63 letters, digits, '.', '_' or '-'")
    if name == IMAGE_NAME:
        raise ImageError(f"{name} is the name of the boot files of `pocket image pull`; choose another")
    return name


def images_root() -> Path:
    return cache_root() / "images"


def _allocated(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def list_images() -> list[ImageInfo]:
    out = []
    root = images_root()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict):
            continue
        kind = "system" if manifest.get("kind") == "debian-root" else "boot"
        out.append(ImageInfo(d.name, kind, _allocated(d), (d / "template" / "manifest.json").is_file(),
                             str(manifest.get("built", ""))))
    return out


def remove_image(name: str) -> None:
    d = images_root() / name
    if not _NAME_RE.fullmatch(name) or not (d / "manifest.json").is_file():
        raise ImageError(f"no image called {name!r} (see `pocket image ls`)")
    if name == IMAGE_NAME:
        raise ImageError(f"{name} holds the kernel and firmware every VM boots; `pocket image pull --force` "
                         f"rebuilds it")
    shutil.rmtree(d)

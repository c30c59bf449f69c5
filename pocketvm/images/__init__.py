"""Guest image builder: Debian riscv64 packages -> pocketvm boot files."""

from .errors import ImageError
from .initramfs import InitramfsModule, build_initramfs
from .pull import BootFiles, default_image_dir, load_default_image, pull_default_image

__all__ = [
    "BootFiles",
    "ImageError",
    "InitramfsModule",
    "build_initramfs",
    "default_image_dir",
    "load_default_image",
    "pull_default_image",
]

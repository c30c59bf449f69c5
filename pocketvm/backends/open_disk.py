"""Open a disk image by its content, and describe one.

A file that starts with the qcow2 magic is qcow2, anything else is raw:
the file name never decides. (A backing file whose format the overlay
names, as `qemu-img create -F` records it, is opened as that format: a raw
disk whose guest wrote a qcow2 header into sector 0 must stay raw.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pocketvm.backends.disk import DiskError, DiskImage
from pocketvm.backends.qcow2_header import MAGIC

FORMATS = ("raw", "qcow2")


def probe_format(path: str | os.PathLike[str]) -> str:
    """"qcow2" or "raw", from the first bytes of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise DiskError(f"disk image not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise DiskError(f"disk image {os.fspath(path)} is a directory") from None
    except OSError as e:
        raise DiskError(f"cannot read disk image {os.fspath(path)}: {e.strerror}") from None
    return "qcow2" if head == MAGIC else "raw"


def open_disk(
    path: str | os.PathLike[str],
    readonly: bool = False,
    fmt: str | None = None,
    *,
    lock: bool = True,
    _below: tuple[tuple[int, int], ...] = (),
) -> Any:
    """A `DiskImage` or `Qcow2Image` (same interface) for `path`; the format
    is read from the content unless `fmt` says it. `lock=False` (read-only
    only): do not take the shared lock, to inspect an image a VM is using."""
    if fmt is None:
        fmt = probe_format(path)
    if fmt == "qcow2":
        from pocketvm.backends.qcow2 import Qcow2Image

        return Qcow2Image(path, readonly, lock=lock, _below=_below)
    if fmt == "raw":
        return DiskImage(path, readonly, lock=lock)
    raise DiskError(f"unknown disk format {fmt!r} (pocketvm knows {', '.join(FORMATS)})")


@dataclass
class LayerInfo:
    path: str
    format: str
    virtual_size: int
    file_size: int  # apparent size of the file
    allocated: int  # bytes the file occupies on the host
    cluster_size: int | None = None
    backing_file: str | None = None  # as written in the image
    backing_format: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DiskInfo:
    chain: list[LayerInfo] = field(default_factory=list)  # the image first, then its backing files

    def as_dict(self) -> dict[str, Any]:
        return {"chain": [layer.as_dict() for layer in self.chain]}


def disk_info(path: str | os.PathLike[str]) -> DiskInfo:
    """What `pocket disk info` shows: every image of the chain (opened
    read-only and without a lock, so that it works on the disk of a running VM)."""
    info = DiskInfo()
    image = open_disk(path, readonly=True, lock=False)
    try:
        for layer in image.chain() if hasattr(image, "chain") else [image]:
            st = os.fstat(layer.fd)
            h = getattr(layer, "header", None)
            info.chain.append(
                LayerInfo(
                    path=layer.path,
                    format=layer.format,
                    virtual_size=layer.size,
                    file_size=st.st_size,
                    allocated=st.st_blocks * 512,
                    cluster_size=h.cluster_size if h else None,
                    backing_file=h.backing_file if h else None,
                    backing_format=h.backing_format if h else None,
                )
            )
    finally:
        image.close()
    return info

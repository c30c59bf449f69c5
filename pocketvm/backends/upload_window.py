"""The upload window: file data for the guest agent, through a read-only disk.

Bytes sent into a guest through vsock cost its kernel ~15 k instructions per
4 KiB packet (Linux's vsock receive buffers are one page each), so an upload
through vsock alone tops out near 25 MiB/s on the emulated CPU. A VM with an
upload window also has a small read-only virtio-blk disk (serial
`pocketvm-upload`) whose backing file sits beside its vsock socket. The host
program that uploads writes a piece of the file into a slot of that backing
file, tells the agent over vsock which slot holds how many bytes, and the agent
reads the slot with O_DIRECT straight into its buffer: one block request per
MiB instead of 256 vsock packets, and no copy through the guest's socket layer.

The guest only ever reads the window (it is read-only to it), so the host
never reads anything a guest wrote there; a guest that reads it at other
times sees only what the host wrote for it. Between uploads the file is a
hole (no host memory).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pocketvm.backends.disk import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    DiskError,
    DiskImage,
    fallocate,
)

SERIAL = "pocketvm-upload"  # virtio-blk serial the agent looks for (<= 20 bytes)
DEFAULT_SIZE = 8 << 20  # two 4 MiB slots
MIN_SIZE = 64 << 10
MAX_SIZE = 256 << 20
SUFFIX = ".upload"


def window_path(vsock_socket: str | os.PathLike[str]) -> Path:
    """Where the upload window of the VM whose vsock socket is `vsock_socket` lives."""
    p = Path(vsock_socket)
    return p.with_name(p.name + SUFFIX)


def check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE or size % 4096:
        raise ValueError(f"an upload window is {MIN_SIZE >> 10} KiB to {MAX_SIZE >> 20} MiB, "
                         f"a multiple of 4 KiB (got {size} bytes)")


def create(path: Path, size: int) -> DiskImage:
    """A new, empty window file at `path` (a stale one is replaced), opened
    read-only for the VM's disk device. Only its owner may write it."""
    check_size(size)
    path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DiskError(f"cannot create the upload window {path}: {e.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise DiskError(f"cannot size the upload window {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return DiskImage(path, readonly=True, lock=False)


class WindowWriter:
    """The host program's end: writes slots of a VM's window file."""

    def __init__(self, path: Path):
        # O_NOFOLLOW and a regular-file check: the path is derived from a
        # socket path a caller gave, and must not lead a write elsewhere.
        self.fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file")
            self.size = st.st_size
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise ValueError(f"{len(view)} bytes at {offset} do not fit a {self.size}-byte window")
        while view:
            n = os.pwrite(self.fd, view, offset)
            if n <= 0:
                raise OSError(errno.EIO, "no progress writing the upload window")
            view, offset = view[n:], offset + n

    def close(self, clear: bool = True) -> None:
        """Close it; `clear`: first give the window's memory back (a hole
        again; only while this upload holds the window)."""
        if self.fd < 0:
            return
        if clear:
            try:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, self.size)
            except OSError:
                pass  # a filesystem without holes keeps the pages; nothing else is lost
        os.close(self.fd)
        self.fd = -1

"""Raw disk image backend.

A raw image is a plain file whose byte N is the disk's byte N. Opened
read-only it is opened O_RDONLY, so nothing the guest does can change it.
Reads and writes take lists of buffers (scatter/gather) so a device can hand
over views of guest RAM and the data moves with one preadv/pwritev call,
without an intermediate copy.

The image is locked (flock) while open: shared when read-only, exclusive
when writable, so two VMs can never write the same image at once.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# Anything with the buffer protocol: bytes, bytearray, memoryview, a numpy
# view of guest RAM (collections.abc.Buffer once Python 3.12 is the minimum).
Buffer = Any

SECTOR_SIZE = 512

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FICLONE = 0x4004_9409  # _IOW(0x94, 9, int)

_IOV_MAX = 1024  # Linux's limit on buffers per preadv/pwritev call
_COPY_CHUNK = 1 << 20
_ZERO_CHUNK = bytes(_COPY_CHUNK)

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY, errno.EXDEV, errno.EPERM)


class DiskError(Exception):
    """A disk image cannot be opened or an operation on it failed (one-line message)."""


def _libc_fallocate():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _libc_fallocate()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none); raises OSError."""
    if _fallocate is None:
        raise OSError(errno.ENOSYS, "fallocate is not available on this host")
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_locked(path: str, readonly: bool, lock: bool = True) -> int:
    """Open an image file O_RDONLY or O_RDWR and flock it (shared when
    read-only, exclusive when writable; `lock=False` only to inspect an
    image read-only, which a VM may be writing); DiskError (one line) otherwise."""
    assert readonly or lock, "an image is written only under an exclusive lock"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DiskError(f"disk image not found: {path}") from None
    except OSError as e:
        raise DiskError(f"cannot access disk image {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DiskError(f"disk image {path} is a directory")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DiskError(f"disk image {path} is not a regular file or block device")
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        hint = " (open it read-only?)" if not readonly and e.errno in (errno.EACCES, errno.EROFS) else ""
        raise DiskError(f"cannot open disk image {path}: {e.strerror}{hint}") from None
    if not lock:
        return fd
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DiskError(f"disk image {path} is in use by another process") from None
    except OSError as e:
        # Some filesystems (old NFS, FUSE) cannot lock; run unprotected.
        log.warning("cannot lock disk image %s: %s", path, e.strerror)
    return fd


class DiskImage:
    """A raw disk image (see the module docstring)."""

    format = "raw"
    backing: Any = None  # raw images have no backing file

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False, lock: bool = True):
        self.path = os.fspath(path)
        self.readonly = readonly
        self.fd = -1
        self.fd = open_locked(self.path, readonly, lock)
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            if self.size % SECTOR_SIZE:
                raise DiskError(f"disk image {self.path} is {self.size} bytes, not a multiple of {SECTOR_SIZE}")
            # Probe readability now rather than failing on the guest's first read.
            os.pread(self.fd, 1, 0)
        except OSError as e:
            self.close()
            raise DiskError(f"cannot read disk image {self.path}: {e.strerror}") from None
        except DiskError:
            self.close()
            raise
        self.supports_discard = self._probe_discard()

    def _probe_discard(self) -> bool:
        if self.readonly:
            return False
        try:
            # A hole punched entirely past the end of the file changes nothing,
            # but fails exactly when the filesystem cannot punch holes.
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, self.size, SECTOR_SIZE)
        except OSError:
            return False
        return True

    # --- life cycle ---------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also drops the flock
            self.fd = -1

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    # --- I/O ------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskError(f"range {offset:#x}+{length:#x} is beyond the end of {self.path} ({self.size:#x})")

    def _check_writable(self) -> None:
        if self.readonly:
            raise DiskError(f"disk image {self.path} is read-only")

    def readinto(self, offset: int, buffers: Sequence[Buffer]) -> None:
        """Fill `buffers` in order with the bytes at `offset`."""
        self._vectored(os.preadv, offset, buffers, "read error", "unexpected end of")

    def writefrom(self, offset: int, buffers: Sequence[Buffer]) -> None:
        """Write the concatenation of `buffers` at `offset`."""
        self._check_writable()
        self._vectored(os.pwritev, offset, buffers, "write error", "no progress writing")

    def _vectored(self, syscall, offset: int, buffers: Sequence[Buffer], error: str, stalled: str) -> None:
        """preadv/pwritev until every byte of `buffers` is moved, resuming after short transfers."""
        views = [memoryview(b).cast("B") for b in buffers]
        self._check_range(offset, sum(len(m) for m in views))
        while views:
            try:
                n = syscall(self.fd, views[:_IOV_MAX], offset)
            except OSError as e:
                raise DiskError(f"{error} on {self.path} at {offset:#x}: {e.strerror}") from None
            if n == 0:
                raise DiskError(f"{stalled} {self.path} at {offset:#x}")
            offset += n
            views = _advance(views, n)

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, [buf])
        return bytes(buf)

    def write(self, offset: int, data: Buffer) -> None:
        self.writefrom(offset, [data])

    def flush(self) -> None:
        """Make every completed write durable."""
        if self.readonly:
            return
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise DiskError(f"flush of {self.path} failed: {e.strerror}") from None

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range (it then reads as zeros); DiskError if unsupported."""
        self._check_writable()
        self._check_range(offset, length)
        if not self.supports_discard:
            raise DiskError(f"{self.path} does not support discard")
        if length == 0:
            return
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            raise DiskError(f"discard on {self.path} failed: {e.strerror}") from None

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Zero a range, deallocating it if `unmap` and the filesystem can."""
        self._check_writable()
        self._check_range(offset, length)
        if length == 0:
            return
        if unmap and self.supports_discard:
            self.discard(offset, length)
            return
        try:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
            return
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise DiskError(f"write zeroes on {self.path} failed: {e.strerror}") from None
        end = offset + length
        while offset < end:
            n = min(_COPY_CHUNK, end - offset)
            self.writefrom(offset, [memoryview(_ZERO_CHUNK)[:n]])
            offset += n

    # --- snapshots ----------------------------------------------------------------------

    def copy_to(self, dest: str | os.PathLike[str]) -> str:
        """Copy the image to a new file `dest`; returns "reflink" or "copy" (see `copy_file`)."""
        return copy_file(self.fd, self.path, dest)


def copy_file(fd: int, path: str, dest: str | os.PathLike[str]) -> str:
    """Copy the open file `fd` (named `path` in messages) to a new file `dest`;
    returns "reflink" or "copy".

    A reflink shares the data blocks copy-on-write (instant, no space);
    otherwise only the allocated extents are copied, so holes stay holes.
    `dest` must not exist.
    """
    dest = os.fspath(dest)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DiskError(f"cannot create {dest}: {e.strerror}") from None
    try:
        try:
            fcntl.ioctl(out, FICLONE, fd)
            method = "reflink"
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            _sparse_copy(fd, out)
            method = "copy"
        os.fsync(out)
    except OSError as e:
        os.close(out)
        os.unlink(dest)
        raise DiskError(f"copy of {path} to {dest} failed: {e.strerror}") from None
    os.close(out)
    return method


def _sparse_copy(fd: int, out: int) -> None:
    size = os.lseek(fd, 0, os.SEEK_END)
    os.ftruncate(out, size)
    for start, end in data_extents(fd, size):
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(_COPY_CHUNK, end - pos), pos)
            if not chunk:
                break
            # Zero blocks inside allocated extents become holes too.
            if chunk != _ZERO_CHUNK[: len(chunk)]:
                _pwrite_all(out, chunk, pos)
            pos += len(chunk)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Allocated (start, end) ranges of an open file; the whole file if holes cannot be found."""
    extents = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, min(end, size)))
            pos = end
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        return [(0, size)]
    return extents


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first n bytes from a list of buffers (after a short transfer)."""
    while n and views:
        if n >= len(views[0]):
            n -= len(views[0])
            views = views[1:]
        else:
            views = [views[0][n:]] + views[1:]
            n = 0
    return views


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n

"""The backing files under a snapshot's qcow2 disks: recorded by path and
checksum, checked on restore, without hashing gigabytes every time (the
same cache spares hashing a template's RAM file at every restore).

A snapshot of a VM whose disk is a qcow2 overlay stores only the overlay;
the files below it (the base image, or the overlay of the snapshot the VM
was restored from) are referenced by absolute path and content digest
(`digest.digest_file`). Hashing a 4 GiB base takes seconds, so the digest
of a file is cached, keyed by what changes whenever its content can have
changed:

    (device, inode, size, mtime_ns, ctime_ns)

in `~/.cache/pocketvm/digests/DEV-INO.json`. Any write to the file moves
its mtime and ctime; ctime cannot be set back by a user (utime sets it to
now), and a replaced file has another inode. So a restore that finds the
same identity in the cache trusts the cached digest, and one that does
not (the file was written, replaced, copied, or the cache was deleted)
hashes the file again: a changed base is always caught, usually at the
cost of a stat. Backing files are opened read-only by every VM, which
never moves their times.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pocketvm.paths import cache_dir
from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import algorithm_of, data_extents, digest_fd, digest_file
from pocketvm.snapshot.format import BackingEntry


def _cache_path(st: os.stat_result) -> Path:
    return cache_dir() / "digests" / f"{st.st_dev}-{st.st_ino}.json"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _cached(st: os.stat_result, algorithm: str) -> str | None:
    try:
        entry = json.loads(_cache_path(st).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("identity") != _identity(st):
        return None
    digest = entry.get("digest")
    if not isinstance(digest, str) or digest.partition(":")[0] != algorithm:
        return None
    return digest


_PRUNE_ABOVE = 256  # entries; then those whose file is gone are dropped


# A RAM file changed less than this ago may change again within the same
# timestamp tick, unseen by its identity: its digest is not cached yet.
SETTLE_NS = 2_000_000_000


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS


def _store(st: os.stat_result, digest: str, file: str) -> None:
    path = _cache_path(st)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"identity": _identity(st), "digest": digest, "path": os.path.abspath(file)}))
        os.replace(tmp, path)
        entries = list(path.parent.glob("*.json"))
        if len(entries) > _PRUNE_ABOVE:
            _prune(entries)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _prune(entries: list[Path]) -> None:
    for entry in entries:
        try:
            file = json.loads(entry.read_text()).get("path", "")
            st = os.stat(file)
            if entry.name != f"{st.st_dev}-{st.st_ino}.json":
                entry.unlink()
        except FileNotFoundError:
            entry.unlink(missing_ok=True)
        except (OSError, ValueError, AttributeError):
            entry.unlink(missing_ok=True)


def remember(path: str | os.PathLike[str], digest: str) -> None:
    """Cache the digest just computed of a file nobody else can have written
    (a snapshot's own disk image, while the snapshot is sealed)."""
    try:
        _store(os.stat(path), digest, os.fspath(path))
    except OSError:
        pass


def cached_digest(path: str | os.PathLike[str], algorithm: str | None = None) -> str:
    """The content digest of the file at `path`, from the cache when its
    identity is unchanged; OSError if it cannot be read."""
    st = os.stat(path)
    if algorithm is None:
        from pocketvm.snapshot.digest import ALGORITHM

        algorithm = ALGORITHM
    digest = _cached(st, algorithm)
    if digest is not None:
        return digest
    digest, _ = digest_file(path, algorithm)
    after = os.stat(path)
    if _identity(after) == _identity(st) and after.st_ino == st.st_ino:
        _store(after, digest, os.fspath(path))
    return digest


def cached_digest_fd(fd: int, size: int, algorithm: str, path: str | os.PathLike[str]) -> tuple[str, list[tuple[int, int]]]:
    """`digest.digest_fd` of an open file (a snapshot's RAM: a template is
    restored for every sandbox), from the cache when its identity is
    unchanged: then only its data extents are looked up."""
    st = os.fstat(fd)
    digest = _cached(st, algorithm)
    if digest is not None and st.st_size == size:
        return digest, data_extents(fd, size)
    digest, extents = digest_fd(fd, size, algorithm)
    after = os.fstat(fd)
    if _identity(after) == _identity(st) and after.st_size == size and _settled(after):
        _store(after, digest, os.fspath(path))
    return digest, extents


def record(image: Any) -> list[BackingEntry]:
    """The backing files below the open image `image` (top excluded), top-down."""
    out = []
    layer = image.backing
    while layer is not None:
        out.append(BackingEntry(os.path.abspath(layer.path), layer.format, os.fstat(layer.fd).st_size))
        layer = getattr(layer, "backing", None)
    return out


def seal(entries: list[BackingEntry]) -> None:
    """Compute (or look up) the digest of every entry."""
    for e in entries:
        try:
            e.digest = cached_digest(e.path)
            size = os.stat(e.path).st_size
        except OSError as err:
            raise F.SnapshotError(f"cannot read backing file {e.path}: {err.strerror or err}") from None
        if size != e.size:
            raise F.SnapshotError(f"backing file {e.path} changed while the snapshot was taken")


def verify(entries: list[BackingEntry], where: str) -> None:
    """Every backing file is where it was, with the content it had."""
    for e in entries:
        try:
            st = os.stat(e.path)
        except FileNotFoundError:
            raise F.SnapshotError(f"{where}: its base image {e.path} is missing") from None
        except OSError as err:
            raise F.SnapshotError(f"{where}: cannot read its base image {e.path}: {err.strerror}") from None
        if st.st_size != e.size:
            raise F.SnapshotError(f"{where}: its base image {e.path} changed since the snapshot (size differs)")
        try:
            digest = cached_digest(e.path, algorithm_of(e.digest))
        except ValueError as err:
            raise F.SnapshotError(f"{where}: base image {e.path}: {err}") from None
        except OSError as err:
            raise F.SnapshotError(f"{where}: cannot read its base image {e.path}: {err.strerror or err}") from None
        if digest != e.digest:
            raise F.SnapshotError(f"{where}: its base image {e.path} changed since the snapshot (checksum mismatch)")

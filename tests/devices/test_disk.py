from __future__ import annotations

import fcntl
import hashlib
import os

import numpy as np
import pytest

from pocketvm.backends.disk import DiskError, DiskImage


def image(tmp_path, size: int = 64 * 1024, data: bytes = b"", name: str = "disk.img") -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(data)
    return str(path)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_open_errors_are_one_line(tmp_path):
    with pytest.raises(DiskError, match="not found"):
        DiskImage(tmp_path / "missing.img")
    with pytest.raises(DiskError, match="is a directory"):
        DiskImage(tmp_path)
    with pytest.raises(DiskError, match="not a multiple of 512"):
        DiskImage(image(tmp_path, size=1000))
    with pytest.raises(DiskError) as info:
        DiskImage(tmp_path / "missing.img")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = image(tmp_path)
    os.chmod(path, 0)
    with pytest.raises(DiskError, match="cannot open"):
        DiskImage(path, readonly=True)


def test_unreadable_file_via_eio(tmp_path):
    # /proc/self/mem is a regular file whose offset 0 is unmapped: reading fails.
    with pytest.raises(DiskError, match="cannot read"):
        DiskImage("/proc/self/mem", readonly=True)


def test_read_write_scatter_gather(tmp_path):
    path = image(tmp_path)
    with DiskImage(path) as disk:
        assert disk.size == 64 * 1024 and disk.sectors == 128
        ram = np.zeros(4096, dtype=np.uint8)
        ram[:1536] = np.arange(1536) % 251
        disk.writefrom(512, [ram[:1000], ram[1000:1536]])
        out = np.zeros(1536, dtype=np.uint8)
        disk.readinto(512, [out[:7], out[7:]])
        assert np.array_equal(out, ram[:1536])
        with pytest.raises(DiskError, match="beyond the end"):
            disk.read(64 * 1024 - 512, 1024)
        disk.flush()
    with open(path, "rb") as f:
        f.seek(512)
        assert f.read(1536) == ram[:1536].tobytes()


def test_readonly_is_o_rdonly_and_unchanged(tmp_path):
    path = image(tmp_path, data=b"precious" * 64)
    before = digest(path)
    with DiskImage(path, readonly=True) as disk:
        assert fcntl.fcntl(disk.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert not disk.supports_discard
        with pytest.raises(DiskError, match="read-only"):
            disk.write(0, b"x" * 512)
        with pytest.raises(DiskError, match="read-only"):
            disk.write_zeroes(0, 512)
        with pytest.raises(DiskError, match="read-only"):
            disk.discard(0, 512)
        disk.flush()
        assert disk.read(0, 8) == b"precious"
    assert digest(path) == before


def test_two_writers_are_refused(tmp_path):
    path = image(tmp_path)
    with DiskImage(path):
        with pytest.raises(DiskError, match="in use"):
            DiskImage(path)
        with pytest.raises(DiskError, match="in use"):
            DiskImage(path, readonly=True)
    DiskImage(path).close()  # lock released on close


def test_discard_and_write_zeroes(tmp_path):
    size = 1 << 20
    path = image(tmp_path, size=size, data=b"\xff" * size)
    with DiskImage(path) as disk:
        if not disk.supports_discard:
            pytest.skip("filesystem cannot punch holes")
        blocks = os.stat(path).st_blocks
        disk.discard(0, 512 * 1024)
        assert disk.read(0, 512 * 1024) == bytes(512 * 1024)
        assert disk.read(512 * 1024, 4) == b"\xff" * 4
        assert os.stat(path).st_blocks < blocks
        assert disk.size == size  # KEEP_SIZE
        disk.write_zeroes(600 * 1024, 4096)
        disk.write_zeroes(700 * 1024, 4096, unmap=True)
        assert disk.read(600 * 1024 - 1, 4098) == b"\xff" + bytes(4096) + b"\xff"
        assert disk.read(700 * 1024, 4096) == bytes(4096)


def test_copy_to_is_sparse_and_equal(tmp_path):
    size = 8 << 20
    path = str(tmp_path / "sparse.img")
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(3 << 20)
        f.write(b"data" * 1024)
    with DiskImage(path) as disk:
        method = disk.copy_to(tmp_path / "copy.img")
        assert method in ("reflink", "copy")
        with pytest.raises(DiskError, match="cannot create"):
            disk.copy_to(tmp_path / "copy.img")  # never overwrites
    copy = str(tmp_path / "copy.img")
    assert digest(copy) == digest(path)
    assert os.stat(copy).st_size == size
    assert os.stat(copy).st_blocks * 512 < 1 << 20  # holes stayed holes


def test_unlocked_read_only_open_for_inspection(tmp_path):
    path = image(tmp_path, data=b"inspect me")
    with DiskImage(path) as writer:  # a running VM holds the exclusive lock
        with pytest.raises(DiskError, match="in use"):
            DiskImage(path, readonly=True)
        with DiskImage(path, readonly=True, lock=False) as viewer:
            assert viewer.read(0, 10) == b"inspect me"
        writer.write(0, b"still mine")
    with pytest.raises(AssertionError):
        DiskImage(path, lock=False)  # only readers may skip the lock


def test_open_disk_picks_raw_for_anything_without_the_qcow2_magic(tmp_path):
    from pocketvm.backends.open_disk import open_disk

    path = image(tmp_path, data=b"QFI\xfa not quite")
    with open_disk(path) as disk:
        assert disk.format == "raw" and disk.backing is None
    with pytest.raises(DiskError, match="not a qcow2 image"):
        open_disk(path, fmt="qcow2")
    with pytest.raises(DiskError, match="unknown disk format 'vmdk'"):
        open_disk(path, fmt="vmdk")

"""Every virtio-blk device test again, on a qcow2 overlay whose backing file
holds the test pattern: the device must not care which image it serves."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import test_virtio_blk as raw_tests
from test_virtio_blk import *  # noqa: F401,F403  (the tests themselves, collected here once more)
from test_virtio_blk import DISK_SIZE

from pocketvm.backends.open_disk import open_disk
from pocketvm.backends.qcow2_create import create_overlay


def guest_bytes(path: str, offset: int, length: int) -> bytes:
    """The guest-visible bytes, as QEMU reads them (-U: the device holds the lock)."""
    out = path + ".as-raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, out], check=True, capture_output=True)
    with open(out, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.fixture
def img(tmp_path, monkeypatch) -> str:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed (Debian package qemu-utils)")
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(i % 256 for i in range(DISK_SIZE)))
    path = tmp_path / "disk.qcow2"
    create_overlay(path, base)
    monkeypatch.setattr(raw_tests, "disk_bytes", guest_bytes)
    monkeypatch.setattr(raw_tests, "DiskImage", lambda p, readonly=False: open_disk(p, readonly))
    return str(path)


def test_these_tests_run_on_qcow2(blk):
    assert blk.disk.format == "qcow2" and blk.disk.backing.format == "raw"

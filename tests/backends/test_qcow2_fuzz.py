"""A seeded random mix of reads, writes, discards and write-zeroes on a qcow2
overlay (with a backing file) against a raw shadow, byte for byte; and a
writer killed with SIGKILL in the middle of its writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from qcow2tools import MiB, assert_clean, check, need, pattern, qemu_img, sha, to_raw

from pocketvm.backends.open_disk import open_disk
from pocketvm.backends.qcow2_create import create_overlay, create_qcow2

SIZE = 24 * MiB


@pytest.fixture(autouse=True)
def _tools():
    need("qemu-img")


def _base(tmp_path, cluster_size: int, version: int) -> tuple[str, bytearray]:
    base = tmp_path / "base.qcow2"
    if version == 2:
        qemu_img("create", "-f", "qcow2", "-o", f"compat=0.10,cluster_size={cluster_size}", base, SIZE)
    else:
        create_qcow2(base, size=SIZE, cluster_size=cluster_size)
    content = bytearray(SIZE)
    with open_disk(base) as image:
        for off, n, seed in [(0, 3 * MiB, 1), (7 * MiB + 5, 2 * MiB, 2), (20 * MiB, 4 * MiB, 3)]:
            data = pattern(n, seed)
            image.write(off, data)
            content[off : off + n] = data
    return str(base), content


@pytest.mark.parametrize(
    "seed,cluster_size,version",
    [(1, 65536, 3), (2, 4096, 3), (3, 512, 3), (4, 65536, 2), (5, 2 << 20, 3)],
)
def test_random_operations_match_a_raw_shadow(tmp_path, seed, cluster_size, version):
    base, shadow = _base(tmp_path, cluster_size, version)
    base_digest = sha(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow2"
    if version == 2:
        qemu_img("create", "-f", "qcow2", "-o", f"compat=0.10,cluster_size={cluster_size}", "-b", base, "-F", "qcow2", top)
    else:
        create_overlay(top, base)
    rng = np.random.default_rng(seed)
    image = open_disk(top)
    try:
        for step in range(600):
            op = rng.choice(["write", "write", "write", "read", "read", "zero", "discard", "flush", "reopen"], p=None)
            # Mostly small, sometimes spanning many clusters; sector aligned
            # mostly (as virtio-blk), byte aligned sometimes.
            big = rng.random() < 0.1
            n = int(rng.integers(1, 6 * MiB if big else 200_000))
            off = int(rng.integers(0, SIZE - n))
            if rng.random() < 0.7:
                off, n = off // 512 * 512, max(512, n // 512 * 512)
            if op == "write":
                data = rng.integers(0, 256, n, dtype=np.uint8)
                cut = int(rng.integers(0, n))
                image.writefrom(off, [data[:cut], data[cut:]])
                shadow[off : off + n] = data.tobytes()
            elif op == "read":
                got = bytearray(n)
                image.readinto(off, [memoryview(got)])
                assert got == shadow[off : off + n], f"step {step}: read {off:#x}+{n:#x} differs"
            elif op in ("zero", "discard"):
                (image.write_zeroes if op == "zero" else image.discard)(off, n)
                shadow[off : off + n] = bytes(n)
            elif op == "flush":
                image.flush()
            else:
                image.close()
                image = open_disk(top)
        assert image.read(0, SIZE) == shadow
    finally:
        image.close()
    assert sha(tmp_path / "base.qcow2") == base_digest
    assert_clean(top)
    assert to_raw(top, tmp_path / "top.raw") == bytes(shadow)


_WRITER = r"""
import sys, os
import numpy as np
from pocketvm.backends.open_disk import open_disk
image = open_disk(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
size = image.size
print("ready", flush=True)
while True:
    n = int(rng.integers(1, 64)) * 4096
    off = int(rng.integers(0, (size - n) // 4096)) * 4096
    r = rng.random()
    if r < 0.8:
        image.write(off, bytes([int(rng.integers(1, 256))]) * n)
    elif r < 0.9:
        image.discard(off, n)
    else:
        image.flush()
"""


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kill_9_in_the_middle_of_writes_leaves_a_usable_image(tmp_path, seed):
    base, content = _base(tmp_path, 65536, 3)
    before = sha(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow2"
    create_overlay(top, base)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(top), str(seed)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.2 * (seed % 3))  # some hundreds of writes in
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    result = check(top)  # leaks are allowed, corruption is not
    assert result.get("corruptions", 0) == 0 and result.get("check-errors", 0) == 0, result
    # pocketvm reads it as QEMU does, and goes on writing it.
    expected = to_raw(top, tmp_path / "after-kill.raw")
    with open_disk(top) as image:
        assert image.read(0, SIZE) == expected
        image.write(0, b"after" * 1000)
    result = check(top)
    assert result.get("corruptions", 0) == 0, result
    assert sha(tmp_path / "base.qcow2") == before
    qemu_img("check", "-r", "leaks", top)
    assert_clean(top)
    os.unlink(tmp_path / "after-kill.raw")

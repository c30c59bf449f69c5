"""Corrupt and hostile qcow2 images: each gives one DiskError line (when
opened, or when the bad table is first used) and the file is never written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from qcow2tools import MiB, sha

from pocketvm.backends.disk import DiskError
from pocketvm.backends.open_disk import open_disk
from pocketvm.backends.qcow2 import Qcow2Image
from pocketvm.backends.qcow2_create import create_qcow2, set_backing

CS = 65536
# Layout of a fresh pocketvm image: header, refcount table, refcount block, L1.
RT, RB, L1 = CS, 2 * CS, 3 * CS


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def img(tmp_path) -> Path:
    """An image with one L2 table (the 5th cluster) and one data cluster (the 6th)."""
    path = tmp_path / "img.qcow2"
    create_qcow2(path, size=8 * MiB)
    with open_disk(path) as image:
        image.write(0, b"data" * 1024)
    return path


def l2_offset(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(L1)
        return struct.unpack(">Q", f.read(8))[0] & 0x00FF_FFFF_FFFF_FE00


def expect_error(path: Path, match: str, readonly: bool = False, use: bool = False) -> str:
    """Open (and with `use`, read and write) the image; the one-line error."""
    before = sha(path)
    with pytest.raises(DiskError, match=match) as info:
        image = open_disk(path, readonly=readonly)
        try:
            if use:
                image.read(0, 8 * MiB)
                if not readonly:
                    image.write(0, b"x" * 4096)
        finally:
            image.close()
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    assert sha(path) == before, "a corrupt image was written"
    return message


HEADER_EDITS = [
    (4, struct.pack(">I", 4), "version 4 is not supported"),
    (20, struct.pack(">I", 30), "cluster size 2\\^30 is out of range"),
    (24, struct.pack(">Q", 1 << 62), "virtual size .* is absurd"),
    (24, struct.pack(">Q", 1 << 40), "cannot map the virtual size"),  # L1 of 1 entry maps 512 MiB
    (40, struct.pack(">Q", 1 << 40), "L1 table .* past the end of the file"),
    (40, struct.pack(">Q", 0), "L1 table overlaps the header"),
    (40, struct.pack(">Q", L1 + 512), "not cluster aligned"),
    (40, struct.pack(">Q", RT), "L1 table overlaps the refcount table"),
    (48, struct.pack(">Q", 1 << 40), "refcount table .* past the end of the file"),
    (56, struct.pack(">I", 1 << 20), "refcount table of .* clusters is too large"),
    (36, struct.pack(">I", 1 << 30), "L1 table of .* entries is too large"),
    (32, struct.pack(">I", 1), "encrypted"),
    (72, struct.pack(">Q", 1 << 40), "unknown incompatible features"),
    (72, struct.pack(">Q", 1 << 2), "external data file"),
    (96, struct.pack(">I", 9), "refcount order 9"),
    (100, struct.pack(">I", 1 << 20), "header length"),
    (8, struct.pack(">QI", 112 + 8, 5000), "backing file name of 5000 bytes"),
    (8, struct.pack(">QI", CS - 2, 10), "backing file name is not inside the header cluster"),
]


@pytest.mark.parametrize("offset,data,match", HEADER_EDITS, ids=[m for _, _, m in HEADER_EDITS])
def test_bad_header_fields(img, offset, data, match):
    poke(img, offset, data)
    expect_error(img, match)
    expect_error(img, match, readonly=True)


def test_truncated_and_tiny_files(tmp_path, img):
    tiny = tmp_path / "tiny.qcow2"
    tiny.write_bytes(img.read_bytes()[:50])
    with pytest.raises(DiskError, match="not a qcow2 image"):
        Qcow2Image(tiny)
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(img.read_bytes()[: 3 * CS])  # the L1 table is gone
    expect_error(cut, "past the end of the file")


def test_l1_entries_pointing_outside_or_at_tables(img):
    good = img.read_bytes()
    for value, match in [
        ((1 << 40) | (1 << 63), "L1 entry points past the end of the file"),
        (RT | (1 << 63), "points at the header or another table"),
        (L1 | (1 << 63), "points at the header or another table"),
        (0x1FF, "reserved bits"),
    ]:
        img.write_bytes(good)
        poke(img, L1, struct.pack(">Q", value))
        expect_error(img, match, readonly=True)


def test_two_l1_entries_sharing_one_l2_table(tmp_path):
    path = tmp_path / "big.qcow2"
    create_qcow2(path, size=2048 * MiB)
    with open_disk(path) as image:
        image.write(0, b"x" * 512)
    entry = open(path, "rb").read()[L1 : L1 + 8]
    poke(path, L1 + 8, entry)
    expect_error(path, "share an L2 table", readonly=True)


def test_l2_entries_pointing_outside_the_file_or_into_metadata(img):
    good = img.read_bytes()
    l2 = l2_offset(img)
    for value, match, readonly in [
        ((1 << 40) | (1 << 63), "points past the end of the file", True),
        ((1 << 63) | 0, None, True),  # offset 0 with the copied flag: unallocated, harmless
        ((1 << 63) | (5 * CS + 512), "not cluster aligned", True),
        ((1 << 63) | RT, "points into metadata", False),  # a write there would hit the refcount table
        ((1 << 63) | 0x100, "reserved bits", True),
    ]:
        img.write_bytes(good)
        poke(img, l2 + 8, struct.pack(">Q", value))
        if match is None:
            with open_disk(img, readonly=True) as image:
                assert image.read(CS, 4) == bytes(4)
            continue
        expect_error(img, match, readonly=readonly, use=True)


def test_compressed_cluster_that_does_not_inflate(img):
    l2 = l2_offset(img)
    entry = (1 << 62) | (5 * CS) | (3 << (62 - 8))  # garbage bytes where compressed data should be
    poke(img, l2 + 8, struct.pack(">Q", entry))
    message = expect_error(img, "does not inflate", readonly=True, use=True)
    assert "compressed cluster" in message


def test_refcount_table_pointing_outside(img):
    poke(img, RT + 8, struct.pack(">Q", 1 << 40))
    expect_error(img, "refcount block lies outside the file")
    with open_disk(img, readonly=True) as image:  # refcounts matter only for writing
        assert image.read(0, 4) == b"data"


def test_backing_chain_loops_and_missing_files(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create_qcow2(a, size=MiB)
    create_qcow2(b, size=MiB, backing=str(a))
    set_backing(a, str(b), "qcow2")  # a -> b -> a
    expect_error(a, "backing chain loops", readonly=True)
    set_backing(a, str(a), "qcow2")  # a -> a
    expect_error(a, "backing chain loops", readonly=True)
    set_backing(a, "missing.qcow2", "qcow2")
    expect_error(a, "backing file missing.qcow2 not found", readonly=True)
    set_backing(a, str(b), "vmdk")
    expect_error(a, "has format 'vmdk'", readonly=True)


def test_deep_chains_are_fine_up_to_the_limit(tmp_path):
    prev = tmp_path / "l0.qcow2"
    create_qcow2(prev, size=MiB)
    with open_disk(prev) as image:
        image.write(0, b"bottom")
    for i in range(1, 40):
        cur = tmp_path / f"l{i}.qcow2"
        create_qcow2(cur, backing=prev.name)
        prev = cur
    with open_disk(prev, readonly=True) as image:
        assert len(image.chain()) == 40 and image.read(0, 6) == b"bottom"


def test_dirty_and_corrupt_bits_allow_reading_only(img):
    for bit, match in [(1, "not closed cleanly"), (2, "marked corrupt")]:
        good = img.read_bytes()
        poke(img, 72, struct.pack(">Q", bit))
        expect_error(img, match)
        with open_disk(img, readonly=True) as image:
            assert image.read(0, 4) == b"data"
        img.write_bytes(good)


def test_random_garbage_never_crashes(tmp_path, img):
    import numpy as np

    rng = np.random.default_rng(5)
    good = bytearray(img.read_bytes())
    for i in range(150):
        bad = bytearray(good)
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.choice([rng.integers(0, 112), rng.integers(0, len(bad))]))
            bad[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"g{i}.qcow2"
        path.write_bytes(bytes(bad))
        try:
            with open_disk(path, readonly=True) as image:
                image.read(0, image.size if image.size <= 64 * MiB else MiB)
        except DiskError as e:
            assert "\n" not in str(e)


def test_a_missing_backing_file_is_found_before_anything_is_written(tmp_path):
    base = tmp_path / "base.qcow2"
    create_qcow2(base, size=MiB)
    top = tmp_path / "top.qcow2"
    create_qcow2(top, size=MiB, backing=str(base))
    poke(top, 88, struct.pack(">Q", 1))  # autoclear bits: a writer clears them on open
    base.unlink()
    expect_error(top, "backing file .* not found")
    with open(top, "rb") as f:
        f.seek(88)
        assert f.read(8) == struct.pack(">Q", 1)

"""qcow2 images against qemu-img: images QEMU made read back byte for byte;
images pocketvm made or wrote pass `qemu-img check` and equal a raw shadow
(`qemu-img compare`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from qcow2tools import MiB, assert_clean, check, need, pattern, qemu_img, qemu_io, sha, to_raw

from pocketvm.backends.disk import DiskError, DiskImage
from pocketvm.backends.open_disk import disk_info, open_disk, probe_format
from pocketvm.backends.qcow2 import Qcow2Image
from pocketvm.backends.qcow2_create import convert_to_qcow2, create_overlay, create_qcow2, set_backing

SIZE = 16 * MiB


@pytest.fixture(autouse=True)
def _tools():
    need("qemu-img")


def raw_file(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes.items():
            f.seek(off)
            f.write(data)
    return path


def read_all(image) -> bytes:
    return image.read(0, image.size)


# --- images made by QEMU -----------------------------------------------------------------


def test_backing_chain_of_three_with_relative_and_absolute_paths(tmp_path):
    raw_file(tmp_path / "base.raw", SIZE, {0: pattern(3 * MiB, 1), 10 * MiB: pattern(100_000, 2)})
    (tmp_path / "sub").mkdir()
    mid = tmp_path / "sub" / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", mid)  # relative to mid's directory
    qemu_io(mid, "write -P 0xaa 1M 1M", "write -P 0xbb 12345k 7k")
    qemu_img("create", "-f", "qcow2", "-b", mid.resolve(), "-F", "qcow2", top)
    qemu_io(top, "write -P 0xcc 1536k 64k", "write -P 0xdd 15M 1M")
    expected = to_raw(top, tmp_path / "expected.raw")
    with open_disk(top, readonly=True) as image:
        assert image.format == "qcow2" and image.size == SIZE
        assert [layer.format for layer in image.chain()] == ["qcow2", "qcow2", "raw"]
        assert read_all(image) == expected
        # odd-sized reads across cluster and layer boundaries, scattered into several buffers
        for off, n in [(1 * MiB - 3, 70_000), (12345 * 1024 - 1, 9000), (SIZE - 513, 513)]:
            bufs = [bytearray(7), bytearray(n - 7)]
            image.readinto(off, bufs)
            assert bytes(bufs[0] + bufs[1]) == expected[off : off + n]


def test_version_2_images_are_read_and_written(tmp_path):
    img = tmp_path / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", img, "8M")
    qemu_io(img, "write -P 0x11 0 200k")
    with Qcow2Image(img) as image:
        assert image.header.version == 2
        image.write(100 * 1024, b"v2!" * 1000)
        image.write_zeroes(4 * MiB, 2 * MiB)
    assert_clean(img)
    expected = bytearray(b"\x11" * (200 * 1024) + bytes(8 * MiB - 200 * 1024))
    expected[100 * 1024 : 100 * 1024 + 3000] = b"v2!" * 1000
    assert to_raw(img, tmp_path / "v2.raw") == bytes(expected)


def test_compressed_clusters_are_read(tmp_path):
    src = raw_file(tmp_path / "src.raw", SIZE, {0: b"compress me " * 300_000, 9 * MiB: pattern(2 * MiB, 3)})
    img = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", src, img)
    info = qemu_img("info", "--output=json", img).stdout
    assert '"compressed"' in qemu_img("check", "--output=json", img).stdout or "compression" in info
    with open_disk(img, readonly=True) as image:
        assert read_all(image) == src.read_bytes()
    # Writing over part of a compressed cluster: the rest of it is kept.
    with open_disk(img) as image:
        image.write(5000, b"X" * 100)
    assert_clean(img)
    expected = bytearray(src.read_bytes())
    expected[5000:5100] = b"X" * 100
    assert to_raw(img, tmp_path / "c.raw") == bytes(expected)


def test_zero_clusters_and_discard_made_by_qemu_io(tmp_path):
    base = raw_file(tmp_path / "base.raw", SIZE, {0: b"\xee" * SIZE})
    img = tmp_path / "z.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "raw", img)
    qemu_io(img, "write -P 0x55 0 4M", "write -z 1M 1M", "write -z 6M 512k", "discard 2M 1M")
    expected = to_raw(img, tmp_path / "z.raw")
    assert expected[1 * MiB : 2 * MiB] == bytes(MiB) and expected[6 * MiB : 6 * MiB + 512 * 1024] == bytes(512 * 1024)
    with open_disk(img, readonly=True) as image:
        assert read_all(image) == expected


def test_images_made_by_qemu_are_written(tmp_path):
    base = raw_file(tmp_path / "base.raw", SIZE, {0: pattern(SIZE, 4)})
    img = tmp_path / "o.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", img)
    shadow = bytearray(base.read_bytes())
    before = sha(base)
    with open_disk(img) as image:
        for off, data in [(0, b"a" * 700), (65536 - 10, b"b" * 20), (3 * MiB + 1, pattern(300_000, 5))]:
            image.write(off, data)
            shadow[off : off + len(data)] = data
        image.discard(8 * MiB, 2 * MiB)
        shadow[8 * MiB : 10 * MiB] = bytes(2 * MiB)
    assert sha(base) == before  # the backing file is never written
    assert_clean(img)
    assert to_raw(img, tmp_path / "o.raw") == bytes(shadow)


# --- images made by pocketvm ------------------------------------------------------------------


def test_created_images_and_info_match_qemu(tmp_path):
    base = tmp_path / "base.qcow2"
    create_qcow2(base, size=64 * MiB)
    assert_clean(base)
    overlay = tmp_path / "over.qcow2"
    create_overlay(overlay, base)
    assert_clean(overlay)
    chain = qemu_img("info", "--backing-chain", "--output=json", overlay).stdout
    assert str(base) in chain and '"virtual-size": 67108864' in chain
    info = disk_info(overlay)
    assert [(layer.format, layer.virtual_size) for layer in info.chain] == [("qcow2", 64 * MiB)] * 2
    assert info.chain[0].backing_file == str(base) and info.chain[0].backing_format == "qcow2"
    assert os.stat(overlay).st_blocks * 512 <= 512 * 1024  # a new overlay is a few clusters
    with pytest.raises(DiskError, match="already exists"):
        create_qcow2(base, size=MiB)


def test_written_image_equals_raw_shadow_per_qemu_img_compare(tmp_path):
    img = tmp_path / "w.qcow2"
    create_qcow2(img, size=SIZE)
    shadow_path = raw_file(tmp_path / "shadow.raw", SIZE, {})
    rng = np.random.default_rng(7)
    with open_disk(img) as image, DiskImage(shadow_path) as shadow:
        for _ in range(200):
            off = int(rng.integers(0, SIZE // 512)) * 512
            n = min(int(rng.integers(1, 300)) * 512, SIZE - off)
            data = rng.integers(0, 256, n, dtype=np.uint8)
            image.writefrom(off, [data[: n // 3], data[n // 3 :]])
            shadow.writefrom(off, [data])
        image.flush()
    assert_clean(img)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", img, shadow_path)


def test_convert_raw_to_qcow2_skips_zero_clusters(tmp_path):
    src = raw_file(tmp_path / "fs.raw", 64 * MiB, {0: pattern(MiB, 6), 40 * MiB: bytes(MiB) + b"tail" * 10})
    dst = tmp_path / "fs.qcow2"
    convert_to_qcow2(src, dst)
    assert_clean(dst)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", dst, src)
    assert check(dst)["allocated-clusters"] == 17  # 16 of data + the one holding "tail"
    with pytest.raises(DiskError, match="already exists"):
        convert_to_qcow2(src, dst)
    # A qcow2 chain converts to one standalone image.
    top = tmp_path / "top.qcow2"
    create_overlay(top, dst)
    with open_disk(top) as image:
        image.write(5 * MiB, b"top")
    flat = tmp_path / "flat.qcow2"
    convert_to_qcow2(top, flat)
    assert disk_info(flat).chain[0].backing_file is None
    qemu_img("compare", top, flat)


def test_backing_file_is_read_only_and_shared(tmp_path):
    base = tmp_path / "base.qcow2"
    create_qcow2(base, size=SIZE)
    with open_disk(base) as image:
        image.write(0, pattern(MiB, 8))
    before = sha(base)
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create_overlay(a, base)
    create_overlay(b, base)
    with open_disk(a) as ia, open_disk(b) as ib:  # two writers on one base at once
        assert ia.backing.readonly and ib.backing.readonly
        ia.write(0, b"A" * 4096)
        ib.write(0, b"B" * 4096)
        assert ia.read(0, 2) == b"AA" and ib.read(0, 2) == b"BB"
        assert ia.read(4096, 100) == pattern(MiB, 8)[4096:4196]
        with pytest.raises(DiskError, match="in use"):
            open_disk(base)  # nobody may write a base while overlays use it
    assert sha(base) == before


def test_probe_by_content_not_name(tmp_path):
    q = tmp_path / "looks.raw"
    create_qcow2(q, size=MiB)
    r = raw_file(tmp_path / "looks.qcow2", MiB, {0: b"not qcow2"})
    assert probe_format(q) == "qcow2" and probe_format(r) == "raw"
    with open_disk(r) as image:
        assert image.format == "raw"


def test_raw_backing_named_raw_stays_raw_even_with_a_qcow2_header_inside(tmp_path):
    # A guest can write anything into its raw disk, including a qcow2 header;
    # the overlay says its backing format is raw, so it is not probed.
    base = raw_file(tmp_path / "base.raw", MiB, {0: b"plain"})
    top = tmp_path / "top.qcow2"
    create_overlay(top, base)  # records the backing format: raw
    inner = tmp_path / "inner.qcow2"
    create_qcow2(inner, size=MiB)
    base.write_bytes(inner.read_bytes().ljust(MiB, b"\0"))  # what a guest may have written
    with open_disk(top, readonly=True) as image:
        assert image.backing.format == "raw"
        assert image.read(0, 4) == b"QFI\xfb"


def test_set_backing_rewrites_the_reference(tmp_path):
    base = tmp_path / "base.qcow2"
    create_qcow2(base, size=SIZE)
    top = tmp_path / "top.qcow2"
    create_qcow2(top, backing="base.qcow2")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(top, moved / "top.qcow2")
    with pytest.raises(DiskError, match="backing file base.qcow2 not found"):
        open_disk(moved / "top.qcow2")
    set_backing(moved / "top.qcow2", str(base), "qcow2")
    assert_clean(moved / "top.qcow2")
    with open_disk(moved / "top.qcow2") as image:
        assert image.backing.path == str(base)


def test_small_clusters_grow_the_refcount_table(tmp_path):
    # 512-byte clusters: one refcount block covers 128 KiB and the first
    # refcount table only 8 MiB of file, so writing 12 MiB must grow it.
    img = tmp_path / "small.qcow2"
    create_qcow2(img, size=32 * MiB, cluster_size=512)
    data = pattern(12 * MiB, 9)
    with open_disk(img) as image:
        for off in range(0, len(data), MiB):
            image.write(off, data[off : off + MiB])
    assert_clean(img)
    assert to_raw(img, tmp_path / "small.raw")[: len(data)] == data


def test_overwrite_and_discard_reuse_space(tmp_path):
    img = tmp_path / "reuse.qcow2"
    create_qcow2(img, size=64 * MiB)
    with open_disk(img) as image:
        for _ in range(5):
            image.write(0, pattern(8 * MiB, 10))
            image.discard(0, 8 * MiB)
            image.flush()
    assert_clean(img)
    assert os.stat(img).st_size < 20 * MiB  # freed clusters were reused, not appended forever


def test_read_only_qcow2_refuses_writes_and_stays_unchanged(tmp_path):
    img = tmp_path / "ro.qcow2"
    create_qcow2(img, size=MiB)
    before = sha(img)
    with open_disk(img, readonly=True) as image:
        for op in (lambda: image.write(0, b"x" * 512), lambda: image.discard(0, 512), lambda: image.write_zeroes(0, 512)):
            with pytest.raises(DiskError, match="read-only"):
                op()
        image.flush()
    assert sha(img) == before


def test_info_works_on_an_image_in_use(tmp_path):
    base = tmp_path / "base.qcow2"
    create_qcow2(base, size=SIZE)
    top = tmp_path / "top.qcow2"
    create_overlay(top, base)
    with open_disk(top) as image:  # a running VM holds the exclusive lock
        image.write(0, b"x" * 4096)
        with pytest.raises(DiskError, match="in use"):
            open_disk(top, readonly=True)
        info = disk_info(top)
        assert [layer.path for layer in info.chain] == [str(top), str(base)]


def test_virtual_size_not_a_multiple_of_the_cluster_size(tmp_path):
    size = 10 * MiB + 3 * 512
    img = tmp_path / "odd.qcow2"
    qemu_img("create", "-f", "qcow2", img, size)
    shadow = bytearray(size)
    with open_disk(img) as image:
        assert image.size == size and image.sectors == size // 512
        for off, data in [(size - 1536, b"e" * 1536), (size - 70_000, b"f" * 1000), (10 * MiB - 512, b"g" * 2048)]:
            image.write(off, data)
            shadow[off : off + len(data)] = data
        image.write_zeroes(size - 1024, 1024)
        shadow[size - 1024 :] = bytes(1024)
        image.discard(10 * MiB - 65536, 65536 + 512)
        shadow[10 * MiB - 65536 : 10 * MiB + 512] = bytes(65536 + 512)
        assert image.read(0, size) == shadow
        with pytest.raises(DiskError, match="beyond the end"):
            image.read(size - 512, 1024)
    assert_clean(img)
    assert to_raw(img, tmp_path / "odd.raw") == bytes(shadow)

import gzip
import shutil
import stat
import subprocess

import pytest

from pocketvm.images.cpio import CpioWriter, read_newc


def sample_archive() -> bytes:
    w = CpioWriter(mtime=1234)
    w.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_char_device("dev/console", 5, 1)
    w.add_file("/etc/deep/nested/file.txt", b"abc")  # parents created on the fly
    w.add_dir("tmp", 0o1777)
    w.add_file("empty", b"")
    return w.finish()


def test_round_trip_preserves_entries():
    entries = {e.name: e for e in read_newc(sample_archive())}
    assert entries["bin/busybox"].is_file
    assert entries["bin/busybox"].data == b"\x7fELF" + bytes(range(256)) * 3
    assert stat.S_IMODE(entries["bin/busybox"].mode) == 0o755
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"busybox"
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert entries["etc/deep/nested/file.txt"].data == b"abc"
    assert stat.S_IMODE(entries["tmp"].mode) == 0o1777
    assert entries["empty"].data == b"" and entries["empty"].is_file
    assert all(e.mtime == 1234 for e in entries.values())


def test_parents_come_before_children():
    names = [e.name for e in read_newc(sample_archive())]
    for i, name in enumerate(names):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:i], f"{parent} must precede {name}"


def test_layout_is_newc_with_4_byte_alignment_and_trailer():
    data = sample_archive()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]
    # Every header starts on a 4-byte boundary.
    pos = 0
    for _ in read_newc(data):
        assert data[pos : pos + 6] == b"070701"
        namesize = int(data[pos + 94 : pos + 102], 16)
        filesize = int(data[pos + 54 : pos + 62], 16)
        pos += 110 + namesize
        pos += -pos % 4
        pos += filesize + (-filesize % 4)


def test_output_is_deterministic():
    assert sample_archive() == sample_archive()


def test_rejects_bad_paths_and_duplicates():
    w = CpioWriter()
    with pytest.raises(ValueError):
        w.add_file("../escape", b"")
    w.add_file("a", b"1")
    with pytest.raises(ValueError):
        w.add_file("a", b"2")
    with pytest.raises(ValueError):
        w.add_file("a/b", b"")  # "a" is a file, not a directory
    w.add_dir("d")
    w.add_dir("d")  # adding a directory twice is harmless


def test_reader_rejects_damaged_archives():
    data = sample_archive()
    with pytest.raises(ValueError):
        read_newc(data[:-200])
    with pytest.raises(ValueError):
        read_newc(b"070702" + data[6:])


@pytest.mark.skipif(not (shutil.which("cpio") or shutil.which("bsdcpio")), reason="no cpio tool installed")
def test_external_cpio_tool_lists_the_archive(tmp_path):
    tool = shutil.which("cpio") or shutil.which("bsdcpio")
    out = subprocess.run([tool, "-t"], input=sample_archive(), capture_output=True, check=True)
    listed = set(out.stdout.decode().split())
    assert {"bin/busybox", "bin/sh", "dev/console", "etc/deep/nested/file.txt", "empty"} <= listed


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip tool")
def test_gzip_tool_accepts_compressed_archive(tmp_path):
    path = tmp_path / "a.cpio.gz"
    path.write_bytes(gzip.compress(sample_archive(), mtime=0))
    subprocess.run(["gzip", "-t", str(path)], check=True)

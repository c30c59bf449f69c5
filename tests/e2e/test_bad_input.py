"""Bad input: one line on stderr, a non-zero exit, never a traceback or a hang."""

from __future__ import annotations

import os

import pytest
from e2etools import pocket


def _assert_one_line_error(run, *needles: str) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("pocket: error:"), run.stderr
    for needle in needles:
        assert needle in lines[0], run.stderr


@pytest.fixture
def files(tmp_path, guest_image):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\0" * 1000)
    return {"junk": str(junk), "odd": str(odd), "tmp": str(tmp_path), "image": guest_image}


def test_missing_kernel(files):
    _assert_one_line_error(pocket("run", "--kernel", files["tmp"] + "/nope"), "no such file")


def test_corrupt_kernel(files):
    img = files["image"]
    run = pocket("run", "--kernel", files["junk"], "--bios", str(img.bios), "--initrd", str(img.initrd))
    _assert_one_line_error(run, "kernel")


def test_corrupt_bare_metal_program(files):
    # Not an ELF: loaded as a raw binary would be legal, so use a truncated ELF header.
    path = files["tmp"] + "/trunc.elf"
    with open(path, "wb") as f:
        f.write(b"\x7fELF\x02\x01\x01" + bytes(9))
    _assert_one_line_error(pocket("run", "--bios", "none", "--kernel", path))


def test_missing_initrd(files):
    _assert_one_line_error(pocket("run", "--initrd", files["tmp"] + "/nope"), "initrd", "no such file")


def test_corrupt_initrd(files):
    _assert_one_line_error(pocket("run", "--initrd", files["junk"]), "initrd", "not an initramfs")


def test_missing_disk(files):
    _assert_one_line_error(pocket("run", "--disk", files["tmp"] + "/nope.img"), "disk", "no such file")


def test_disk_size_not_sectors(files):
    _assert_one_line_error(pocket("run", "--disk", files["odd"]), "512")


def test_disk_is_a_directory(files):
    _assert_one_line_error(pocket("run", "--disk", files["tmp"]), "disk")


def test_unknown_disk_option(files):
    _assert_one_line_error(pocket("run", "--disk", files["odd"] + ",bogus"), "bogus")


@pytest.mark.parametrize("size", ["8M", "1K", "0"])
def test_memory_too_small(size):
    _assert_one_line_error(pocket("run", "--memory", size), "memory")


@pytest.mark.parametrize("size", ["abc", "12Q", "-5M", ""])
def test_memory_malformed(size):
    _assert_one_line_error(pocket("run", "--memory", size), "memory")


@pytest.mark.parametrize("size", ["abc", "1K", "1G", "100000"])
def test_upload_window_malformed_or_out_of_range(size):
    _assert_one_line_error(pocket("run", "--upload-window", size), "--upload-window")


def test_unknown_option():
    _assert_one_line_error(pocket("run", "--frobnicate"), "--frobnicate")


def test_bad_cpu_count():
    _assert_one_line_error(pocket("run", "--cpus", "0"), "cpus")


def test_help_explains_run():
    run = pocket("run", "--help")
    assert run.returncode == 0
    for option in ("--memory", "--cpus", "--kernel", "--initrd", "--bios", "--append", "--disk", "Ctrl-A x"):
        assert option in run.stdout

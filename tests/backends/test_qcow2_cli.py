"""`pocket disk create | info | convert`, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from qcow2tools import MiB, assert_clean, need, qemu_img


def pocket(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketvm", *map(str, args)], capture_output=True, text=True, timeout=60)


def one_line_error(run: subprocess.CompletedProcess, needle: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pocket: error: "), run.stderr
    assert needle in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture(autouse=True)
def _tools():
    need("qemu-img")


def test_create_info_and_overlay(tmp_path):
    base = tmp_path / "base.qcow2"
    run = pocket("disk", "create", "--size", "4G", base)
    assert run.returncode == 0, run.stderr
    assert_clean(base)
    over = tmp_path / "over.qcow2"
    run = pocket("disk", "create", "--backing", base, over)  # size from the backing file
    assert run.returncode == 0, run.stderr
    info = json.loads(qemu_img("info", "--output=json", over).stdout)
    assert info["virtual-size"] == 4 << 30 and info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    run = pocket("disk", "info", over)
    assert run.returncode == 0, run.stderr
    assert "format: qcow2" in run.stdout and "virtual size: 4 GiB (4294967296 bytes)" in run.stdout
    assert f"backing file: {base} (qcow2)" in run.stdout and "backed by:" in run.stdout
    data = json.loads(pocket("disk", "info", "--json", over).stdout)
    assert [layer["path"] for layer in data["chain"]] == [str(over), str(base)]
    assert data["chain"][0]["allocated"] < 1 * MiB


def test_info_on_raw_and_convert(tmp_path):
    raw = tmp_path / "fs.img"
    with open(raw, "wb") as f:
        f.truncate(32 * MiB)
        f.write(b"superblock")
    run = pocket("disk", "info", raw)
    assert run.returncode == 0 and "format: raw" in run.stdout
    out = tmp_path / "fs.qcow2"
    run = pocket("disk", "convert", raw, out)
    assert run.returncode == 0, run.stderr
    assert_clean(out)
    qemu_img("compare", out, raw)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["disk", "create", "{tmp}/x.qcow2"], "give --size, --backing or both"),
        (["disk", "create", "--size", "1Q", "{tmp}/x.qcow2"], "is not a size"),
        (["disk", "create", "--size", "1G", "--backing", "{tmp}/none.qcow2", "{tmp}/x.qcow2"], "not found"),
        (["disk", "create", "--size", "1G", "{tmp}/exists"], "already exists"),
        (["disk", "create", "--size", "1G", "{tmp}/no/such/dir/x.qcow2"], "cannot create"),
        (["disk", "info", "{tmp}/none.qcow2"], "not found"),
        (["disk", "info", "{tmp}/corrupt.qcow2"], "corrupt qcow2 image"),
        (["disk", "convert", "{tmp}/none.img", "{tmp}/y.qcow2"], "not found"),
        (["disk", "convert", "{tmp}/exists", "{tmp}/exists"], "already exists"),
    ],
)
def test_errors_are_one_line(tmp_path, args, needle):
    (tmp_path / "exists").write_bytes(bytes(4096))
    good = tmp_path / "good.qcow2"
    assert pocket("disk", "create", "--size", "1M", good).returncode == 0
    bad = bytearray(good.read_bytes())
    bad[40:48] = (1 << 40).to_bytes(8, "big")  # L1 table far past the end
    (tmp_path / "corrupt.qcow2").write_bytes(bytes(bad))
    one_line_error(pocket(*[a.format(tmp=tmp_path) for a in args]), needle)
    assert not (tmp_path / "x.qcow2").exists()


def test_help_texts():
    run = pocket("disk", "--help")
    assert run.returncode == 0 and "create" in run.stdout and "info" in run.stdout and "convert" in run.stdout
    run = pocket("disk", "create", "--help")
    assert "--backing FILE" in run.stdout and "--size SIZE" in run.stdout
    assert "disk" in pocket("--help").stdout

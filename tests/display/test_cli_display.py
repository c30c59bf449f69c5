"""`pocket run --display ...`: bad values are one-line errors, before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest


def pocket(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketvm", *args], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,needle", [
    (["--display", "sdl"], "--display 'sdl'"),
    (["--display", "vnc:99999"], "--display 'vnc:99999'"),
    (["--display", "web", "--display-size", "10x10"], "between 64 and 8192"),
    (["--display", "web", "--display-size", "big"], "WIDTHxHEIGHT"),
])  # fmt: skip
def test_bad_display_options(args, needle, tmp_path):
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(b"\x6f\x00\x00\x00")  # a bare-metal loop that never runs
    run = pocket("run", "--bios", "none", "--kernel", str(kernel), *args)
    err = run.stderr.decode()
    assert run.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pocket: error: ") and needle in lines[0], err

"""Helpers for the qcow2 tests: qemu-img/qemu-io as the reference, raw shadows."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

MiB = 1 << 20


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package qemu-utils)")
    return path


def qemu_img(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    need("qemu-img")
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True, check=check, timeout=120)


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    need("qemu-io")
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    subprocess.run([*args, str(image)], capture_output=True, text=True, check=True, timeout=120)


def check(image: Path) -> dict:
    """`qemu-img check` as JSON (returncode 0: clean, 3: leaks only)."""
    run = qemu_img("check", "--output=json", image, check=False)
    assert run.returncode in (0, 3), run.stdout + run.stderr
    return json.loads(run.stdout)


def assert_clean(image: Path) -> None:
    result = check(image)
    assert result.get("corruptions", 0) == 0 and result.get("leaks", 0) == 0, result
    assert result.get("check-errors", 0) == 0, result


def to_raw(image: Path, out: Path) -> bytes:
    qemu_img("convert", "-O", "raw", image, out)
    return out.read_bytes()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pattern(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])

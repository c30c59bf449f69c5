"""Fixtures of the Debian system tests: the image is built once (and cached
in ~/.cache/pocketvm across runs, so CI builds it once per machine)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from snaptools import isolated_xdg_dirs

BUILD_TIMEOUT = 3 * 3600


@pytest.fixture(scope="session")
def debian_image():
    """The `pocket image build debian` result, with its template."""
    from pocketvm.images.debian import load

    image = load("debian")
    if image is None or image.template is None:
        proc = subprocess.run([sys.executable, "-m", "pocketvm", "image", "build", "debian", "-q"],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        image = load("debian")
    assert image is not None and image.template is not None
    return image


@pytest.fixture(scope="module", autouse=True)
def isolated_dirs(tmp_path_factory):
    yield from isolated_xdg_dirs(tmp_path_factory, pytest.MonkeyPatch.context)

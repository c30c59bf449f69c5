"""Fixtures shared by more than one test directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The bare-metal ticker program and its build live with the snapshot tests.
sys.path.insert(0, str(Path(__file__).resolve().parent / "snapshot"))

from snaptools import build_ticker  # noqa: E402


@pytest.fixture(scope="session")
def ticker(tmp_path_factory) -> Path:
    """40 rounds, 2 ms apart, then power off."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker.elf", 40, 20_000)


@pytest.fixture(scope="session")
def ticker_forever(tmp_path_factory) -> Path:
    """A round every 20 ms until input 'q'."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker-forever.elf", 1_000_000, 200_000)

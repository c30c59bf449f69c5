"""Fixtures of the snapshot tests (helpers live in snaptools.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from snaptools import build_ticker


@pytest.fixture(scope="session")
def ticker(tmp_path_factory) -> Path:
    """40 rounds, 2 ms apart, then power off."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker.elf", 40, 20_000)


@pytest.fixture(scope="session")
def ticker_forever(tmp_path_factory) -> Path:
    """A round every 20 ms until input 'q'."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker-forever.elf", 1_000_000, 200_000)


@pytest.fixture(scope="module", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Own control-socket and disk-copy directories for each test module, for
    this process and the `pocket` processes it starts (module-wide, so a VM
    started by a module fixture and the tests talking to it agree)."""
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        yield base

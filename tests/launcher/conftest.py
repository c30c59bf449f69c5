"""Fixtures of the launcher tests: a private runtime directory with a
launcher in it, and the snapshot tests' bare-metal ticker program."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "snapshot"))

from snaptools import build_ticker, pocket  # noqa: E402


@pytest.fixture(scope="session")
def ticker(tmp_path_factory) -> Path:
    """40 rounds, 2 ms apart, then power off."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker.elf", 40, 20_000)


@pytest.fixture(scope="session")
def ticker_forever(tmp_path_factory) -> Path:
    """A round every 20 ms until input 'q'."""
    return build_ticker(tmp_path_factory.mktemp("guest") / "ticker-forever.elf", 1_000_000, 200_000)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """Own runtime and state directories for the module and the `pocket`
    processes it starts (no launcher or VM of anyone else is seen)."""
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        mp.delenv("POCKETVM_LAUNCHER", raising=False)
        yield base / "run" / "pocketvm"


@pytest.fixture(scope="module")
def launcher(runtime):
    """A launcher running in the module's runtime directory."""
    run = pocket("launcher", "start", timeout=600)
    assert run.returncode == 0, run.stderr
    yield runtime
    pocket("launcher", "stop")

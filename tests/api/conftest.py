"""Fixtures of the Python API tests: private runtime/state directories and a
snapshot of the bare-metal ticker to make sandboxes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from snaptools import Pocket, pocket


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        mp.setenv("POCKETVM_LAUNCHER", "off")
        yield base


@pytest.fixture(scope="module")
def ticker_snapshot(runtime, ticker_forever) -> Path:
    snap = runtime / "ticker-snap"
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "snapsrc") as p:
        p.wait_for("round 0000000000000002", 120)
        run = pocket("snapshot", "snapsrc", str(snap), "--stop")
        assert run.returncode == 0, run.stderr
        p.wait(30)
    return snap


"""Fixtures of the manager tests: private runtime/state directories, a
snapshot of the bare-metal ticker to make VMs from (a restore, no kernel
boot), and `pocket serve` processes (servetools.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from servetools import Server
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
    """A snapshot of the endless ticker (a round every 20 ms), with one network card."""
    snap = runtime / "ticker-snap"
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "snapsrc", "--nic", "user") as p:
        p.wait_for("round 0000000000000002", 120)
        run = pocket("snapshot", "snapsrc", str(snap), "--stop")
        assert run.returncode == 0, run.stderr
        p.wait(30)
    return snap


@pytest.fixture
def server(runtime, tmp_path):
    s = Server(tmp_path / "home", "--max-vms", "3")
    yield s
    s.stop()
    assert "Traceback" not in s.log, s.log



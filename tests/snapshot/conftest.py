"""Fixtures of the snapshot tests (helpers live in snaptools.py)."""

from __future__ import annotations


import pytest


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

"""Fixtures of the launcher tests: a private runtime directory with a
launcher in it. (The ticker programs come from tests/conftest.py.)"""

from __future__ import annotations

import pytest
from snaptools import pocket


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """Own runtime and state directories for the module and the `pocket`
    processes it starts (no launcher or VM of anyone else is seen); the
    module's launcher is stopped at its end."""
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        mp.delenv("POCKETVM_LAUNCHER", raising=False)
        yield base / "run" / "pocketvm"
        pocket("launcher", "stop")


@pytest.fixture
def launcher(runtime):
    """A launcher running in the module's runtime directory (started unless one runs)."""
    run = pocket("launcher", "start", timeout=600)
    assert run.returncode == 0, run.stderr
    return runtime

"""The core also runs interpreted (NUMBA_DISABLE_JIT=1), for debugging.

A few short programs (compressed instructions, atomics, Sv39/Sv48 paging)
run through the plain-Python core with warnings as errors and must print
exactly what the compiled core prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import guest_harness as harness
import pytest


@pytest.mark.parametrize("name", ["rvc", "amo", "vm"])
def test_interpreted_core_matches_compiled(name: str, guest_program: Path) -> None:
    compiled = harness.run_pocketvm(guest_program)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "pocketvm", "run", "--bios", "none", "--kernel", str(guest_program)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == compiled.exit_code, proc.stderr.decode(errors="replace")[-2000:]
    assert proc.stdout == compiled.output

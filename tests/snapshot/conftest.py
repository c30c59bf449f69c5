"""Fixtures of the snapshot tests (helpers live in snaptools.py)."""

from __future__ import annotations

import pytest
from snaptools import isolated_xdg_dirs


@pytest.fixture(scope="module", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Module-wide, so a VM started by a module fixture and the tests talking to it agree."""
    yield from isolated_xdg_dirs(tmp_path_factory, pytest.MonkeyPatch.context)

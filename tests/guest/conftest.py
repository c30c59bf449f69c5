"""Fixtures of the guest-program suite (see README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# harness.py is imported under a private name (guest_harness) so that a
# module called `harness` in another test folder cannot shadow it; the test
# modules here import `guest_harness`.
if "guest_harness" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("guest_harness", Path(__file__).with_name("harness.py"))
    assert _spec is not None and _spec.loader is not None
    _harness = importlib.util.module_from_spec(_spec)
    sys.modules["guest_harness"] = _harness
    _spec.loader.exec_module(_harness)

import guest_harness  # noqa: E402


@pytest.fixture
def guest_program(request: pytest.FixtureRequest) -> Path:
    """The ELF of the program named by the test's `name` parameter, built
    (incrementally) on demand, so a program that fails to compile fails
    only its own tests."""
    name = request.node.callspec.params["name"]
    return guest_harness.build.build_all([name])[name]

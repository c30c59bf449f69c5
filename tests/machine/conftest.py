"""Shared by the run-loop tests: a guard that ends a hung run."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest


@contextmanager
def _guarded(console: Any, seconds: float) -> Iterator[None]:
    """Sets `console.quit_requested` if the block runs longer than `seconds`:
    a run that hangs then returns "quit" and the test fails instead of
    stalling the suite."""
    guard = threading.Timer(seconds, lambda: setattr(console, "quit_requested", True))
    guard.start()
    try:
        yield
    finally:
        guard.cancel()
        guard.join()  # not left to end during a later test that counts threads


@pytest.fixture
def hang_guard() -> Callable[[Any, float], AbstractContextManager[None]]:
    return _guarded

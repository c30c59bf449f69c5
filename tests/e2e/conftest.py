"""Fixtures of the end-to-end tests (helpers live in e2etools.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def guest_image():
    """The default Debian guest, pulled once (it is cached across runs)."""
    from pocketvm.images import load_default_image, pull_default_image

    return load_default_image() or pull_default_image(quiet=True)

"""A sandbox created with a display: its page's URL is in its description, behind the given token."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pocketvm.manager.spec import SpecError, parse


def test_display_in_the_spec():
    assert parse({"image": "busybox", "display": True}).display == "1024x768"
    assert parse({"image": "busybox", "display": "800x600"}).display == "800x600"
    assert parse({"snapshot": "/x", "display": True}).display == ""  # the snapshot's own screen
    assert parse({"image": "busybox"}).display is None
    for bad in ({"image": "busybox", "display": "huge"}, {"snapshot": "/x", "display": "800x600"},
                {"image": "busybox", "display": 3}):  # fmt: skip
        with pytest.raises(SpecError):
            parse(bad)


@pytest.mark.slow
def test_sandbox_with_a_display(tmp_path, monkeypatch):
    from pocketvm.images import load_default_image
    from pocketvm.manager.core import Manager
    from pocketvm.web import server as web_server
    from pocketvm.web.attach import TOKEN_ENV

    if load_default_image() is None:
        pytest.skip("no guest image")
    try:
        web_server.find_novnc()
    except web_server.DisplayServerError as e:
        pytest.skip(str(e))
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    token = "manager-token-0123456789abcdef"
    monkeypatch.setenv(TOKEN_ENV, token)  # what `pocket serve` sets from its bearer token
    manager = Manager(tmp_path / "home", use_launcher=False, persist=False)
    try:
        vm = manager.create(parse({"image": "busybox", "display": "800x600", "name": "shown"}))
        url = manager.describe(manager._get(vm["name"]))["display"]
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/{token}/")

        async def fetch() -> tuple[int, int]:
            async with aiohttp.ClientSession() as s:
                async with s.get(url) as page, s.get(url.replace(token, "x" * len(token))) as wrong:
                    return page.status, wrong.status

        assert asyncio.run(fetch()) == (200, 404)
    finally:
        manager.close()

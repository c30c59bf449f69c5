"""The web display server: token, page and files, RFB and the serial console over WebSockets."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import numpy as np
import pytest

from pocketvm.backends.display.screen import Rect, Screen
from pocketvm.console import CapturedConsole
from pocketvm.web import server as web_server
from pocketvm.web.attach import DisplayOptionError, parse_display, parse_size
from pocketvm.web.console_tap import HISTORY, SharedConsole
from pocketvm.web.server import DisplayServer, DisplayTargets


@pytest.fixture
def site():
    try:
        web_server.find_novnc()
    except web_server.DisplayServerError as e:
        pytest.skip(str(e))
    screen = Screen(32, 16)
    screen.update(Rect(0, 0, 32, 16), np.full((16, 32, 4), 0x80, np.uint8))
    console = SharedConsole(CapturedConsole())
    server = DisplayServer(DisplayTargets(screen, None, None, console, "web-vm"), web=True)
    server.start()
    yield server, console, screen
    server.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_the_token_guards_every_url(site):
    server, _, _ = site
    assert server.url.startswith("http://127.0.0.1:") and server.token in server.url
    root = server.url.removesuffix(f"{server.token}/")

    async def go():
        async with aiohttp.ClientSession() as s:
            codes = {}
            for path in ("", "x/", "static/page.js", "novnc/core/rfb.js", "rfb", "console", f"{server.token[:-1]}/"):
                async with s.get(root + path) as r:
                    codes[path] = r.status
            async with s.get(server.url) as r:
                page = (r.status, r.headers["Content-Type"], await r.text())
            async with s.get(server.url + "static/page.js") as r:
                js = (r.status, r.headers["Content-Type"])
            async with s.get(server.url + "novnc/core/rfb.js") as r:
                novnc = (r.status, r.headers["Content-Type"])
            async with s.get(server.url + "static/../server.py") as r:
                escape = r.status
            return codes, page, js, novnc, escape

    codes, page, js, novnc, escape = run(go())
    assert set(codes.values()) == {404}
    assert page[0] == 200 and page[1].startswith("text/html") and "page.js" in page[2]
    assert js == (200, "application/javascript") and novnc == (200, "application/javascript")
    assert escape == 404


def test_rfb_over_websocket(site):
    server, _, screen = site

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(server.url.replace("http", "ws") + "rfb", protocols=("binary",)) as ws:
                assert ws.protocol == "binary"
                buf = bytearray()

                async def read(n):
                    while len(buf) < n:
                        buf.extend((await ws.receive()).data)
                    out = bytes(buf[:n])
                    del buf[:n]
                    return out

                assert await read(12) == b"RFB 003.008\n"
                await ws.send_bytes(b"RFB 003.008\n")
                assert await read(2) == b"\x01\x01"
                await ws.send_bytes(b"\x01")
                assert await read(4) == bytes(4)
                await ws.send_bytes(b"\x01")
                init = await read(24)
                assert struct.unpack(">HH", init[:4]) == (32, 16)
                await read(struct.unpack(">I", init[20:])[0])
                await ws.send_bytes(struct.pack(">BBHHHH", 3, 0, 0, 0, 32, 16))
                head = await read(4 + 12)
                assert struct.unpack(">HHHHi", head[4:]) == (0, 0, 32, 16, 0)
                raw = await read(32 * 16 * 4)
                assert set(raw[i] for i in range(0, len(raw), 4)) == {0x80}

    run(go())


def test_console_over_websocket(site):
    server, console, _ = site
    console.write(b"boot messages\r\n")

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(server.url.replace("http", "ws") + "console") as ws:
                state = json.loads((await ws.receive()).data)
                assert state == {"name": "web-vm", "running": True, "stopped": None}
                assert (await ws.receive()).data == b"boot messages\r\n"  # the history
                await ws.send_bytes(b"uname -m\r")
                for _ in range(2000):  # the server's thread feeds it
                    if console.has_input():
                        break
                    await asyncio.sleep(0.01)
                assert console.take() == b"uname -m\r"
                console.write(b"riscv64\r\n")  # the guest answers
                assert (await ws.receive()).data == b"riscv64\r\n"
                server.vm_stopped("poweroff")
                state = json.loads((await ws.receive()).data)
                assert state["running"] is False and state["stopped"] == "poweroff"

    run(go())


def test_a_given_token(site):
    server, _, screen = site
    own = DisplayServer(DisplayTargets(screen, None, None, None, "x"), web=True, token="T" * 16 + "-_x")
    own.start()
    try:
        assert own.url.endswith("/" + "T" * 16 + "-_x/")
    finally:
        own.close()
    for bad in ("short", "has/slash-and-is-long-enough", "x" * 200):
        with pytest.raises(web_server.DisplayServerError):
            DisplayServer(DisplayTargets(screen, None, None, None, "x"), token=bad)


def test_console_history_is_bounded():
    console = SharedConsole(CapturedConsole())
    for _ in range(10):
        console.write(b"x" * HISTORY)
    assert len(console.subscribe(lambda d: None)) == HISTORY


def test_display_options():
    assert parse_display("web").kind == "web"
    assert parse_display("vnc:5901").port == 5901
    assert parse_display("NONE").kind == "none"
    both = parse_display("web,vnc:5902")
    assert both.web and both.vnc and both.port == 5902 and both.kind == "web,vnc"
    assert parse_display("vnc,web") == parse_display("web,vnc")
    assert not parse_display("web").vnc and not parse_display("vnc").web
    assert parse_size("800x600") == (800, 600)
    for bad in ("vnc:0", "vnc:70000", "sdl", "", "web,web", "none,web", "vnc,vnc:5900"):
        with pytest.raises(DisplayOptionError):
            parse_display(bad)
    for bad in ("800", "0x600", "100000x10", "axb"):
        with pytest.raises(DisplayOptionError):
            parse_size(bad)

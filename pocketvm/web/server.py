"""The display server of one VM: a web page (noVNC + xterm.js) and/or a VNC port.

Everything runs on one asyncio loop in a daemon thread, started by
`DisplayServer.start()`; the VM's thread only wakes it (the screen, the
console listeners, `vm_stopped()`), so an idle VM and an idle page cost no
CPU.

The page lives at http://127.0.0.1:PORT/TOKEN/ and every other URL it
uses is under /TOKEN/: the token (random, 128 bits) is the only access
check, compared in constant time. Under it:

    /TOKEN/               the page (static/index.html)
    /TOKEN/static/...     its script, styles and xterm.js (shipped in pocketvm)
    /TOKEN/novnc/...      noVNC, from the system's noVNC package
    /TOKEN/rfb            WebSocket: the RFB protocol (pocketvm.backends.display.rfb)
    /TOKEN/console        WebSocket: the serial console (binary frames both ways)
                          and the VM's state (JSON text frames)

The VNC port (`vnc=`) speaks plain RFB to any viewer, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketvm.backends.display import rfb
from pocketvm.backends.display.screen import Screen
from pocketvm.web.console_tap import SharedConsole

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).parent / "static"
NOVNC_DIRS = (Path("/usr/share/novnc"),)
MAX_WS_MESSAGE = 1 << 20
CONSOLE_QUEUE = 4096  # console output chunks waiting for a slow page


class DisplayServerError(Exception):
    """The display server cannot start (one-line message for the user)."""


def find_novnc() -> Path:
    env = os.environ.get("POCKETVM_NOVNC")
    for d in ([Path(env)] if env else []) + list(NOVNC_DIRS):
        if (d / "core" / "rfb.js").is_file():
            return d
    raise DisplayServerError("the web display needs noVNC: install the Debian package 'novnc' (or set POCKETVM_NOVNC)")


@dataclass
class DisplayTargets:
    """What a display server shows and drives."""

    screen: Screen
    keyboard: rfb.InputSink | None
    tablet: rfb.InputSink | None
    console: SharedConsole | None
    name: str


class _WsStream:
    """An RFB byte stream over a WebSocket's binary messages."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.buf = bytearray()
        self.out = bytearray()

    async def readexactly(self, n: int) -> bytes:
        from aiohttp import WSMsgType

        while len(self.buf) < n:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                self.buf += msg.data
            elif msg.type == WSMsgType.TEXT:
                self.buf += msg.data.encode("latin-1", "replace")
            else:
                raise asyncio.IncompleteReadError(bytes(self.buf), n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        # One WebSocket message per drain: a whole framebuffer update.
        data, self.out = bytes(self.out), bytearray()
        if data:
            await self.ws.send_bytes(data)


class DisplayServer:
    def __init__(self, targets: DisplayTargets, web: bool = True, vnc_port: int | None = None, web_port: int = 0,
                 token: str | None = None):
        """`token`: the secret in the page's URL (default: a new random one)."""
        if token is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", token):
            raise DisplayServerError("a display token must be 16 to 128 characters of A-Z, a-z, 0-9, '_' or '-'")
        self.targets = targets
        self.web = web
        self.vnc_port = vnc_port
        self.web_port = web_port
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.url: str | None = None
        self.vnc_address: tuple[str, int] | None = None
        self.stopped: str | None = None  # why the VM stopped, once it has
        self._novnc = find_novnc() if web else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._state_sockets: set[Any] = set()
        self._shutdown: asyncio.Event | None = None
        self.sessions: list[rfb.RfbSession] = []

    # --- lifecycle (VM thread) ------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="display-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise DisplayServerError(f"cannot start the display server: {self._error}")

    def addresses(self) -> list[str]:
        """Where to look: the page's URL, the VNC address."""
        out = [self.url] if self.url else []
        if self.vnc_address is not None:
            out.append("VNC on {}:{}".format(*self.vnc_address))
        return out

    def vm_stopped(self, reason: str) -> None:
        """Tell every page that the VM has stopped (thread-safe)."""
        self.stopped = reason
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._announce_state)

    def close(self) -> None:
        if self._loop is not None and self._shutdown is not None:
            self._loop.call_soon_threadsafe(self._shutdown.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the loop ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start() if it happens before ready
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        runner = None
        vnc = None
        t = self.targets
        try:
            if self.vnc_port is not None:
                vnc = await rfb.serve_tcp(HOST, self.vnc_port, t.screen, t.keyboard, t.tablet, t.name)
                self.vnc_address = vnc.sockets[0].getsockname()[:2]
            if self.web:
                runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, HOST, self.web_port)
                await site.start()
                port = runner.addresses[0][1]
                self.url = f"http://{HOST}:{port}/{self.token}/"
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._shutdown.wait()
        finally:
            for ws in list(self._state_sockets):
                await ws.close()
            if runner is not None:
                await runner.cleanup()
            if vnc is not None:
                vnc.close()

    def _app(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def check_token(request: Any, handler: Any) -> Any:
            if not self._token_ok(request.path):
                raise web.HTTPNotFound()
            response = await handler(request)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        app = web.Application(middlewares=[check_token])
        prefix = f"/{self.token}"
        app.router.add_get(f"{prefix}/", self._index)
        app.router.add_get(f"{prefix}/rfb", self._rfb)
        app.router.add_get(f"{prefix}/console", self._console)
        app.router.add_static(f"{prefix}/static/", STATIC_DIR, follow_symlinks=False)
        assert self._novnc is not None
        # Debian's noVNC links some of its files to other packages' directories.
        app.router.add_static(f"{prefix}/novnc/", self._novnc, follow_symlinks=True)
        return app

    def _token_ok(self, path: str) -> bool:
        first = path.lstrip("/").split("/", 1)[0]
        return hmac.compare_digest(first.encode(), self.token.encode())

    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _rfb(self, request: Any) -> Any:
        from aiohttp import web

        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        t = self.targets
        session = rfb.RfbSession(_WsStream(ws), t.screen, t.keyboard, t.tablet, t.name)
        self.sessions.append(session)
        try:
            await session.run()
        except (asyncio.IncompleteReadError, ConnectionError, rfb.ProtocolError) as e:
            log.info("web viewer left: %s", e or type(e).__name__)
        finally:
            self.sessions.remove(session)
            await ws.close()
        return ws

    async def _console(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        # Bounded: a page that stops reading loses output rather than
        # making the monitor hold all of it.
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=CONSOLE_QUEUE)

        def put(data: bytes) -> None:
            if not queue.full():
                queue.put_nowait(data)
        console = self.targets.console

        def listener(data: bytes) -> None:  # on the VM's thread
            loop.call_soon_threadsafe(put, data)

        self._state_sockets.add(ws)
        await ws.send_str(json.dumps(self._state()))
        sender = None
        if console is not None:
            history = console.subscribe(listener)
            if history:
                await ws.send_bytes(history)

            async def send() -> None:
                while True:
                    data = await queue.get()
                    while not queue.empty() and len(data) < 65536:
                        data += queue.get_nowait()
                    await ws.send_bytes(data)

            sender = asyncio.create_task(send())
        try:
            async for msg in ws:
                if console is None or self.stopped is not None:
                    continue
                if msg.type == WSMsgType.BINARY:
                    console.feed(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    console.feed(msg.data.encode())
        finally:
            self._state_sockets.discard(ws)
            if sender is not None:
                sender.cancel()
            if console is not None:
                console.unsubscribe(listener)
        return ws

    def _state(self) -> dict[str, Any]:
        return {"name": self.targets.name, "running": self.stopped is None, "stopped": self.stopped}

    def _announce_state(self) -> None:
        message = json.dumps(self._state())
        for ws in list(self._state_sockets):
            asyncio.ensure_future(ws.send_str(message))

"""`pocket serve`: the manager over HTTP (aiohttp).

Every route but `GET /openapi.json` needs `Authorization: Bearer TOKEN`.
Answers are JSON; every error is `{"error": "one line"}` with a fitting
status (400 bad request, 401 token, 404 unknown VM or route, 409 the VM's
state forbids it, 429 too many VMs, 503 no guest agent, 500 a bug, logged
here and never sent as a traceback).

Exec streams its output as chunked HTTP in NDJSON (`application/x-ndjson`):
one JSON object per line as the command writes,

    {"type": "stdout", "data": "<base64>"}   {"type": "stderr", "data": "<base64>"}
    {"type": "exit", "exit_code": 0, "signal": null}        always last, or
    {"type": "error", "kind": "timeout" | "gone" | ..., "error": "one line"}

and with `"stream": false` one JSON answer {stdout, stderr, exit_code}.
Files go as raw bytes: `GET|PUT /vms/{name}/files?path=/abs/path`.

The manager's calls block (a create waits for the VM to answer), so they
run in a thread pool; guest channels too.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from pocketvm.manager import channel as C
from pocketvm.manager.core import Manager, ManagerError
from pocketvm.manager.openapi import document
from pocketvm.manager.spec import SpecError, parse

log = logging.getLogger(__name__)

MAX_JSON = 1 << 20
TOKEN_ENV = "POCKETVM_TOKEN"
_GUEST_STATUS = {C.AgentUnavailable: 503, C.SandboxGone: 404, C.CommandTimeout: 504,
                 C.GuestFileError: 400, C.AgentProtocolError: 502}  # fmt: skip
_MANAGER = web.AppKey("manager", Manager)
_POOL = web.AppKey("pool", ThreadPoolExecutor)
_TOKEN = web.AppKey("token", str)


def error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pocketvm"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def guest_status(e: C.GuestError) -> int:
    for cls, status in _GUEST_STATUS.items():
        if isinstance(e, cls):
            return status
    return 502


@web.middleware
async def errors_and_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    if request.path != "/openapi.json":
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), request.app[_TOKEN].encode()):
            return error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: f"no route {request.method} {request.path} (see /openapi.json)",
                  405: f"method {request.method} not allowed on {request.path}"}.get(e.status, e.reason)  # fmt: skip
        return error(e.status, reason)
    except SpecError as e:
        return error(400, str(e))
    except ManagerError as e:
        return error(e.status, str(e))
    except C.GuestError as e:
        return error(guest_status(e), str(e))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        return error(500, "internal error (see the server's log)")


async def _json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise ManagerError(f"request body larger than {MAX_JSON} bytes", 413)
    raw = await request.content.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise ManagerError(f"request body larger than {MAX_JSON} bytes", 413)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ManagerError(f"request body is not valid JSON: {e}", 400) from None


async def _call(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app[_POOL], fn, *args)


def _name(request: web.Request) -> str:
    return request.match_info["name"]


# --- VMs ---------------------------------------------------------------------------------
async def create_vm(request: web.Request) -> web.Response:
    spec = parse(await _json(request))
    return web.json_response(await _call(request, request.app[_MANAGER].create, spec), status=201)


async def list_vms(request: web.Request) -> web.Response:
    return web.json_response({"vms": await _call(request, request.app[_MANAGER].list)})


async def get_vm(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, request.app[_MANAGER].get, _name(request)))


async def delete_vm(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, request.app[_MANAGER].delete, _name(request)))


async def pause_vm(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, request.app[_MANAGER].pause, _name(request)))


async def resume_vm(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, request.app[_MANAGER].resume, _name(request)))


async def snapshot_vm(request: web.Request) -> web.Response:
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("dir"), str):
        raise ManagerError('give {"dir": "/absolute/new/directory"}', 400)
    return web.json_response(await _call(request, request.app[_MANAGER].snapshot, _name(request), body["dir"]))


async def vm_metrics(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, request.app[_MANAGER].metrics, _name(request)))


async def health(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    return web.json_response({"ok": True, "vms": len(manager.list()), "max_vms": manager.max_vms,
                              "limits": manager.cgroups.mechanism, "pid": os.getpid()})  # fmt: skip


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


# --- inside a VM -------------------------------------------------------------------------
def _exec_request(body: Any, env: dict[str, str]) -> tuple[C.ExecRequest, bool]:
    if not isinstance(body, dict):
        raise ManagerError("the request body must be a JSON object", 400)
    command = body.get("command")
    if isinstance(command, list):
        if not command or not all(isinstance(a, str) for a in command):
            raise ManagerError("command: a non-empty list of strings, or a shell string", 400)
    elif not isinstance(command, str) or not command:
        raise ManagerError("command: a non-empty list of strings, or a shell string", 400)
    extra_env = body.get("env") or {}
    if not isinstance(extra_env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra_env.items()):
        raise ManagerError("env must be an object of strings", 400)
    timeout = body.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise ManagerError("timeout must be a positive number of seconds", 400)
    cwd = body.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
        raise ManagerError("cwd must be an absolute path", 400)
    stdin = body.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise ManagerError("stdin must be a string (base64 with stdin_base64: true)", 400)
    data = None
    if stdin is not None:
        data = base64.b64decode(stdin, validate=True) if body.get("stdin_base64") else stdin.encode()
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise ManagerError("stream must be true or false", 400)
    return C.ExecRequest(command, {**env, **extra_env}, cwd, None, data, timeout), stream


def _error_kind(e: C.GuestError) -> str:
    return {C.CommandTimeout: "timeout", C.SandboxGone: "gone", C.AgentUnavailable: "agent-unavailable",
            C.AgentProtocolError: "agent-protocol"}.get(type(e), "guest")  # fmt: skip


async def exec_in_vm(request: web.Request) -> web.StreamResponse:
    manager = request.app[_MANAGER]
    name = _name(request)
    body = await _json(request)
    vsock = await _call(request, manager.vsock_path, name)
    req, stream = _exec_request(body, manager.env(name))
    channel = await _call(request, C.open_channel, vsock)
    loop = asyncio.get_running_loop()
    pool = request.app[_POOL]
    events = channel.stream(req)
    done = object()

    def step() -> Any:
        try:
            return next(events)
        except StopIteration:
            return done
        except C.GuestError as e:
            # A channel breaks a moment before the manager has seen its VM end.
            for _ in range(20):
                if manager.is_gone(name):
                    return C.SandboxGone(f"VM {name} ended while the command ran")
                time.sleep(0.1)
            return e

    try:
        if not stream:
            out, err, code = bytearray(), bytearray(), None
            while (item := await loop.run_in_executor(pool, step)) is not done:
                if isinstance(item, C.GuestError):
                    raise item
                if isinstance(item, C.Output):
                    (out if item.stream == "stdout" else err).extend(item.data)
                elif isinstance(item, C.Exit):
                    code = item
            return web.json_response({"stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace"),
                                      "exit_code": code.exit_code if code else None,
                                      "signal": code.signal if code else None})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while (item := await loop.run_in_executor(pool, step)) is not done:
            if isinstance(item, C.Output):
                line = {"type": item.stream, "data": base64.b64encode(item.data).decode()}
            elif isinstance(item, C.Exit):
                line = {"type": "exit", "exit_code": item.exit_code, "signal": item.signal}
            else:
                line = {"type": "error", "kind": _error_kind(item), "error": str(item)}
            await response.write(json.dumps(line).encode() + b"\n")
            if isinstance(item, C.GuestError):
                break
        await response.write_eof()
        return response
    finally:
        await loop.run_in_executor(pool, channel.close)


def _guest_path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise ManagerError("path: give an absolute guest path (?path=/root/file)", 400)
    return path


async def download(request: web.Request) -> web.StreamResponse:
    manager = request.app[_MANAGER]
    name = _name(request)
    path = _guest_path(request)
    vsock = await _call(request, manager.vsock_path, name)
    channel = await _call(request, C.open_channel, vsock)
    loop = asyncio.get_running_loop()
    pool = request.app[_POOL]
    try:
        pieces = channel.read_file(path)
        first = await loop.run_in_executor(pool, next, pieces, b"")  # errors (no such file) before the 200
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        piece = first
        while piece:
            await response.write(piece)
            piece = await loop.run_in_executor(pool, next, pieces, b"")
        await response.write_eof()
        return response
    finally:
        await loop.run_in_executor(pool, channel.close)


async def upload(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    name = _name(request)
    path = _guest_path(request)
    mode_text = request.query.get("mode", "644")
    try:
        mode = int(mode_text, 8)
        if not 0 <= mode <= 0o7777:
            raise ValueError
    except ValueError:
        raise ManagerError("mode: an octal permission such as 644", 400) from None
    vsock = await _call(request, manager.vsock_path, name)
    channel = await _call(request, C.open_channel, vsock)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)

    abort: Any = object()  # the client went away: the guest must not keep a short file

    def pieces() -> Any:  # runs in the pool: takes what the event loop reads
        while (piece := asyncio.run_coroutine_threadsafe(queue.get(), loop).result()) is not None:
            if piece is abort:
                raise C.GuestError("the upload was interrupted")
            yield piece

    writer = loop.run_in_executor(request.app[_POOL], channel.write_file, path, pieces(), mode)

    async def put(item: bytes | None) -> bool:
        """Hand a piece to the writer; False once the writer has ended (an error: no one takes it)."""
        putting = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({putting, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not putting.done():
            putting.cancel()
            return False
        return True

    try:
        async for piece in request.content.iter_chunked(1 << 20):
            if not await put(piece):
                break
        else:
            await put(None)
        written = await writer
    finally:
        if not writer.done():  # cancelled (the client went away): end the writer with an error
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(abort)
        await loop.run_in_executor(request.app[_POOL], channel.close)
    return web.json_response({"path": path, "bytes": written})


# --- the application ---------------------------------------------------------------------
def make_app(manager: Manager, token: str) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_JSON)
    app[_MANAGER] = manager
    app[_TOKEN] = token
    app[_POOL] = ThreadPoolExecutor(max_workers=max(16, manager.max_vms * 4), thread_name_prefix="manager")
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/health", health)
    app.router.add_post("/vms", create_vm)
    app.router.add_get("/vms", list_vms)
    app.router.add_get("/vms/{name}", get_vm)
    app.router.add_delete("/vms/{name}", delete_vm)
    app.router.add_post("/vms/{name}/pause", pause_vm)
    app.router.add_post("/vms/{name}/resume", resume_vm)
    app.router.add_post("/vms/{name}/snapshot", snapshot_vm)
    app.router.add_get("/vms/{name}/metrics", vm_metrics)
    app.router.add_post("/vms/{name}/exec", exec_in_vm)
    app.router.add_get("/vms/{name}/files", download)
    app.router.add_put("/vms/{name}/files", upload)

    async def shutdown(app: web.Application) -> None:
        app[_POOL].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app


def load_token(token_file: str | None) -> tuple[str, bool]:
    """The bearer token (from the file, then $POCKETVM_TOKEN) and whether it was generated."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ManagerError(f"cannot read the token file {token_file}: {e.strerror}", 2) from None
        if len(token) < 16:
            raise ManagerError(f"the token in {token_file} is shorter than 16 characters", 2)
        return token, False
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        if len(token) < 16:
            raise ManagerError(f"${TOKEN_ENV} is shorter than 16 characters", 2)
        return token, False
    return secrets.token_urlsafe(24), True

"""`pocket serve`: start the manager and its REST API, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import click

from pocketvm.manager.core import Manager, ManagerError

DEFAULT_PORT = 8470


def default_home() -> Path:
    from pocketvm.snapshot.workdisks import state_dir

    return state_dir() / "manager"


def default_socket() -> Path:
    from pocketvm.paths import runtime_dir

    return runtime_dir() / ".manager.sock"  # a leading dot: no VM name can clash


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0: any free one).")
@click.option("--socket", "unix_socket", default=None, metavar="PATH", help="Also listen on this Unix socket (default: .manager.sock in the runtime directory; 'none': no socket).")
@click.option("--token-file", metavar="FILE", help="Read the bearer token from FILE (default: $POCKETVM_TOKEN, else a generated one, printed).")
@click.option("--max-vms", default=8, show_default=True, type=click.IntRange(1, 1024), help="Most VMs running at once.")
@click.option("--ttl", type=click.FloatRange(min=1), default=None, metavar="SECONDS", help="Time-to-live of a VM created without one (default: none).")
@click.option("--home", metavar="DIR", help="State file, logs and VM disks (default: ~/.local/state/pocketvm/manager).")
@click.option("--no-launcher", is_flag=True, help="Start each VM in a process of its own instead of forking it from the warm launcher.")
@click.option("--user", "user", metavar="NAME|UID", help="Started as root: each VM process becomes this user once it is set up, before its guest runs (e.g. nobody).")
def serve(host: str, port: int, unix_socket: str | None, token_file: str | None, max_vms: int, ttl: float | None,
          home: str | None, no_launcher: bool, user: str | None) -> None:
    """Run the sandbox manager with its REST API (OpenAPI document at /openapi.json).

    VMs are created, listed, paused, snapshotted and deleted over HTTP with a
    bearer token; each runs in a process of its own, under host limits, and is
    deleted when its time-to-live passes or the manager stops. A manager that
    was killed finds its VMs again, or cleans up after them, when restarted
    with the same --home.
    """
    from aiohttp import web

    from pocketvm.manager.server import load_token, make_app

    try:
        token, generated = load_token(token_file)
    except ManagerError as e:
        raise click.ClickException(str(e)) from None
    if not no_launcher:
        from pocketvm.launcher import client

        try:
            client.start()
        except client.LauncherError as e:
            click.echo(f"pocket: warning: no launcher ({e}); VMs start in processes of their own", err=True)
    try:
        manager = Manager(Path(home) if home else default_home(), max_vms=max_vms, use_launcher=not no_launcher,
                          default_ttl=ttl, run_as=user)  # fmt: skip
    except ManagerError as e:
        raise click.ClickException(str(e)) from None
    for what, names in manager.recovered.items():
        if names:
            click.echo(f"pocket: {what} {len(names)} VM(s) of the previous manager: {', '.join(names)}", err=True)
    app = make_app(manager, token)
    # The pages of VMs with a display are behind the same secret (each VM
    # at its own URL), when it can be part of a URL.
    from pocketvm.web.attach import TOKEN_ENV

    if re.fullmatch(r"[A-Za-z0-9_-]{16,128}", token):
        os.environ[TOKEN_ENV] = token
    sock_path = None if unix_socket == "none" else Path(unix_socket) if unix_socket else default_socket()

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        tcp = web.TCPSite(runner, host, port)
        await tcp.start()
        bound = tcp._server.sockets[0].getsockname()[1] if tcp._server and tcp._server.sockets else port  # type: ignore[union-attr]
        where = [f"http://{host}:{bound}"]
        if sock_path is not None:
            if sock_path.exists():
                sock_path.unlink()
            unix = web.UnixSite(runner, str(sock_path))
            await unix.start()
            os.chmod(sock_path, 0o600)
            where.append(f"unix:{sock_path}")
        click.echo(f"pocket: manager listening on {' and '.join(where)} ({manager.cgroups.mechanism} limits, "
                   f"at most {max_vms} VMs)", err=True)  # fmt: skip
        if generated:
            click.echo(f"pocket: token: {token}", err=True)
        sys.stderr.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        click.echo("pocket: manager stopping: deleting its VMs", err=True)
        await loop.run_in_executor(None, manager.close)
        await runner.cleanup()
        if sock_path is not None:
            sock_path.unlink(missing_ok=True)

    try:
        asyncio.run(main())
    except OSError as e:
        manager.close()
        raise click.ClickException(f"cannot listen: {e.strerror or e}") from None

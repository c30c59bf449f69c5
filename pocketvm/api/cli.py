"""`pocket exec NAME -- COMMAND...` and `pocket cp SRC DST`, for any running VM
(by its name in `pocket ls`), through the guest agent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pocketvm.manager import channel as C

CHUNK = 1 << 20


def _vsock(name: str) -> Path:
    from pocketvm.control import request

    info = request(name, {"cmd": "info"})
    if info.get("state") == "paused":
        raise C.GuestError(f"VM {name} is paused")
    vsock = info.get("vsock")
    if not vsock:
        raise C.GuestError(f"VM {name} has no vsock device (started with --vsock none?)")
    return Path(vsock)


_WAIT = click.option("--wait", type=click.FloatRange(min=0), metavar="SECONDS",
                     help="How long to wait for the guest agent to answer: a VM just started may still be booting "
                          f"(default {C.AGENT_WAIT:g}, or ${C.AGENT_WAIT_ENV}).")  # fmt: skip


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Kill the command after this long (exit status 124).")
@click.option("--cwd", metavar="DIR", help="Working directory in the guest.")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="Environment variable for the command (repeatable).")
@_WAIT
def exec_command(name: str, command: tuple[str, ...], timeout: float | None, cwd: str | None, env: tuple[str, ...],
                 wait: float | None) -> None:  # fmt: skip
    """Run COMMAND in the running VM NAME through its guest agent.

    Its stdout and stderr come here as it writes them; piped stdin goes to
    it; `pocket exec` exits with its exit status (128+N if signal N killed it).
    One argument with spaces is run by /bin/sh -c: `pocket exec web -- 'ls | wc -l'`.
    """
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--env {item!r}: use NAME=VALUE")
        variables[key] = value
    argv: C.Command = command[0] if len(command) == 1 and " " in command[0] else list(command)
    data = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    channel = C.open_channel(_vsock(name), wait)
    code = 1
    try:
        for item in channel.stream(C.ExecRequest(argv, variables or None, cwd, None, data, timeout)):
            if isinstance(item, C.Output):
                out = sys.stdout.buffer if item.stream == "stdout" else sys.stderr.buffer
                out.write(item.data)
                out.flush()
            else:
                code = 128 + item.signal if item.signal else item.exit_code
    except C.CommandTimeout as e:
        click.echo(f"pocket: {e}", err=True)
        code = 124
    finally:
        channel.close()
    sys.exit(code & 0xFF)


def _split(arg: str) -> tuple[str | None, str]:
    """'NAME:/path' -> (NAME, /path); a host path -> (None, path)."""
    from pocketvm.control import NAME_RE

    name, sep, path = arg.partition(":")
    if sep and NAME_RE.fullmatch(name) and path.startswith("/"):
        return name, path
    return None, arg


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--mode", default=None, metavar="OCTAL", help="Permissions of a file copied into a VM (default: the host file's).")
@_WAIT
def cp(src: str, dst: str, mode: str | None, wait: float | None) -> None:
    """Copy a file between the host and a running VM: NAME:/path on one side.

    `pocket cp data.csv web:/root/data.csv`, `pocket cp web:/var/log/syslog .`
    """
    (svm, spath), (dvm, dpath) = _split(src), _split(dst)
    if (svm is None) == (dvm is None):
        raise click.UsageError("give NAME:/absolute/path on exactly one side")
    if dvm is not None:
        host = Path(spath)
        if not host.is_file():
            raise click.ClickException(f"{host}: no such file")
        perms = int(mode, 8) if mode else host.stat().st_mode & 0o7777
        if dpath.endswith("/"):
            dpath += host.name
        channel = C.open_channel(_vsock(dvm), wait)
        try:
            with open(host, "rb") as f:
                written = channel.write_file(dpath, iter(lambda: f.read(CHUNK), b""), perms)
        finally:
            channel.close()
        click.echo(f"{host} -> {dvm}:{dpath} ({written} bytes)", err=True)
        return
    assert svm is not None
    target = Path(dpath)
    if target.is_dir():
        target = target / os.path.basename(spath)
    tmp = target.with_name(f".{target.name}.part")
    channel = C.open_channel(_vsock(svm), wait)
    size = 0
    try:
        with open(tmp, "wb") as f:
            for piece in channel.read_file(spath):
                f.write(piece)
                size += len(piece)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        channel.close()
    click.echo(f"{svm}:{spath} -> {target} ({size} bytes)", err=True)

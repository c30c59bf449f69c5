"""Fixtures of the manager tests: private runtime/state directories, a
snapshot of the bare-metal ticker to make VMs from (a restore, no kernel
boot), and `pocket serve` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from snaptools import Pocket, pocket

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        mp.setenv("POCKETVM_LAUNCHER", "off")
        yield base


@pytest.fixture(scope="module")
def ticker_snapshot(runtime, ticker_forever) -> Path:
    """A snapshot of the endless ticker (a round every 20 ms), with one network card."""
    snap = runtime / "ticker-snap"
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "snapsrc", "--nic", "user") as p:
        p.wait_for("round 0000000000000002", 120)
        run = pocket("snapshot", "snapsrc", str(snap), "--stop")
        assert run.returncode == 0, run.stderr
        p.wait(30)
    return snap


class Server:
    """A `pocket serve` process and a small JSON client for it."""

    def __init__(self, home: Path, *args: str):
        self.home = home
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pocketvm", "serve", "--port", "0", "--socket", "none", "--home", str(home),
             "--no-launcher", *args],
            env={**os.environ, "POCKETVM_TOKEN": TOKEN}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.log = ""
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline().decode()
            assert line, f"pocket serve ended: {self.log}"
            self.log += line
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                break

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
             raw: bytes | None = None, timeout: float = 120) -> tuple[int, Any]:  # fmt: skip
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        return status, json.loads(text) if text else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        rest = self.proc.stderr.read().decode() if self.proc.stderr else ""  # type: ignore[union-attr]
        self.log += rest
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def server(runtime, tmp_path):
    s = Server(tmp_path / "home", "--max-vms", "3")
    yield s
    s.stop()
    assert "Traceback" not in s.log, s.log


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

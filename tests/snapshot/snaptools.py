"""Helpers for the snapshot tests: building the bare-metal test program and
driving `pocket` processes that keep running while a test talks to them."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"

# tests/guest/build.py has the compiler flags of every bare-metal program; it
# is loaded by path because test folders are not packages.
_spec = importlib.util.spec_from_file_location("guest_build", HERE.parent / "guest" / "build.py")
assert _spec is not None and _spec.loader is not None
guest_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_build)


def build_ticker(out: Path, rounds: int, period: int) -> Path:
    if shutil.which(guest_build.CC) is None:
        pytest.skip(f"{guest_build.CC} not installed")
    sources = [GUEST / "start.S", GUEST / "ticker.c"]
    return guest_build.cross_compile(sources, out, GUEST / "link.ld", [f"-DROUNDS={rounds}", f"-DPERIOD={period}"])


def pocket_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pocketvm", *map(str, args)]


def pocket(*args: str, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(pocket_cmd(*args), input=stdin, capture_output=True, timeout=timeout)


def one_line_error(run: subprocess.CompletedProcess, *needles: str) -> str:
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 2, (run.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pocket: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


class Pocket:
    """A `pocket` process with piped stdin whose output is collected as it comes."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            pocket_cmd(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, buf: bytearray) -> None:
        while True:
            data = stream.read1(65536)
            if not data:
                return
            with self._lock:
                buf += data

    @property
    def out(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def err(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")

    def mark(self) -> int:
        """Position in the output; wait_for(..., after=mark) only looks past it."""
        with self._lock:
            return len(self._out)

    def wait_for(self, text: str, timeout: float, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.out
            if text in out[after:]:
                return out
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the pumps drain
                out = self.out
                if text in out[after:]:
                    return out
                raise AssertionError(f"pocket exited ({self.proc.returncode}) before {text!r}:\n{out[-3000:]}\n{self.err}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.out[-3000:]}\n{self.err}")

    def wait_stderr(self, pattern: str, timeout: float = 60) -> re.Match:
        """The first match of the regular expression `pattern` in what pocket wrote to stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.err)
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr:\n{self.err}")

    def command(self, line: str, expect: str, timeout: float = 60) -> str:
        """Type a shell command line; the output from its start once `expect` shows."""
        mark = self.mark()
        self.send(line + "\n")
        return self.wait_for(expect, timeout, after=mark)[mark:]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Have it print where it is stuck (pocketvm.main registers SIGUSR1 with faulthandler).
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            raise AssertionError(f"pocket still runs after {timeout} s; its threads:\n{self.err[-6000:]}") from None
        for t in self._threads:
            t.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "Pocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def isolated_xdg_dirs(tmp_path_factory, monkeypatch_context):
    """Own control-socket and disk-copy directories (not the image cache) for
    this process and the `pocket` processes it starts."""
    base = tmp_path_factory.mktemp("xdg")
    (base / "run").mkdir(mode=0o700)
    with monkeypatch_context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(base / "run"))
        mp.setenv("XDG_STATE_HOME", str(base / "state"))
        yield base


def open_fds() -> set[tuple[str, str]]:
    """This process's open files, each as (fd, what it is): a test that
    leaks one has more afterwards, whatever an earlier test's threads close
    meanwhile (counting them failed when one did)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass  # closed while listed
    return fds

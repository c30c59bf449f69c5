"""`pocket run` and `pocket restore` handed to a running launcher: the same
output, errors, exit statuses, stdin and signals as in a process of their
own, and a clean end whichever side goes away first."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from snaptools import Pocket, one_line_error, pocket_cmd

from pocketvm.launcher.client import REPLY_TIMEOUT
from pocketvm.launcher.server import REQUEST_TIMEOUT

REPO = Path(__file__).resolve().parents[2]


def pocket(*args: object, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        pocket_cmd(*map(str, args)),
        env={**os.environ, **(env or {})}, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def status() -> dict | None:
    run = pocket("launcher", "status", "--json")
    info = json.loads(run.stdout)
    assert (run.returncode == 0) == bool(info.get("ok")), run
    return info if info.get("ok") else None


def launched() -> int:
    info = status()
    assert info is not None, "the launcher is not running"
    return info["launched"]


def ls() -> list[dict]:
    run = pocket("ls", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def rounds(text: str) -> list[int]:
    return [int(m, 16) for m in re.findall(r"round ([0-9a-f]{16})", text)]


def test_a_launched_run_prints_and_exits_like_its_own_process(launcher, ticker):
    before = launched()
    via = pocket("run", "--bios", "none", "--kernel", ticker, "--deterministic", "--name", "det")
    assert launched() == before + 1
    own = pocket(
        "run", "--bios", "none", "--kernel", ticker, "--deterministic", "--name", "det", env={"POCKETVM_LAUNCHER": "off"}
    )
    assert launched() == before + 1
    assert via.returncode == own.returncode == 0, (via.stderr, own.stderr)
    assert via.stdout == own.stdout and rounds(via.stdout.decode()) == list(range(40))
    assert via.stderr == own.stderr


def test_errors_are_one_line_through_the_launcher(launcher, tmp_path):
    before = launched()
    one_line_error(pocket("run", "--kernel", tmp_path / "missing"), "no such file")
    one_line_error(pocket("restore", tmp_path / "nothing"), "no such directory")
    one_line_error(pocket("run", "--cpus", "0"), "--cpus")
    assert launched() == before + 3
    help_text = pocket("restore", "--help").stdout.decode()
    assert help_text.startswith("Usage: pocket restore [OPTIONS] DIR")


def test_stdin_reaches_the_guest_and_the_vm_is_a_process_of_its_own(launcher, ticker_forever):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "own") as p:
        p.wait_for("round 0000000000000002", 60)
        [vm] = ls()
        # The VM runs in a child of the launcher, not in the client.
        assert vm["pid"] != p.proc.pid and vm["pid"] in status()["running"]
        # It outlives the time limit the launcher gives a client to send its request.
        time.sleep(REQUEST_TIMEOUT + 1)
        assert [v["pid"] for v in ls()] == [vm["pid"]]
        p.send("q")
        assert p.wait(30) == 0
    assert ls() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_to_the_client_reach_the_vm(launcher, ticker_forever, sig):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "sig") as p:
        p.wait_for("round 0000000000000002", 60)
        p.proc.send_signal(sig)
        code = p.wait(30)
        expected = {signal.SIGINT: 130}.get(sig, 128 + sig)
        assert code == expected, p.err
        message = "interrupted" if sig == signal.SIGINT else f"terminated by {sig.name}"
        assert message in p.err
    wait_until(lambda: ls() == [] and status()["running"] == [])


def test_a_killed_client_ends_its_vm(launcher, ticker_forever):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "orphan") as p:
        p.wait_for("round 0000000000000002", 60)
        [vm] = ls()
        p.kill()
    wait_until(lambda: ls() == [] and status()["running"] == [])
    with pytest.raises(ProcessLookupError):
        os.kill(vm["pid"], 0)


def test_a_killed_vm_is_reported_by_the_client(launcher, ticker_forever):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "victim") as p:
        p.wait_for("round 0000000000000002", 60)
        [vm] = ls()
        os.kill(vm["pid"], signal.SIGKILL)
        assert p.wait(30) == 128 + signal.SIGKILL
        assert f"pocket: error: the VM process {vm['pid']} was killed by SIGKILL" in p.err
    assert ls() == []  # the dead VM's socket is gone


def test_snapshot_and_restore_through_the_launcher(launcher, ticker_forever, tmp_path):
    snap = tmp_path / "snap"
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "src") as p:
        p.wait_for("round 0000000000000003", 60)
        saved = pocket("snapshot", "src", snap, "--stop")
        assert saved.returncode == 0, saved.stderr
        assert p.wait(30) == 0
    last = rounds(p.out)[-1]
    before = launched()
    with Pocket("restore", snap, "--name", "back") as r:
        out = r.wait_for(f"round {last + 3:016x}", 60)
        r.send("q")
        assert r.wait(30) == 0
    assert launched() == before + 1
    assert rounds(out)[0] == last + 1


def test_stopping_the_launcher_leaves_its_vms_running(runtime, ticker_forever):
    assert pocket("launcher", "start", timeout=600).returncode == 0
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "stays") as p:
        p.wait_for("round 0000000000000002", 60)
        stop = pocket("launcher", "stop")
        assert stop.returncode == 0 and "launcher stopped" in stop.stdout.decode()
        assert status() is None
        mark = p.mark()
        p.wait_for("round", 10, after=mark)  # still ticking
        p.send("q")
        assert p.wait(30) == 0
    assert pocket("launcher", "status").returncode == 1
    # Without a launcher, commands run in their own process.
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "alone") as p:
        p.wait_for("round 0000000000000001", 120)
        assert ls()[0]["pid"] == p.proc.pid


def test_other_numba_settings_are_not_served_by_the_launcher(launcher, ticker):
    before = launched()
    run = pocket("run", "--bios", "none", "--kernel", ticker, env={"NUMBA_COLOR_SCHEME": "no_color"})
    assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40
    assert launched() == before


def test_a_launcher_with_outdated_sources_steps_aside(launcher, ticker):
    source = REPO / "pocketvm" / "paths.py"
    st = source.stat()
    try:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        run = pocket("run", "--bios", "none", "--kernel", ticker)
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40
    wait_until(lambda: status() is None)  # it stopped itself rather than serve old code


def test_starts_at_the_same_time_agree_on_one_launcher(runtime):
    pocket("launcher", "stop")
    starts = [subprocess.Popen(pocket_cmd("launcher", "start"), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    results = [(p.wait(600), p.stdout.read().decode(), p.stderr.read().decode()) for p in starts]
    assert all(code == 0 for code, _, _ in results), results
    pids = {int(re.search(r"pid (\d+)", out).group(1)) for _, out, _ in results}
    assert pids == {status()["pid"]}
    assert pocket("launcher", "stop").returncode == 0


def test_start_twice_and_stop_twice(runtime):
    first = pocket("launcher", "start", timeout=600)
    again = pocket("launcher", "start", timeout=600)
    assert first.returncode == again.returncode == 0
    assert "already running" in again.stdout.decode()
    assert pocket("launcher", "stop").returncode == 0
    second = pocket("launcher", "stop")
    assert second.returncode == 0 and "no launcher running" in second.stdout.decode()


def test_idle_timeout(runtime):
    assert pocket("launcher", "stop").returncode == 0
    started = pocket("launcher", "start", "--idle-timeout", "1", timeout=600)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: status() is None, timeout=30)
    assert "idle for 1 s: stopping" in (runtime / ".launcher.log").read_text()
    bad = pocket("launcher", "start", "--idle-timeout", "soon")
    one_line_error(bad, "--idle-timeout")


def test_a_launched_vm_takes_over_the_commands_limits_and_niceness(launcher, ticker_forever):
    def limit_self() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))
        os.nice(3)

    before = launched()
    proc = subprocess.Popen(
        pocket_cmd("run", "--bios", "none", "--kernel", ticker_forever, "--name", "limited"),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit_self,
    )  # fmt: skip
    try:
        wait_until(lambda: len(ls()) == 1)
        [vm] = ls()
        assert launched() == before + 1 and vm["pid"] != proc.pid
        limits = Path(f"/proc/{vm['pid']}/limits").read_text()
        assert re.search(r"^Max open files\s+200\s+300\s", limits, re.M), limits
        assert os.getpriority(os.PRIO_PROCESS, vm["pid"]) == os.getpriority(os.PRIO_PROCESS, 0) + 3
        proc.communicate(b"q", timeout=30)
        assert proc.returncode == 0
    finally:
        proc.kill()


def test_a_command_the_launcher_cannot_restrict_to_runs_in_its_own_process(runtime, ticker):
    """A process can lower its limits and raise its niceness, never the other
    way round: a launcher started with a lower hard limit and a higher
    niceness only takes commands that have them too."""

    def restrict(core: bool, nice: bool):
        def apply() -> None:
            if core:
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if nice:
                os.nice(5)

        return apply

    pocket("launcher", "stop")
    started = subprocess.run(pocket_cmd("launcher", "start"), capture_output=True, preexec_fn=restrict(True, True))
    assert started.returncode == 0, started.stderr
    try:
        for core, nice, taken in ((False, True, False), (True, False, False), (True, True, True)):
            before = launched()
            run = subprocess.run(
                pocket_cmd("run", "--bios", "none", "--kernel", ticker),
                capture_output=True, preexec_fn=restrict(core, nice), timeout=120,
            )  # fmt: skip
            assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40, run.stderr
            assert launched() == before + taken, (core, nice)
    finally:
        pocket("launcher", "stop")


def test_a_stopped_launcher_neither_holds_up_nor_doubles_a_command(launcher, ticker):
    pid = status()["pid"]
    before = launched()
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        run = pocket("run", "--bios", "none", "--kernel", ticker, "--name", "impatient")
        waited = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40, run.stderr
    assert waited >= REPLY_TIMEOUT  # it ran in its own process after giving up on the launcher
    # The launcher reads the abandoned request when it continues, and does not launch it.
    assert launched() == before
    assert "the client has gone" in (launcher / ".launcher.log").read_text()


def test_a_stopped_launcher_is_named_by_start_and_stop(launcher):
    pid = status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for cmd in ("start", "stop"):
            one_line_error(pocket("launcher", cmd), f"a launcher (pid {pid})", "does not answer", f"kill -CONT {pid}")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status()["pid"] == pid


def test_malformed_requests_do_not_take_the_launcher_down(launcher):
    import socket

    path = str(launcher / ".launcher.sock")
    pid = status()["pid"]
    garbage = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"cmd": "launch"}\n',
        b'{"cmd": "launch", "argv": 7, "env": {}, "cwd": "/"}\n',
        b'{"cmd": "launch", "argv": ["run"], "env": [], "cwd": 3, "rlimits": "x"}\n',
        b'{"cmd": "format the disk"}\n',
        b"x" * (2 << 20),
    ]
    unfinished = b'{"cmd": "ping"'  # the launcher stops waiting for the rest after REQUEST_TIMEOUT
    for data in [*garbage, unfinished]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.settimeout(REQUEST_TIMEOUT + 5)
            try:
                s.sendall(data)
                if data is not unfinished:
                    s.shutdown(socket.SHUT_WR)
                reply = s.recv(65536)
            except OSError:
                reply = b""
            assert b'"pid"' not in reply
    info = status()
    assert info is not None and info["pid"] == pid and info["running"] == []
    assert "internal error" not in (launcher / ".launcher.log").read_text()


def test_the_pocket_script_and_python_m_pocketvm_share_a_launcher(launcher, ticker):
    script = Path(sys.executable).parent / "pocket"  # its #! names python3, the launcher runs python
    if not script.exists():
        pytest.skip("no pocket script next to this Python")
    before = launched()
    run = subprocess.run([str(script), "run", "--bios", "none", "--kernel", str(ticker)], capture_output=True, timeout=120)
    assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40, run.stderr
    assert launched() == before + 1


def test_a_launcher_started_with_the_jit_on_still_launches(runtime, ticker):
    """Its warm-up must not start tier 1 (a service process and a thread): a
    launcher with a thread declines every command, as forking it is unsafe."""
    pocket("launcher", "stop")
    try:
        run = pocket("launcher", "start", env={"POCKETVM_JIT": "on"}, timeout=600)
        assert run.returncode == 0, run.stderr
        before = launched()
        run = pocket("run", "--bios", "none", "--kernel", ticker, env={"POCKETVM_JIT": "on"})
        assert run.returncode == 0 and len(rounds(run.stdout.decode())) == 40, run.stderr
        assert launched() == before + 1
    finally:
        pocket("launcher", "stop")

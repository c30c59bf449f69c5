"""VM names, the control socket, `pocket ls`, `pocket snapshot` and `pocket
restore` on the command line, with the bare-metal ticker (a round every
20 ms of real time until it reads 'q')."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from snaptools import Pocket, one_line_error, pocket

START = 120  # seconds to the first output (includes loading the compiled core)


def runtime() -> Path:
    return Path(os.environ["XDG_RUNTIME_DIR"]) / "pocketvm"


def ls() -> list[dict]:
    run = pocket("ls", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def rounds(text: str) -> list[int]:
    return [int(m, 16) for m in re.findall(r"round ([0-9a-f]{16})", text)]


@pytest.fixture
def ticking(ticker_forever):
    """`pocket run --name tick` of the endless ticker, already printing."""
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "tick") as p:
        p.wait_for("round 0000000000000002", START)
        yield p


def test_names_ls_and_duplicate_names(ticking, ticker_forever):
    assert "pocket: vm tick is booting" in ticking.err
    vms = ls()
    assert [v["name"] for v in vms] == ["tick"]
    assert vms[0]["pid"] == ticking.proc.pid and vms[0]["state"] == "running"
    assert vms[0]["memory"] == 512 << 20
    table = pocket("ls").stdout.decode()
    assert table.splitlines()[0].split()[:3] == ["NAME", "PID", "STATE"]
    assert re.search(rf"^tick\s+{ticking.proc.pid}\s+running", table, re.M)
    # The name is taken while the VM runs.
    dup = pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "tick", timeout=60)
    one_line_error(dup, "a VM named 'tick' is already running")
    bad = pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "no/slash", timeout=60)
    one_line_error(bad, "invalid VM name")
    assert ticking.proc.poll() is None


def test_generated_name_is_printed_and_listed(ticker_forever):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever) as p:
        p.wait_for("round 0000000000000001", START)
        name = re.search(r"pocket: vm (\S+) is booting", p.err).group(1)
        assert [v["name"] for v in ls()] == [name]
        p.send("q")
        assert p.wait(30) == 0
    assert ls() == []
    assert not (runtime() / f"{name}.sock").exists()  # removed on exit


def test_dead_vm_is_not_listed_and_its_socket_is_cleaned(ticker_forever):
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "doomed") as p:
        p.wait_for("round 0000000000000001", START)
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
    assert (runtime() / "doomed.sock").exists()  # nobody could clean up
    assert ls() == []
    assert not (runtime() / "doomed.sock").exists()
    one_line_error(pocket("snapshot", "doomed", "/tmp/x"), "no running VM named 'doomed'")


def test_snapshot_resumes_then_restore_continues(ticking, tmp_path):
    snap = tmp_path / "snap"
    lo = max(rounds(ticking.out))
    run = pocket("snapshot", "tick", snap)
    assert run.returncode == 0, run.stderr
    hi = max(rounds(ticking.out))  # the snapshot was taken between these two rounds
    assert str(snap) in run.stdout.decode() and "MiB" in run.stdout.decode()
    assert (snap / "manifest.json").exists()
    # The VM resumed.
    mark = ticking.mark()
    ticking.wait_for("round", 30, after=mark)
    assert ticking.proc.poll() is None

    # Two restores at once, under two names; each counts on from the snapshot.
    with Pocket("restore", snap, "--name", "r1") as r1, Pocket("restore", snap, "--name", "r2") as r2:
        for r in (r1, r2):
            r.wait_for(f"round {hi + 3:016x}", START)
        assert {v["name"] for v in ls()} == {"tick", "r1", "r2"}
        assert {v.get("snapshot") for v in ls() if v["name"] != "tick"} == {str(snap)}
        r1.send("q")
        assert r1.wait(30) == 0
        assert r2.proc.poll() is None  # the other one is unaffected
        r2.send("q")
        assert r2.wait(30) == 0
        for r in (r1, r2):
            got = rounds(r.out)
            assert lo + 1 <= got[0] <= hi + 1  # the next round after the snapshot's
            assert got == list(range(got[0], got[0] + len(got)))  # none lost, none repeated
            assert "done after" in r.out
            assert "restored from" in r.err


def test_snapshot_stop_ends_the_vm(ticking, tmp_path):
    run = pocket("snapshot", "tick", tmp_path / "final", "--stop")
    assert run.returncode == 0, run.stderr
    assert ticking.wait(30) == 0
    assert "stopped after saving a snapshot" in ticking.err
    assert ls() == []


def test_snapshot_errors_leave_the_vm_running(ticking, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    one_line_error(pocket("snapshot", "tick", occupied), "not empty")
    one_line_error(pocket("snapshot", "nosuch", tmp_path / "s"), "no running VM named 'nosuch'")
    mark = ticking.mark()
    ticking.wait_for("round", 30, after=mark)
    time.sleep(0.1)
    assert ticking.proc.poll() is None


def _snapshot_with_a_disk(ticker_forever: Path, tmp_path: Path) -> Path:
    """A snapshot of the ticker with a (never written) 1 MiB disk attached."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    snap = tmp_path / "snap"
    with Pocket("run", "--bios", "none", "--kernel", ticker_forever, "--name", "src", "--disk", disk) as p:
        p.wait_for("round 0000000000000001", START)
        assert pocket("snapshot", "src", snap, "--stop").returncode == 0
        assert p.wait(30) == 0
    return snap


def test_stopped_or_killed_restored_vms_leak_no_disk_copies(ticker_forever, tmp_path):
    snap = _snapshot_with_a_disk(ticker_forever, tmp_path)
    copies = Path(os.environ["XDG_STATE_HOME"]) / "pocketvm" / "disks"
    # SIGTERM: the VM cleans up itself. (The ticker never writes its disk.)
    with Pocket("restore", snap, "--name", "term") as r:
        r.wait_for("round", START)
        assert (copies / "term" / "disk0.raw").exists()
        r.proc.terminate()
        assert r.wait(30) == 128 + signal.SIGTERM
        assert "terminated by SIGTERM" in r.err
    assert not (copies / "term").exists()
    assert not (runtime() / "term.sock").exists()
    # SIGKILL: nothing can run in the VM; the next `pocket ls` cleans up.
    with Pocket("restore", snap, "--name", "kill") as r:
        r.wait_for("round", START)
        r.kill()
    assert (copies / "kill" / "disk0.raw").exists()
    assert ls() == []
    assert not (copies / "kill").exists()
    assert not list(runtime().iterdir())


def test_light_commands_do_not_load_numba_and_agree_on_defaults():
    """`pocket ls` and `pocket snapshot` must start fast: the CLI module
    spells the default memory size itself instead of importing the machine."""
    import subprocess
    import sys

    from pocketvm import cli
    from pocketvm.machine import DEFAULT_MEMORY, parse_memory

    assert parse_memory(cli.DEFAULT_MEMORY) == DEFAULT_MEMORY
    probe = "import sys, pocketvm.cli, pocketvm.control; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_discard_throws_written_disk_copies_away(ticker_forever, tmp_path):
    snap = _snapshot_with_a_disk(ticker_forever, tmp_path)
    copies = Path(os.environ["XDG_STATE_HOME"]) / "pocketvm" / "disks"

    def restore_and_write(name: str, *extra: str) -> Pocket:
        r = Pocket("restore", snap, "--name", name, *extra)
        r.wait_for("round", START)
        copy = copies / name / "disk0.raw"
        os.utime(copy)  # what a guest write does to the copy: the ticker itself never writes
        return r

    # Without --discard the written copy is kept (and said so); with it, it is gone.
    with restore_and_write("keep") as r:
        r.send("q")
        assert r.wait(30) == 0
    assert "kept in" in r.err and (copies / "keep" / "disk0.raw").exists()
    with restore_and_write("gone", "--discard") as r:
        r.send("q")
        assert r.wait(30) == 0
    assert "kept in" not in r.err and not (copies / "gone").exists()
    # Also when the VM is killed outright: the next `pocket ls` deletes it.
    with restore_and_write("killed", "--discard") as r:
        r.kill()
    assert (copies / "killed" / "disk0.raw").exists()
    assert ls() == []
    assert not (copies / "killed").exists()
    assert (copies / "keep" / "disk0.raw").exists()

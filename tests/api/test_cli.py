"""`pocket exec` and `pocket cp`: their errors are one line, with or without a VM."""

from __future__ import annotations

import time

from snaptools import Pocket, one_line_error, pocket


def test_exec_and_cp_errors(ticker_snapshot, tmp_path, monkeypatch):
    one_line_error(pocket("exec", "ghost", "--", "true"), "no running VM named 'ghost'")
    one_line_error(pocket("cp", "a", "b"), "NAME:/absolute/path on exactly one side")
    one_line_error(pocket("cp", "vm1:/a", "vm2:/b"), "exactly one side")
    one_line_error(pocket("cp", str(tmp_path / "missing"), "vm1:/root/x"), "no such file")
    with Pocket("restore", str(ticker_snapshot), "--name", "tick") as p:
        p.wait_for("round ", 60)
        # (The ticker has no agent: a VM still booting is waited for, 30 s by default.)
        started = time.monotonic()
        one_line_error(pocket("exec", "tick", "--wait", "2", "--", "true"), "agent")
        (tmp_path / "f").write_text("x")
        monkeypatch.setenv("POCKETVM_AGENT_WAIT", "1")
        one_line_error(pocket("cp", str(tmp_path / "f"), "tick:/root/f"), "agent")
        assert time.monotonic() - started < 25  # both waited as told
        monkeypatch.setenv("POCKETVM_AGENT_WAIT", "soon")
        one_line_error(pocket("exec", "tick", "--", "true"), "POCKETVM_AGENT_WAIT='soon'")
        one_line_error(pocket("exec", "tick", "--wait", "-1", "--", "true"), "--wait")
        p.send("q")
        p.wait(30)


def test_run_and_restore_with_a_time_to_live(ticker_snapshot, ticker_forever, runtime):
    """--ttl stops the VM (status 124, one line saying why) and deletes the
    disk copies pocketvm made for it, even those the guest wrote."""
    run = pocket("run", "--bios", "none", "--kernel", ticker_forever, "--ttl", "1.5", timeout=60)
    assert run.returncode == 124 and "time-to-live of 1.5 s reached" in run.stderr.decode()
    disks = runtime / "disks-ttl"
    run = pocket("restore", str(ticker_snapshot), "--disk-dir", str(disks), "--ttl", "1", timeout=60)
    assert run.returncode == 124 and "time-to-live of 1 s reached" in run.stderr.decode()
    assert not disks.exists() or not any(disks.iterdir())
    bad = pocket("run", "--ttl", "0")
    assert bad.returncode == 2 and b"--ttl" in bad.stderr and b"Traceback" not in bad.stderr

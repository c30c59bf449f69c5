"""pocketvm.Sandbox on VMs restored from a snapshot of the bare-metal ticker
(no guest agent in it: commands and files must fail clearly)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import pocketvm


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sandbox_lives_inside_its_with_block(ticker_snapshot):
    with pocketvm.Sandbox(snapshot=ticker_snapshot, timeout=60) as sb:
        pid = sb.info["pid"]
        assert alive(pid) and sb.info["state"] == "running"
        m = sb.metrics()
        assert m["rss_bytes"] > 0 and m["guest_uptime"] > 0
    assert not alive(pid)
    with pytest.raises(pocketvm.SandboxGone):
        sb.metrics()
    sb.close()  # idempotent


def test_commands_and_files_need_the_guest_agent(ticker_snapshot, monkeypatch):
    monkeypatch.setenv("POCKETVM_AGENT_WAIT", "2")  # (for a VM still booting it waits 30 s)
    with pocketvm.Sandbox(snapshot=ticker_snapshot) as sb:
        with pytest.raises(pocketvm.GuestError) as err:
            sb.run(["true"])
        assert "agent" in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(pocketvm.GuestError):
            sb.files.read("/etc/hostname")


def test_pause_resume_snapshot_and_restore(ticker_snapshot, tmp_path):
    with pocketvm.Sandbox(snapshot=ticker_snapshot) as sb:
        sb.pause()
        a = sb.metrics()["guest_uptime"]
        time.sleep(0.2)
        assert sb.metrics()["guest_uptime"] == a
        saved = sb.snapshot(tmp_path / "copy")
        sb.resume()
        assert saved == tmp_path / "copy" and (saved / "manifest.json").is_file()
        with pocketvm.Sandbox.restore(saved) as copy:
            assert copy.name != sb.name
            assert copy.metrics()["guest_uptime"] >= a


def test_time_to_live_ends_the_sandbox(ticker_snapshot):
    sb = pocketvm.Sandbox(snapshot=ticker_snapshot, timeout=1)
    pid = sb.info["pid"]
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(pocketvm.SandboxGone):
        sb.pause()
    sb.close()


def test_bad_arguments_are_typed_errors(ticker_snapshot, tmp_path):
    with pytest.raises(ValueError, match="cpus must be"):
        pocketvm.Sandbox(snapshot=ticker_snapshot, cpus=0)
    with pytest.raises(ValueError, match="not a snapshot"):
        pocketvm.Sandbox(snapshot=tmp_path)
    with pytest.raises(ValueError, match="cannot change"):
        pocketvm.Sandbox(snapshot=ticker_snapshot, memory="2G")


def test_sandboxes_left_open_end_with_the_process(ticker_snapshot):
    code = f"import pocketvm; sb = pocketvm.Sandbox(snapshot={str(ticker_snapshot)!r}); print(sb.info['pid'], flush=True)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the sandbox outlived its process"
        time.sleep(0.05)

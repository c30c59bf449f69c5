"""`pocket serve` through its REST API: VMs restored from a snapshot of the
bare-metal ticker (each its own process), created, listed, paused, limited,
expired, deleted; bad requests get clear errors and the server keeps
serving; a restarted manager finds or reaps its VMs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from servetools import TOKEN, Server, alive, wait_until


def test_token_is_required_and_the_document_is_not(server):
    for token in (None, "wrong-token-0123456789", TOKEN + "x"):
        status, body = server.call("GET", "/vms", token=token)
        assert status == 401 and "bearer token" in body["error"]
    status, doc = server.call("GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert server.call("GET", "/health")[0] == 200


def test_create_list_get_delete(server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "name": "one", "env": {"A": "1"}})
    assert status == 201, vm
    assert vm["name"] == "one" and vm["state"] == "running" and alive(vm["pid"])
    assert vm["source"] == {"snapshot": str(ticker_snapshot)} and vm["env"] == ["A"]
    assert Path(vm["vsock"]).name == "one.vsock"
    status, listed = server.call("GET", "/vms")
    assert status == 200 and [v["name"] for v in listed["vms"]] == ["one"]
    assert server.call("GET", "/vms/one")[1]["pid"] == vm["pid"]
    # The name is taken while it runs.
    status, body = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "name": "one"})
    assert status == 409 and "already exists" in body["error"]
    status, body = server.call("DELETE", "/vms/one")
    assert status == 200 and body["deleted"] is True
    assert not alive(vm["pid"])
    assert server.call("GET", "/vms")[1]["vms"] == []
    status, body = server.call("GET", "/vms/one")
    assert status == 404 and body["error"] == "no VM named 'one'"
    # Its private disk directory is gone with it.
    assert not (server.home / "disks" / "one").exists()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, ticker_snapshot, tmp_path):
    cases = [
        ("POST", "/vms", b"{not json", 400, "not valid JSON"),
        ("POST", "/vms", b"[1, 2]", 400, "JSON object"),
        ("POST", "/vms", b'{"snapshot": "relative/dir"}', 400, "absolute directory"),
        ("POST", "/vms", f'{{"snapshot": "{tmp_path}/none"}}'.encode(), 400, "not a snapshot"),
        ("POST", "/vms", b'{"image": "debian", "colour": "red"}', 400, "unknown field(s): colour"),
        ("POST", "/vms", b'{"image": "debian", "cpus": 99}', 400, "cpus must be"),
        ("POST", "/vms", b'{"image": "debian", "memory": "lots"}', 400, "invalid memory size"),
        ("POST", "/vms", b'{"image": "debian", "ttl": -5}', 400, "ttl must be"),
        ("POST", "/vms", b'{"image": "debian", "allow": ["10.0.2.2:8000"]}', 400, "allow needs network"),
        ("POST", "/vms", f'{{"snapshot": "{ticker_snapshot}", "memory": "2G"}}'.encode(), 400, "cannot change"),
        ("GET", "/vms/ghost", None, 404, "no VM named 'ghost'"),
        ("DELETE", "/vms/ghost", None, 404, "no VM named 'ghost'"),
        ("POST", "/vms/ghost/exec", b'{"command": ["true"]}', 404, "no VM named"),
        ("GET", "/vms/ghost/metrics", None, 404, "no VM named"),
        ("GET", "/nowhere", None, 404, "no route GET /nowhere"),
        ("PATCH", "/vms", None, 405, "not allowed"),
    ]
    for method, path, raw, want, needle in cases:
        status, body = server.call(method, path, raw=raw)
        assert status == want and needle in body["error"], (method, path, status, body)
        assert "Traceback" not in body["error"]
    # A snapshot directory that is damaged: the VM's own one-line error.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"vm": {"memory": 536870912, "cpus": 1, "nics": []}}')
    status, body = server.call("POST", "/vms", {"snapshot": str(broken)})
    assert status == 400 and body["error"] and "\n" not in body["error"], body
    # Still serving, nothing left behind.
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    assert status == 201, vm
    status, body = server.call("POST", f"/vms/{vm['name']}/exec", raw=b"{oops")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = server.call("GET", f"/vms/{vm['name']}/files?path=etc/passwd")
    assert status == 400 and "absolute guest path" in body["error"]
    status, body = server.call("POST", f"/vms/{vm['name']}/snapshot", {"dir": "relative"})
    assert status == 400 and "absolute" in body["error"]
    assert [v["name"] for v in server.call("GET", "/vms")[1]["vms"]] == [vm["name"]]


def test_cap_on_running_vms(server, ticker_snapshot):
    names = []
    for _ in range(3):
        status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
        assert status == 201, vm
        names.append(vm["name"])
    status, body = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    assert status == 429 and "at most 3 VMs" in body["error"]
    assert server.call("DELETE", f"/vms/{names[0]}")[0] == 200
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    assert status == 201, vm


def test_time_to_live_kills_the_vm_and_discards_its_disks(server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "ttl": 2})
    assert status == 201, vm
    assert vm["expires"] is not None and 0 <= vm["ttl_left"] <= 2  # counted from the request
    wait_until(lambda: server.call("GET", "/vms")[1]["vms"] == [], 30)
    assert not alive(vm["pid"])
    assert server.call("GET", f"/vms/{vm['name']}")[0] == 404
    assert not (server.home / "disks" / vm["name"]).exists()
    for group in vm["limits"]["groups"]:
        assert not Path(group).exists()


def test_pause_stops_the_guest_clock_and_resume_restarts_it(server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    name = vm["name"]
    status, paused = server.call("POST", f"/vms/{name}/pause")
    assert status == 200 and paused["state"] == "paused"
    first = server.call("GET", f"/vms/{name}/metrics")[1]
    wait_until(lambda: alive(vm["pid"]) and time.sleep(0.3) is None, 5)
    second = server.call("GET", f"/vms/{name}/metrics")[1]
    assert first["state"] == second["state"] == "paused"
    assert first["guest_uptime"] == second["guest_uptime"]
    # A paused VM has no agent to talk to.
    status, body = server.call("POST", f"/vms/{name}/exec", {"command": ["true"]})
    assert status == 409 and "paused" in body["error"]
    status, resumed = server.call("POST", f"/vms/{name}/resume")
    assert status == 200 and resumed["state"] == "running"
    wait_until(lambda: server.call("GET", f"/vms/{name}/metrics")[1]["guest_uptime"] > second["guest_uptime"])


def test_metrics_come_from_the_vm_process(server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    m = server.call("GET", f"/vms/{vm['name']}/metrics")[1]
    assert m["threads"] >= 2  # the run loop and the control socket's, at least
    with open(f"/proc/{vm['pid']}/stat") as f:
        ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
    assert m["cpu_seconds"] <= ticks / os.sysconf("SC_CLK_TCK")  # read from the same counters, earlier
    assert m["rss_bytes"] > 10 << 20 and 0 < m["pss_bytes"] <= m["rss_bytes"]
    assert m["cpu_seconds"] > 0 and m["guest_uptime"] > 0


def test_host_limits_are_applied_to_the_vm_process(server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "host_memory": "700M",
                                              "cpu_share": 0.5})  # fmt: skip
    assert status == 201, vm
    limits = vm["limits"]
    pid = vm["pid"]
    # No new privileges, and a seccomp filter (mode 2) where libseccomp is installed.
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert limits["host_memory"] == 700 << 20
    if limits["mechanism"] == "rlimit":
        with open(f"/proc/{pid}/limits") as f:
            data = next(line for line in f if line.startswith("Max data size"))
        assert data.split()[3:5] == [str(700 << 20)] * 2
        return
    assert limits["memory_max"] == 700 << 20
    own = open(f"/proc/{pid}/cgroup").read()
    for group in limits["groups"]:
        assert str(pid) in Path(group, "cgroup.procs").read_text().split()
        assert group.split("/sys/fs/cgroup/", 1)[1].split("/", 1)[1] in own
    if limits["mechanism"] == "cgroup1":
        cpu = next(g for g in limits["groups"] if "/cpu/" in g)
        assert Path(cpu, "cpu.cfs_quota_us").read_text().strip() == "50000"
        mem = next(g for g in limits["groups"] if "/memory/" in g)
        assert Path(mem, "memory.limit_in_bytes").read_text().strip() == str(700 << 20)
    else:
        group = limits["groups"][0]
        assert Path(group, "memory.max").read_text().strip() == str(700 << 20)
        assert Path(group, "cpu.max").read_text().split()[0] == "50000"


def test_snapshot_through_the_api_restores(server, ticker_snapshot, tmp_path):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    status, snap = server.call("POST", f"/vms/{vm['name']}/snapshot", {"dir": str(tmp_path / "again")})
    assert status == 200 and snap["path"] == str(tmp_path / "again"), snap
    status, copy = server.call("POST", "/vms", {"snapshot": str(tmp_path / "again")})
    assert status == 201, copy
    assert server.call("GET", f"/vms/{vm['name']}")[1]["state"] == "running"


@pytest.fixture
def agent_wait_of_2_s(monkeypatch):  # (the server waits 30 s for a VM that may still be booting)
    monkeypatch.setenv("POCKETVM_AGENT_WAIT", "2")


def test_exec_without_a_guest_agent_is_a_clear_error(agent_wait_of_2_s, server, ticker_snapshot):
    status, vm = server.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
    status, body = server.call("POST", f"/vms/{vm['name']}/exec", {"command": ["true"]})
    assert status in (503, 502), body
    assert body["error"] and "\n" not in body["error"]
    assert server.call("DELETE", f"/vms/{vm['name']}")[0] == 200


def test_a_restarted_manager_finds_live_vms_and_reaps_dead_ones(runtime, ticker_snapshot, tmp_path):
    home = tmp_path / "home"
    first = Server(home)
    _, kept = first.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "name": "kept", "ttl": 600})
    _, doomed = first.call("POST", "/vms", {"snapshot": str(ticker_snapshot), "name": "doomed"})
    first.stop(signal.SIGKILL)  # no chance to clean up
    os.kill(doomed["pid"], signal.SIGKILL)
    wait_until(lambda: not alive(doomed["pid"]))
    assert (home / "logs" / "doomed.log").exists()
    assert all(Path(g).exists() for g in doomed["limits"]["groups"])
    second = Server(home)
    try:
        assert "found 1 VM(s) of the previous manager: kept" in second.log
        assert "reaped 1 VM(s) of the previous manager: doomed" in second.log
        listed = second.call("GET", "/vms")[1]["vms"]
        assert [v["name"] for v in listed] == ["kept"] and listed[0]["pid"] == kept["pid"]
        assert 500 < listed[0]["ttl_left"] <= 600  # its time-to-live carried over
        assert not (home / "logs" / "doomed.log").exists()
        for group in doomed["limits"]["groups"]:
            assert not Path(group).exists()
        # The adopted VM is managed like any other.
        assert second.call("POST", "/vms/kept/pause")[1]["state"] == "paused"
        assert second.call("DELETE", "/vms/kept")[0] == 200
        assert not alive(kept["pid"])
    finally:
        second.stop()
        for pid in (kept["pid"], doomed["pid"]):  # a failed assertion must not leave a VM behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in second.log


def test_the_unix_socket_serves_the_same_api(runtime, tmp_path):
    import http.client
    import json
    import socket as socketlib
    import stat

    path = tmp_path / "manager.sock"

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            self.sock.connect(str(path))

    s = Server(tmp_path / "home", "--socket", str(path))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = UnixConnection("localhost")
        conn.request("GET", "/vms", headers={"Authorization": f"Bearer {TOKEN}"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read()) == {"vms": []}
        conn.request("GET", "/vms")
        r = conn.getresponse()
        assert r.status == 401
        r.read()
        conn.close()
    finally:
        s.stop()
    assert not path.exists()


def test_vm_processes_become_the_given_user(runtime, ticker_snapshot, tmp_path):
    """`pocket serve --user nobody` started as root: each VM process runs as
    nobody once set up, its guest runs, and deleting it cleans up as usual."""
    import pwd

    if os.geteuid() != 0:
        import pytest

        pytest.skip("changing users needs root")
    nobody = pwd.getpwnam("nobody")
    s = Server(tmp_path / "home", "--user", "nobody")
    try:
        status, vm = s.call("POST", "/vms", {"snapshot": str(ticker_snapshot)})
        assert status == 201, vm

        def uids() -> list[int]:
            for line in Path(f"/proc/{vm['pid']}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    return [int(x) for x in line.split()[1:]]
            return []

        wait_until(lambda: uids() == [nobody.pw_uid] * 4, 30)
        first = s.call("GET", f"/vms/{vm['name']}/metrics")[1]["guest_uptime"]
        wait_until(lambda: s.call("GET", f"/vms/{vm['name']}/metrics")[1]["guest_uptime"] > first, 30)
        assert s.call("DELETE", f"/vms/{vm['name']}")[0] == 200
        assert not alive(vm["pid"]) and not (s.home / "disks" / vm["name"]).exists()
    finally:
        s.stop()
    assert "Traceback" not in s.log, s.log

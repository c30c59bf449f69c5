"""The Debian guest on the network: `pocket run --nic user`.

The guest gets its address by DHCP from pocketvm's user-mode NAT, pings the
gateway, fetches a file from an HTTP server on the host's 127.0.0.1 (the
host is 10.0.2.2 to the guest), resolves nothing (no DNS here), and serves
a file back to the host through a forwarded port.
"""

from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from e2etools import BOOT_TIMEOUT, pocket

pytestmark = pytest.mark.slow

PROMPT = b"pocket:~# "


@pytest.fixture
def http_server(tmp_path):
    """A host HTTP server on 127.0.0.1 serving tmp_path, with a 1 MiB file in it."""
    (tmp_path / "hello.txt").write_text("hello from the host\n")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_dhcp_ping_and_http_from_the_guest(http_server, guest_image):
    port = http_server
    script = "\n".join(
        [
            "echo ADDR-$(ip -4 -o addr show eth0 | awk '{print $4}')-END",
            "echo ROUTE-$(ip route | awk '/^default/ {print $3}')-END",
            "ping -c 1 -W 5 10.0.2.2 >/dev/null && echo PING-$((1+1))-OK",
            f"wget -q -O - http://10.0.2.2:{port}/hello.txt",
            f"echo BIG-$(wget -q -O - http://10.0.2.2:{port}/big.bin | md5sum | cut -c1-32)-END",
            # A closed port is refused at once, not left hanging.
            "wget -q -T 5 -O - http://10.0.2.2:1/ || echo REFUSED-$((3+3))",
            "poweroff",
        ]
    )
    run = pocket("run", "--nic", "user", stdin=script + "\n", timeout=BOOT_TIMEOUT)
    out = run.stdout
    assert run.returncode == 0, (run.stderr, out[-3000:])
    assert "ADDR-10.0.2.15/24-END" in out, out[-3000:]
    assert "ROUTE-10.0.2.2-END" in out
    assert "PING-2-OK" in out
    assert "hello from the host" in out
    import hashlib

    assert f"BIG-{hashlib.md5(bytes(range(256)) * 4096).hexdigest()}-END" in out
    assert "REFUSED-6" in out


def _read_to_prompt(proc: subprocess.Popen) -> bytes:
    out = b""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while PROMPT not in out and time.monotonic() < deadline and proc.poll() is None:
        out += proc.stdout.read1(65536)
    assert PROMPT in out, out[-2000:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_forwarded_port_reaches_a_server_in_the_guest(guest_image):
    host_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketvm", "run", "--nic", f"user,hostfwd=tcp::{host_port}-:8080"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out = _read_to_prompt(proc)
        proc.stdin.write(b"mkdir -p /www && echo served-by-the-guest > /www/index.html && httpd -p 8080 -h /www && echo UP-$((4+4))\n")
        proc.stdin.flush()
        while b"UP-8" not in out and proc.poll() is None:
            out += proc.stdout.read1(65536)
        body = b""
        for _ in range(50):  # httpd may need a moment to listen
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/index.html", timeout=10) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.2)
        assert body == b"served-by-the-guest\n"
        proc.stdin.write(b"poweroff\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_restored_guest_is_on_the_network_again(http_server, guest_image, tmp_path, monkeypatch):
    """The snapshot records the interface; the restored VM gets a fresh user
    network (the old VM's connections ended with it) and the guest, which
    kept its DHCP address, just goes on using it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "run").mkdir(mode=0o700)
    port = http_server
    snap = tmp_path / "snap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketvm", "run", "--nic", "user", "--name", "netsnap"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _read_to_prompt(proc)
        saved = pocket("snapshot", "netsnap", str(snap), "--stop", timeout=300)
        assert saved.returncode == 0, saved.stderr
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    script = f"wget -q -O - http://10.0.2.2:{port}/hello.txt && echo GOT-$((5+5))\npoweroff\n"
    run = pocket("restore", str(snap), "--discard", stdin=script, timeout=300)
    assert run.returncode == 0, (run.stderr, run.stdout[-2000:])
    assert "hello from the host" in run.stdout and "GOT-10" in run.stdout

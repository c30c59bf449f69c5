"""The host side of vsock on its own: the listening socket, CONNECT lines,
connections to PATH_<port>, readiness reports."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from pocketvm.backends.vsock_unix import VsockUnixHost


@pytest.fixture
def host(tmp_path):
    h = VsockUnixHost(tmp_path / "vm.vsock")
    woken = threading.Event()
    h.attach(woken.set)
    h.woken = woken  # type: ignore[attr-defined]
    yield h
    h.close()


def poll_until(h: VsockUnixHost, cond, timeout: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while True:
        got += h.poll()
        if cond(got):
            return got
        assert time.monotonic() < deadline, "condition not reached"
        h.woken.wait(0.01)  # type: ignore[attr-defined]
        h.woken.clear()  # type: ignore[attr-defined]


def client(path: Path, data: bytes = b"") -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    if data:
        s.sendall(data)
    return s


def test_connect_lines_arrive_whole_or_in_pieces(host):
    a = client(host.path, b"CONNECT 52\n")
    b = client(host.path, b"CONN")
    c = client(host.path, b"CONNECT 4294967295\r\n")
    got = poll_until(host, lambda g: len(g) == 2)
    assert sorted(port for _, port in got) == [52, 4294967295]
    b.sendall(b"ECT 7\nhello")
    (stream, port), = poll_until(host, lambda g: len(g) == 1)
    assert port == 7
    assert stream.recv(64) == b"hello"  # what follows the line is the connection's
    for s in (a, b, c):
        s.close()


def test_handshakes_are_capped_and_time_out(host):
    host.max_handshakes = 4
    host.handshake_timeout = 0.2
    silent = [client(host.path) for _ in range(8)]
    poll_until(host, lambda g: host.open_streams == 4)
    # The others wait in the backlog; as the first ones time out they come in.
    late = []
    deadline = time.monotonic() + 10
    while host.open_streams or any(not _closed(s) for s in silent):
        late += host.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert late == []
    for s in silent:
        s.close()


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_connect_to_host_programs(host, tmp_path):
    assert host.connect(80) is None  # nobody listens on PATH_80
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{host.path}_80")
    lst.listen(1)
    stream = host.connect(80)
    assert stream is not None
    peer, _ = lst.accept()
    assert stream.send(b"to the host") == 11
    assert peer.recv(64) == b"to the host"
    peer.sendall(b"back")
    stream.want(read=True, write=False)
    deadline = time.monotonic() + 10
    while stream.recv(64) is None:
        assert time.monotonic() < deadline
        host.poll()
        time.sleep(0.01)
    stream.close()
    stream.close()  # idempotent
    lst.close()
    peer.close()


def test_close_is_idempotent_and_leaves_a_successors_socket(tmp_path):
    path = tmp_path / "x.vsock"
    h = VsockUnixHost(path)
    path.unlink()
    successor = VsockUnixHost(path)
    h.close()
    h.close()
    assert path.exists()  # not ours any more
    successor.close()
    assert not path.exists()
    assert h.poll() == [] and h.connect(1) is None

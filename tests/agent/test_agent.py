"""The guest agent and its host client, on the host over a Unix socket.

The agent runs as its own process (`agent.py --unix PATH`), exactly the
program a guest runs, so killing it is real. Fake agents that answer
garbage check that the client never hangs and always says what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

import pocketvm.guest
from pocketvm.agent import (
    AgentClient,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
    ChecksumMismatch,
    RemoteError,
    wait_until_up,
)
from pocketvm.guest import agent as proto

AGENT = Path(pocketvm.guest.__file__).parent / "agent.py"
MiB = 1 << 20


class Agent:
    def __init__(self, path: Path, *args: str):
        self.path = path
        self.proc = subprocess.Popen([sys.executable, str(AGENT), "--unix", str(path), *args], stdout=subprocess.DEVNULL)
        self.client = AgentClient.for_unix(path, timeout=20)
        wait_until_up(self.client, 20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path / "agent.sock")
    yield a
    a.stop()


@pytest.fixture
def client(agent) -> AgentClient:
    return agent.client


def test_health_and_version(client, agent):
    h = client.health()
    assert h["ok"] and h["agent"] == proto.VERSION and h["protocol"] == proto.PROTOCOL
    assert h["pid"] == agent.proc.pid


def test_run_argv_and_exit_codes(client):
    r = client.run(["echo", "hello", "world"])
    assert (r.stdout, r.stderr, r.exit_code, r.signal, r.timed_out) == (b"hello world\n", b"", 0, None, False)
    r = client.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    r = client.run("kill -KILL $$")
    assert (r.exit_code, r.signal) == (None, "SIGKILL")


def test_env_cwd_and_shell(client, tmp_path):
    r = client.run("echo $GREETING from $(pwd)", env={"GREETING": "hi"}, cwd=str(tmp_path))
    assert r.stdout == f"hi from {tmp_path}\n".encode()
    r = client.run(["env"], env={"ONLY": "1"}, clear_env=True)
    assert sorted(line.split(b"=")[0] for line in r.stdout.splitlines()) == [b"HOME", b"LOGNAME", b"ONLY", b"PATH",
                                                                           b"USER"]  # fmt: skip


def test_bad_commands_are_clear_errors(client, tmp_path):
    with pytest.raises(RemoteError) as e:
        client.run(["/no/such/program"])
    assert e.value.code == "ENOENT"
    with pytest.raises(RemoteError):
        client.run(["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(RemoteError, match="argv"):
        client.run([])
    with pytest.raises(RemoteError, match="no user"):
        client.run(["true"], user="no-such-user-here")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_another_user(client):
    r = client.run(["id", "-un"], user="nobody")
    assert r.stdout == b"nobody\n"


def test_stdin_is_streamed(client):
    data = os.urandom(3 * MiB)
    r = client.run(["sha256sum"], input=data)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    r = client.run(["cat"])  # no input: /dev/null
    assert r.stdout == b"" and r.exit_code == 0


def test_output_streams_as_it_comes(client):
    """The command's first line reaches us before it gets its input, so
    output is not held back until the end."""
    stream = client.exec_stream("echo ready; read line; echo got $line", stdin=True)
    it = iter(stream)
    assert next(it) == ("stdout", b"ready\n")
    stream.write_stdin(b"42\n")
    assert next(it) == ("stdout", b"got 42\n")
    assert list(it) == []
    assert stream.result is not None and stream.result.exit_code == 0


def test_100_mib_of_output(client):
    size = 100 * MiB
    stream = client.exec_stream(f"yes abcdefghi | head -c {size}; echo done >&2")
    digest = hashlib.sha256()
    got = 0
    chunks = 0
    err = b""
    for name, data in stream:
        if name == "stdout":
            digest.update(data)
            got += len(data)
            chunks += 1
        else:
            err += data
    assert got == size and chunks > 100 and err == b"done\n"
    assert digest.hexdigest() == hashlib.sha256((b"abcdefghi\n" * (size // 10 + 1))[:size]).hexdigest()
    assert stream.result.exit_code == 0


def test_timeout_kills_the_command_and_its_children(client, tmp_path):
    marker = tmp_path / "child.pid"
    r = client.run(f"sleep 60 & echo $! > {marker}; wait", timeout=0.5)
    assert r.timed_out and r.signal == "SIGKILL" and r.exit_code is None
    child = int(marker.read_text())
    _gone(child)


def test_signals_through_the_stream_and_by_pid(client):
    stream = client.exec_stream(["sleep", "60"])
    stream.signal("TERM")
    assert stream.wait().signal == "SIGTERM"
    stream = client.exec_stream("trap 'echo got usr1; exit 7' USR1; echo armed; while :; do sleep 0.05; done")
    it = iter(stream)
    assert next(it) == ("stdout", b"armed\n")
    client.signal(stream.pid, "USR1")
    assert ("stdout", b"got usr1\n") in list(it)  # (the group's sleep died of it too)
    assert stream.result.exit_code == 7
    with pytest.raises(RemoteError) as e:
        client.signal(stream.pid, "TERM")  # no longer running
    assert e.value.code == "ESRCH"
    with pytest.raises(RemoteError, match="unknown signal"):
        client.signal(1, "NOPE")


def test_pty(client):
    r = client.run("tty; test -t 0 && test -t 1 && echo terminal; stty size", pty=True)
    lines = r.stdout.replace(b"\r\n", b"\n").splitlines()
    assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"terminal" and lines[2] == b"24 80"
    r = client.run("read x; echo got $x", pty=True, input=b"hello\n")
    assert b"got hello" in r.stdout


def test_transfers_checked_by_size_only(client, tmp_path):
    """checksum "none": sizes only, and a download goes by sendfile in frames
    of at most 1 MiB; odd sizes and a multiple of the frame come back whole."""
    for n in (0, 1, MiB - 1, MiB, 3 * MiB + 5):
        data = os.urandom(n)
        target = tmp_path / f"f{n}"
        info = client.upload(data, str(target), checksum="none")
        assert info == {"size": n, "checksum": "none", "digest": ""} and target.read_bytes() == data
        back = tmp_path / f"back{n}"
        info = client.download(str(target), back, checksum="none")
        assert back.read_bytes() == data and info["size"] == n and info["digest"] == ""
    # A file object of unknown length, and the size check still applies.
    import io

    client.upload(io.BytesIO(b"x" * 5000), str(tmp_path / "stream"), checksum="none")
    assert (tmp_path / "stream").read_bytes() == b"x" * 5000
    with pytest.raises(RemoteError, match="announced"):
        client._upload(str(tmp_path / "short"), 10, None, None, False, iter([b"abc"]), "none")
    assert not (tmp_path / "short").exists()


def test_file_data_lands_where_the_guest_kernel_copies_it_by_words(tmp_path):
    """Protocol 4: the agent places stream byte s at an address = s + RX_SKEW
    (mod 8) and the client pads with K frames so that each D frame's data
    then sits at an address = its file offset (mod 8): the guest kernel's
    copies into the agent and from it into the file both go 8 bytes at a
    time. Checked on the agent's own Channel, over a socket pair, for frames
    of odd sizes after requests of odd lengths on a reused connection."""
    import ctypes
    import random

    from pocketvm.agent.client import _Conn

    rng = random.Random(5)
    host, guest = socket.socketpair()
    ch = proto.Channel(guest)
    conn = _Conn(host, 10)
    align = (proto.ALIGN, -proto.RX_SKEW % proto.ALIGN)
    for _ in range(3):
        conn.send_json({"op": "upload", "path": "x" * rng.randrange(40)})
        assert ch.recv()[0] == proto.T_JSON
        offset = 0
        for size in [rng.randrange(1, 70000) for _ in range(12)] + [proto.MAX_DATA, 8]:
            payload = os.urandom(size)
            sender = threading.Thread(target=conn.send_data_at, args=(payload, offset, align))
            sender.start()
            kind, view = ch.recv()  # K padding frames are skipped
            sender.join()
            address = ctypes.addressof(ctypes.c_char.from_buffer(view))
            assert kind == proto.T_DATA and bytes(view) == payload
            assert address % 8 == offset % 8, (size, offset)
            offset += size
    host.close()
    guest.close()


def test_no_checksum_falls_back_for_an_older_agent(client, tmp_path, monkeypatch):
    """An agent before protocol 3 refuses "none" before any data moves: the
    client asks again with its default checksum."""
    from pocketvm.agent import client as C

    asked = []
    real = C.AgentClient._request_json

    def older(self, request):
        if request.get("checksum") == "none":
            asked.append(request["op"])
            request = {**request, "checksum": "md4"}  # what an older agent says to "none"
        return real(self, request)

    monkeypatch.setattr(C.AgentClient, "_request_json", older)
    info = client.upload(b"data" * 1000, str(tmp_path / "f"), checksum="none")
    assert info["checksum"] == "adler32" and (tmp_path / "f").read_bytes() == b"data" * 1000
    back = tmp_path / "back"
    assert client.download(str(tmp_path / "f"), back, checksum="none")["checksum"] == "adler32"
    assert back.read_bytes() == b"data" * 1000 and asked == ["upload", "download"]


def test_upload_and_download_64_mib_with_checksums(client, tmp_path):
    data = os.urandom(64 * MiB)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    target = tmp_path / "guest" / "big.bin"
    with pytest.raises(RemoteError) as e:
        client.upload(local, str(target))
    assert e.value.code == "ENOENT"
    info = client.upload(local, str(target), mode=0o600, parents=True)
    assert info["digest"] == f"{zlib.adler32(data):08x}" and info["checksum"] == "adler32"
    assert target.read_bytes() == data and (target.stat().st_mode & 0o777) == 0o600
    back = tmp_path / "back.bin"
    info = client.download(str(target), back)
    assert back.read_bytes() == data and info["mode"] == 0o600 and info["size"] == len(data)
    # CRC-32 and SHA-256 when asked, both ways.
    info = client.upload(data[: 3 * MiB], str(target), checksum="crc32")
    assert info["digest"] == f"{zlib.crc32(data[: 3 * MiB]):08x}"
    info = client.download(str(target), back, checksum="crc32")
    assert info["digest"] == f"{zlib.crc32(data[: 3 * MiB]):08x}" and back.read_bytes() == data[: 3 * MiB]
    info = client.upload(data[: 5 * MiB], str(target), checksum="sha256")
    assert info["digest"] == hashlib.sha256(data[: 5 * MiB]).hexdigest()
    info = client.download(str(target), back, checksum="sha256")
    assert info["digest"] == hashlib.sha256(data[: 5 * MiB]).hexdigest() and back.read_bytes() == data[: 5 * MiB]
    with pytest.raises(ValueError):
        client.upload(b"x", str(target), checksum="md4")
    with pytest.raises(RemoteError, match="unknown checksum"):
        client._simple({"op": "download", "path": str(target), "checksum": "md4"})
    # From bytes and to bytes, and an empty file.
    client.write_bytes(str(tmp_path / "small"), b"small file")
    assert client.read_bytes(str(tmp_path / "small")) == b"small file"
    client.write_bytes(str(tmp_path / "empty"), b"")
    assert client.read_bytes(str(tmp_path / "empty")) == b""
    assert not [p for p in (tmp_path / "guest").iterdir() if p.name.startswith(".pocketvm")]


def test_download_errors(client, tmp_path):
    with pytest.raises(RemoteError) as e:
        client.download(str(tmp_path / "missing"), tmp_path / "x")
    assert e.value.code == "ENOENT" and not (tmp_path / "x").exists()
    with pytest.raises(RemoteError) as e:
        client.download(str(tmp_path), tmp_path / "x")
    assert e.value.code == "EISDIR"
    with pytest.raises(RemoteError, match="not a regular file"):
        client.download("/dev/null", tmp_path / "x")


def test_stat_list_mkdir_remove(client, tmp_path):
    d = tmp_path / "d"
    client.mkdir(str(d / "a" / "b"), parents=True)
    with pytest.raises(RemoteError) as e:
        client.mkdir(str(d / "a"))
    assert e.value.code == "EEXIST"
    for i in range(1200):  # more than one batch of entries
        (d / f"f{i:04d}").write_bytes(b"x" * i)
    entries = client.list(str(d))
    assert len(entries) == 1201
    by_name = {e["name"]: e for e in entries}
    assert by_name["a"]["type"] == "dir" and by_name["f0007"] == {**by_name["f0007"], "type": "file", "size": 7}
    st = client.stat(str(d / "f0010"))
    assert st["type"] == "file" and st["size"] == 10
    assert client.exists(str(d)) and not client.exists(str(d / "nope"))
    with pytest.raises(RemoteError):
        client.remove(str(d))  # not empty
    client.remove(str(d), recursive=True)
    assert not d.exists()
    with pytest.raises(RemoteError) as e:
        client.list(str(d))
    assert e.value.code == "ENOENT"


def test_many_requests_at_once(client, tmp_path):
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            client.write_bytes(str(tmp_path / f"m{i}"), f"marker {i}".encode())
            r = client.run(f"sleep 0.2; cat {tmp_path / f'm{i}'}")
            results[i] = r.stdout
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == {i: f"marker {i}".encode() for i in range(12)}


def test_agent_killed_mid_command_is_a_clear_error(agent, client):
    stream = client.exec_stream(["sleep", "60"])
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    with pytest.raises(AgentUnavailable, match="closed the connection"):
        stream.wait()
    with pytest.raises(AgentUnavailable):
        client.health()


def test_client_going_away_kills_the_command(client, tmp_path):
    marker = tmp_path / "pid"
    stream = client.exec_stream(f"echo $$ > {marker}; echo started; exec sleep 60")
    it = iter(stream)
    assert next(it) == ("stdout", b"started\n")
    pid = int(marker.read_text())
    stream.close()
    _gone(pid)
    assert client.health()["ok"]


def test_garbage_to_the_agent_keeps_it_serving(agent, client):
    for junk in (b"GET / HTTP/1.0\r\n\r\n", proto.FRAME.pack(b"J", 1 << 30), proto.FRAME.pack(b"J", 5) + b"[1,2]",
                 proto.FRAME.pack(b"J", 4) + b"\xff\xfe{}", proto.FRAME.pack(b"D", 3) + b"abc", b"J\x00"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(agent.path))
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        try:
            s.recv(4096)  # closed (perhaps after an error reply), never hangs
        except ConnectionResetError:
            pass  # closed with our junk unread
        s.close()
    assert client.run(["true"]).exit_code == 0
    # An unknown op gets an error reply.
    with pytest.raises(RemoteError) as e:
        client._simple({"op": "format-the-disk"})
    assert e.value.code == "ENOSYS"


# --- a hostile agent ------------------------------------------------------------------------------


class FakeAgent:
    """Answers every connection with `reply` (after reading the request frame)."""

    def __init__(self, path: Path, reply: bytes, close: bool = True, delay: float = 0.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.reply, self.close_after, self.delay = reply, close, delay
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            try:
                head = c.recv(5)
                if len(head) == 5:
                    c.recv(struct.unpack(">I", head[1:])[0])
                time.sleep(self.delay)
                c.sendall(self.reply)
                if self.close_after:
                    c.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _frame(kind: bytes, payload: bytes) -> bytes:
    return proto.FRAME.pack(kind, len(payload)) + payload


GARBAGE = [
    (b"HTTP/1.1 200 OK\r\n\r\n", AgentProtocolError),
    (proto.FRAME.pack(b"J", 1 << 31), AgentProtocolError),
    (proto.FRAME.pack(b"O", proto.MAX_DATA + 1), AgentProtocolError),
    (_frame(b"J", b"not json"), AgentProtocolError),
    (_frame(b"J", b"[1, 2]"), AgentProtocolError),
    (_frame(b"J", b'{"ok": "maybe"}'), AgentProtocolError),
    (_frame(b"J", b'{"ok": false, "error": "' + b"x" * 5000 + b'"}'), RemoteError),
    (_frame(b"J", b"{}")[:6], AgentUnavailable),
    (b"", AgentUnavailable),
    (_frame(b"K", b"") * 3 + _frame(b"D", b"data"), AgentProtocolError),
]


@pytest.mark.parametrize("reply,error", GARBAGE)
def test_garbage_from_the_agent_is_a_clear_error(tmp_path, reply, error):
    fake = FakeAgent(tmp_path / "fake.sock", reply)
    client = AgentClient.for_unix(tmp_path / "fake.sock", timeout=5)
    try:
        for call in (client.health, lambda: client.run(["true"]), lambda: client.read_bytes("/x"),
                     lambda: client.list("/")):  # fmt: skip
            with pytest.raises(error) as e:
                call()
            assert len(str(e.value)) < 600
    finally:
        fake.stop()


def test_bad_command_results_from_the_agent(tmp_path):
    started = _frame(b"J", b'{"event": "started", "pid": 5}')
    for result in (b'{"ok": true, "exit_code": 999, "signal": null, "timed_out": false}',
                   b'{"ok": true, "exit_code": 0, "signal": "SIGKILL", "timed_out": false}',
                   b'{"ok": true, "exit_code": 0, "signal": null}',
                   b'{"event": "started", "pid": -1}'):  # fmt: skip
        path = tmp_path / f"fake{hash(result)}.sock"
        fake = FakeAgent(path, started + _frame(b"J", result) if b"started" not in result else _frame(b"J", result))
        with pytest.raises(AgentProtocolError):
            AgentClient.for_unix(path, timeout=5).run(["true"])
        fake.stop()


def test_download_that_lies_about_its_size(tmp_path):
    head = _frame(b"J", b'{"event": "file", "size": 3, "mode": 420}')
    for body in (_frame(b"D", b"abcd"), _frame(b"D", b"ab") + _frame(b"D", b"") + _frame(b"J", b'{"ok": true, "size": 2, "digest": "x"}')):
        path = tmp_path / f"lie{len(body)}.sock"
        fake = FakeAgent(path, head + body)
        with pytest.raises(ChecksumMismatch):
            AgentClient.for_unix(path, timeout=5).download("/x", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        fake.stop()


def test_silent_agent_times_out(tmp_path):
    fake = FakeAgent(tmp_path / "silent.sock", b"", close=False, delay=30)
    t0 = time.monotonic()
    with pytest.raises(AgentTimeout):
        AgentClient.for_unix(tmp_path / "silent.sock", timeout=0.5).health()
    assert time.monotonic() - t0 < 10
    fake.stop()


def test_nobody_listening(tmp_path):
    with pytest.raises(AgentUnavailable, match="cannot connect"):
        AgentClient.for_unix(tmp_path / "none.sock", timeout=2).health()


def _gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie still answers kill(0): check its state.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


# --- through a VM's vsock socket (Firecracker's CONNECT convention) ---------------------------


class VmSocket:
    """Plays a VM's vsock Unix socket: reads `CONNECT <port>`, answers
    `answer(port)` and then carries the stream to the agent's Unix socket."""

    def __init__(self, path: Path, agent_path: Path, answer=lambda port: f"OK {1 << 30}\n".encode()):
        self.agent_path, self.answer = agent_path, answer
        self.ports: list[int] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n"):
            line += c.recv(1)
        port = int(line.split()[1])
        self.ports.append(port)
        reply = self.answer(port)
        if not reply:
            c.close()
            return
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(str(self.agent_path))
        c.sendall(reply)
        for a, b in ((c, up), (up, c)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def stop(self) -> None:
        self.sock.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_through_the_vm_socket(agent, tmp_path):
    vm = VmSocket(tmp_path / "vm.vsock", agent.path)
    try:
        client = AgentClient.for_vm_socket(tmp_path / "vm.vsock", timeout=10)
        assert client.run(["echo", "via vsock"]).stdout == b"via vsock\n"
        data = os.urandom(3 * MiB)
        client.upload(data, str(tmp_path / "f"))
        assert client.read_bytes(str(tmp_path / "f")) == data
        assert set(vm.ports) == {52}
        assert AgentClient.for_vm_socket(tmp_path / "vm.vsock", port=1234).health()["ok"]
        assert vm.ports[-1] == 1234
    finally:
        vm.stop()


@pytest.mark.parametrize(
    "answer,error,message",
    [
        (lambda port: b"", AgentUnavailable, "no agent listens on vsock port 52"),
        (lambda port: b"NOPE\n", AgentProtocolError, "answered"),
        (lambda port: b"OK 12x\n", AgentProtocolError, "answered"),
    ],
)
def test_vm_socket_refusals(agent, tmp_path, answer, error, message):
    vm = VmSocket(tmp_path / "vm.vsock", agent.path, answer)
    try:
        with pytest.raises(error, match=message):
            AgentClient.for_vm_socket(tmp_path / "vm.vsock", timeout=10).health()
    finally:
        vm.stop()


def test_a_silent_client_does_not_hold_the_agent(tmp_path):
    """A client that connects and never sends its request (or stops in the
    middle of an upload) is dropped after the request timeout."""
    a = Agent(tmp_path / "a.sock", "--request-timeout", "0.3")
    try:
        for first in (b"", proto.FRAME.pack(b"J", 40) + b'{"op": "upload", "path": "/tmp/x"'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(a.path))
            s.sendall(first)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            s.close()
        # A command still runs longer than that, quietly.
        r = a.client.run(["sleep", "1"])
        assert r.exit_code == 0
    finally:
        a.stop()


def test_finished_requests_leave_no_threads_in_the_agent(agent, client):
    """A command leaves no thread behind (its stdin is served by its
    connection's thread): an open connection has one thread, and once
    connections close, at most SPARE_WORKERS threads stay waiting for the next."""
    import re as _re

    def threads() -> int:
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        return int(_re.search(r"Threads:\s+(\d+)", status).group(1))

    open_conns = 1  # the client keeps the connection of its health check
    held = []
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(agent.path))
        s.sendall(_frame(b"J", b'{"op": "exec", "argv": ["true"], "stdin": true}'))
        reply = b""
        while b'"event":"exit"' not in reply:  # read to the result, but keep the socket open
            reply += s.recv(65536)
        held.append(s)
    most = 1 + open_conns + len(held) + proto.SPARE_WORKERS
    deadline = time.monotonic() + 10
    while threads() > most and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 1 + open_conns + len(held) <= threads() <= most
    for s in held:
        s.close()
    most = 1 + open_conns + proto.SPARE_WORKERS
    deadline = time.monotonic() + 10
    while threads() > most and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads() <= most


def test_commands_get_a_login_environment(tmp_path):
    """Under init the agent has no HOME: commands get the user's, and start there."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "USER", "LOGNAME")}
    proc = subprocess.Popen([sys.executable, str(AGENT), "--unix", str(tmp_path / "a.sock")], env=env,
                            stdout=subprocess.DEVNULL, cwd="/")  # fmt: skip
    try:
        client = AgentClient.for_unix(tmp_path / "a.sock", timeout=20)
        wait_until_up(client, 20)
        import pwd

        me = pwd.getpwuid(os.getuid())
        r = client.run("echo $HOME $USER $LOGNAME; pwd")
        assert r.stdout.decode().split() == [me.pw_dir, me.pw_name, me.pw_name, me.pw_dir]
        r = client.run("echo $HOME; pwd", env={"HOME": str(home)})
        assert r.stdout.decode().split() == [str(home), str(home)]
    finally:
        proc.kill()
        proc.wait()


def test_a_connection_serves_requests_one_after_the_other(agent):
    """Protocol 2: after a final reply ("keep": true) the same connection takes the next request."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(agent.path))
    ch = proto.Channel(s)
    for i in range(3):
        ch.send_json({"op": "exec", "argv": ["echo", str(i)]})
        assert ch.recv_json()["event"] == "started"
        kind, data = ch.recv()
        assert (kind, bytes(data)) == (b"O", f"{i}\n".encode())
        final = ch.recv_json()
        assert final["exit_code"] == 0 and final["keep"] is True
        ch.send_json({"op": "health"})
        assert ch.recv_json()["keep"] is True
    s.close()


def test_the_client_reuses_connections_and_replaces_stale_ones(tmp_path):
    connects = []
    path = tmp_path / "agent.sock"

    def connect(timeout: float) -> socket.socket:
        connects.append(1)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(path))
        return s

    a = Agent(path)
    try:
        client = AgentClient(connect, timeout=20)
        for _ in range(5):
            assert client.run(["true"]).exit_code == 0
            client.health()
        assert len(connects) == 1
        a.stop()
        a = Agent(path)  # the kept connection now leads nowhere: a new one is made
        assert client.run(["echo", "again"]).stdout == b"again\n"
        assert len(connects) == 2
        # A command given stdin leaves its connection unused afterwards.
        assert client.run(["cat"], input=b"x").stdout == b"x"
        assert client.run(["true"]).exit_code == 0
        assert len(connects) == 3
    finally:
        a.stop()


def test_stdin_and_output_flow_at_once(client):
    """A command that writes as much as it reads: neither side waits for the other."""
    data = os.urandom(8 * MiB)
    r = client.run(["cat"], input=data)
    assert r.stdout == data
    # One that never reads its input ends all the same.
    r = client.run(["sh", "-c", "echo bye"], input=os.urandom(4 * MiB))
    assert (r.stdout, r.exit_code) == (b"bye\n", 0)


def test_commands_start_at_nice_zero(client):
    """The agent's own threads may run at a raised priority; what it starts does not."""
    for kw in ({}, {"pty": True}):
        r = client.run(["sh", "-c", "cut -d' ' -f19 /proc/$$/stat"], **kw)
        assert r.stdout.strip() == b"0", r.stdout


# --- the upload window ------------------------------------------------------------------------


@pytest.fixture
def windowed(tmp_path):
    """An agent whose upload window disk is played by a 1 MiB file (two 512 KiB slots)."""
    from pocketvm.backends import upload_window

    window = tmp_path / "vm.vsock.upload"
    upload_window.create(window, 1 << 20).close()
    a = Agent(tmp_path / "agent.sock", "--upload-window", str(window))
    a.client.upload_window = window
    yield a, window
    a.stop()


def _count_window_writes(monkeypatch) -> list[int]:
    from pocketvm.backends.upload_window import WindowWriter

    lengths: list[int] = []
    real = WindowWriter.write

    def write(self, offset, data):
        lengths.append(len(data))
        return real(self, offset, data)

    monkeypatch.setattr(WindowWriter, "write", write)
    return lengths


def test_uploads_go_through_the_upload_window(windowed, tmp_path, monkeypatch):
    """Protocol 5: the client fills a slot of the window file, names it in a
    W frame, and refills a slot only after the agent answered that it read
    it. Sizes around the slot size land whole, with every checksum, and the
    window is a hole again after each upload."""
    import io

    agent, window = windowed
    lengths = _count_window_writes(monkeypatch)
    slot = 512 << 10
    for n, checksum in ((1, "none"), (slot - 1, "adler32"), (slot, "crc32"), (5 * slot + 7, "sha256"), (0, "none")):
        data = os.urandom(n)
        target = tmp_path / f"f{n}"
        lengths.clear()
        agent.client.upload(data, str(target), checksum=checksum)
        assert target.read_bytes() == data
        assert lengths == [slot] * (n // slot) + ([n % slot] if n % slot else [])
        assert window.stat().st_size == 1 << 20 and window.stat().st_blocks == 0
    # A file object of unknown length is regrouped into whole slots.
    lengths.clear()
    agent.client.upload(io.BytesIO(b"y" * (3 * slot + 1)), str(tmp_path / "stream"))
    assert (tmp_path / "stream").read_bytes() == b"y" * (3 * slot + 1) and lengths == [slot] * 3 + [1]
    with pytest.raises(RemoteError, match="announced"):
        agent.client._upload(str(tmp_path / "short"), 10, None, None, False, iter([b"abc"]), "none")
    assert not (tmp_path / "short").exists()


def test_the_window_is_lent_to_one_upload_at_a_time(windowed, tmp_path, monkeypatch):
    """Uploads at once: one has the window, the others stream through the
    connection; nobody's data is mixed up with anyone else's."""
    agent, window = windowed
    lengths = _count_window_writes(monkeypatch)
    blobs = [os.urandom(6 * MiB + i) for i in range(4)]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            agent.client.upload(blobs[i], str(tmp_path / f"b{i}"), checksum="none")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all((tmp_path / f"b{i}").read_bytes() == blobs[i] for i in range(4))
    assert 0 < sum(lengths) < sum(len(b) for b in blobs)  # some went through the window, not all
    assert window.stat().st_blocks == 0


def test_without_a_usable_window_uploads_stream(windowed, tmp_path, monkeypatch):
    """No window file, one the client may not write, or an agent that lends
    none: the data goes through the connection, as before protocol 5."""
    agent, window = windowed
    lengths = _count_window_writes(monkeypatch)
    data = os.urandom(MiB + 3)
    for path in (tmp_path / "missing.upload", tmp_path):  # a directory cannot be opened for writing
        agent.client.upload_window = path
        agent.client.upload(data, str(tmp_path / "f"))
        assert (tmp_path / "f").read_bytes() == data
    plain = Agent(tmp_path / "plain.sock")  # finds no window disk
    try:
        plain.client.upload_window = window
        plain.client.upload(data, str(tmp_path / "g"))
        assert (tmp_path / "g").read_bytes() == data
    finally:
        plain.stop()
    assert lengths == []


def test_a_window_slot_outside_the_window_drops_the_connection(windowed, tmp_path):
    """W frames are the client's word for where data is: one outside the
    window, or one without a lent window, ends the connection; the agent
    serves the next one."""
    agent, _ = windowed
    for request, slot in (({"window": True}, (1 << 20, 4096)), ({"window": True}, (4096 + 1, 10)),
                          ({"window": True}, (0, (512 << 10) + 1)), ({}, (0, 10))):  # fmt: skip
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(agent.path))
        target = str(tmp_path / "never")
        body = json.dumps({"op": "upload", "path": target, "checksum": "none", **request}).encode()
        sock.sendall(_frame(b"J", body))
        reply = sock.recv(65536)
        assert b'"ready"' in reply and (b'"window"' in reply) == bool(request)
        sock.sendall(_frame(b"W", proto.WINDOW_SLOT.pack(*slot)))
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        sock.close()
        assert rest == b"" and not (tmp_path / "never").exists()
    assert agent.client.health()["ok"]


@pytest.mark.parametrize("window,answer", [
    ({"slot": 1 << 40, "slots": 2}, None),  # does not fit the file: streamed
    ({"slot": 4096, "slots": 2}, proto.WINDOW_SLOT.pack(8192, 1)),  # answers another slot
])  # fmt: skip
def test_a_lying_agent_cannot_misuse_the_window(tmp_path, window, answer):
    """A window the file cannot hold is not used; a W answer for a slot the
    client did not send is a protocol error, not a hang or a wrong write."""
    from pocketvm.backends import upload_window

    path = tmp_path / "vm.vsock.upload"
    upload_window.create(path, 64 << 10).close()
    ready = _frame(b"J", json.dumps({"event": "ready", "window": window}).encode())
    fake = FakeAgent(tmp_path / "fake.sock", ready + (_frame(b"W", answer) if answer else b""), close=False)
    client = AgentClient.for_unix(tmp_path / "fake.sock", timeout=3)
    client.upload_window = path
    try:
        with pytest.raises(AgentProtocolError if answer else (AgentTimeout, AgentUnavailable)):
            client.upload(os.urandom(20000), "/x", checksum="none")
    finally:
        fake.stop()
    assert path.stat().st_blocks == 0 and path.stat().st_size == 64 << 10


def test_host_and_agent_agree_on_the_window_disk():
    """The agent is a standalone file (it cannot import pocketvm): its copy of
    the serial it looks for must be the one the VM gives the disk."""
    from pocketvm.backends import upload_window

    assert proto.WINDOW_SERIAL == upload_window.SERIAL
    assert upload_window.DEFAULT_SIZE // proto.WINDOW_SLOTS <= proto.WINDOW_MAX_SLOT

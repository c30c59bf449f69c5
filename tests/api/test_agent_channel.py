"""The GuestChannel over the guest agent, with the agent running on the host
on a Unix socket (it is plain python3): output, exit codes, stdin, timeouts,
files in pieces with checksums, and a dead agent, in the sandbox layers' terms."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pocketvm.agent")
AGENT = Path(__file__).resolve().parents[2] / "pocketvm" / "guest" / "agent.py"
if not AGENT.exists():
    pytest.skip("no guest agent in this tree", allow_module_level=True)

from pocketvm.agent.client import AgentClient, wait_until_up  # noqa: E402
from pocketvm.manager import channel as C  # noqa: E402
from pocketvm.manager.agent_channel import AgentChannel  # noqa: E402


@pytest.fixture
def agent(tmp_path):
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([sys.executable, str(AGENT), "--unix", str(sock)], stdin=subprocess.DEVNULL)
    client = AgentClient.for_unix(sock, timeout=10)
    wait_until_up(client, 20)  # bound is not yet listening: wait for an answer
    yield proc, AgentChannel(client=client)
    proc.kill()
    proc.wait()


def run(ch: AgentChannel, command, **kw) -> tuple[bytes, bytes, C.Exit]:
    out, err, end = bytearray(), bytearray(), None
    for item in ch.stream(C.ExecRequest(command, **kw)):
        if isinstance(item, C.Output):
            (out if item.stream == "stdout" else err).extend(item.data)
        else:
            assert end is None
            end = item
    assert end is not None
    return bytes(out), bytes(err), end


def test_commands(agent):
    _, ch = agent
    assert run(ch, ["echo", "hi"]) == (b"hi\n", b"", C.Exit(0))
    out, err, end = run(ch, "echo out; echo err >&2; exit 3")
    assert (out, err, end.exit_code) == (b"out\n", b"err\n", 3)
    assert run(ch, ["cat"], stdin=b"x" * 300_000)[0] == b"x" * 300_000
    assert run(ch, ["sh", "-c", "echo $GREETING"], env={"GREETING": "hello"})[0] == b"hello\n"
    _, _, end = run(ch, "kill -9 $$")
    assert end.signal == signal.SIGKILL and end.exit_code == 128 + 9
    with pytest.raises(C.CommandTimeout, match="longer than 0.5 s"):
        run(ch, ["sleep", "30"], timeout=0.5)


def test_files(agent, tmp_path):
    _, ch = agent
    data = os.urandom(8 << 20)
    target = tmp_path / "in-guest.bin"
    assert ch.write_file(str(target), (data[i:i + 100_000] for i in range(0, len(data), 100_000)), 0o600) == len(data)
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o600
    back = b"".join(ch.read_file(str(target)))
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    with pytest.raises(C.GuestFileError, match="missing"):
        list(ch.read_file(str(tmp_path / "missing")))


def test_a_dead_agent_is_a_clear_error(agent):
    proc, ch = agent
    proc.kill()
    proc.wait()
    with pytest.raises(C.AgentUnavailable) as e:
        run(ch, ["true"])
    assert "\n" not in str(e.value)

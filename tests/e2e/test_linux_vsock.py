"""The Debian guest's kernel talks virtio-vsock to pocketvm.

A small static program (vsock_tool.c, cross-compiled here) runs in the
BusyBox guest, which has no vsock tool of its own. Bytes move both ways,
in connections opened from either side, through the VM's Unix socket by
Firecracker's convention: the host connects and writes `CONNECT <port>`,
the guest reaches a host program listening on `PATH_<port>`.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from e2etools import BOOT_TIMEOUT

pytestmark = pytest.mark.slow

PROMPT = b"pocket:~# "
SIZE = int(os.environ.get("POCKETVM_VSOCK_E2E_BYTES", str(64 << 20)))
HERE = Path(__file__).parent


def _disk_with(path: Path, files: dict[str, Path]) -> Path:
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "vsock", str(path)], check=True, capture_output=True)
    for name, src in files.items():
        subprocess.run(["debugfs", "-w", "-R", f"write {src} {name}", str(path)], check=True, capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "sif vsock_tool mode 0100755", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def vsock_disk(tmp_path_factory, guest_image) -> Path:
    tmp = tmp_path_factory.mktemp("vsock")
    tool = tmp / "vsock_tool"
    subprocess.run(
        ["riscv64-linux-gnu-gcc", "-O2", "-static", "-o", str(tool), str(HERE / "vsock" / "vsock_tool.c")], check=True
    )
    return _disk_with(tmp / "disk.img", {"vsock_tool": tool})


class Guest:
    """`pocket run` (or other `pocket` arguments) with the console on pipes."""

    def __init__(self, disk: Path, sock: Path, args: list[str] | None = None):
        self.sock = sock
        args = args or ["run", "--disk", f"{disk},ro", "--vsock", str(sock)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pocketvm", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.out = b""
        self.mark = 0  # where the output of the last command typed starts
        if args[0] == "run":
            self.wait_for(PROMPT, BOOT_TIMEOUT)

    def wait_for(self, pattern: bytes, timeout: float = 120) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern if isinstance(pattern, bytes) else pattern.encode())
        while True:
            m = rx.search(self.out, self.mark)
            if m is not None:
                return m
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, self.out[-3000:]
            if select.select([self.proc.stdout], [], [], min(left, 1.0))[0]:
                self.out += self.proc.stdout.read1(65536)  # type: ignore[union-attr]

    def type(self, line: str) -> None:
        self.mark = len(self.out)
        self.proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.type("poweroff")
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def guest(vsock_disk, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    g = Guest(vsock_disk, run / "vm.vsock")
    # The initramfs loads the vsock transport when it finds the device.
    g.type("mount -o ro /dev/vda /mnt && grep -q '^vmw_vsock_virtio_transport ' /proc/modules && echo VSOCK-$((2+3))-READY")
    g.wait_for(rb"VSOCK-5-READY")
    yield g
    g.close()
    assert g.proc.returncode == 0, g.out[-3000:]


def checksums(data: bytes | np.ndarray) -> tuple[int, int]:
    """vsock_tool's checksum: sum of the 64-bit words and sum of (i+1)*word, mod 2^64."""
    w = np.frombuffer(data, dtype="<u8")
    idx = np.arange(1, len(w) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(w.sum(dtype=np.uint64)), int((w * idx).sum(dtype=np.uint64))


def pattern(nbytes: int) -> np.ndarray:
    i = np.arange(nbytes // 8, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (i * np.uint64(0x9E3779B97F4A7C15)) ^ (i >> np.uint64(7))


def _connect(sock: Path, port: int) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(sock))
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(1)
        assert chunk, f"guest refused the connection to port {port}"
        line += chunk
    m = re.fullmatch(rb"OK (\d+)\n", line)
    assert m, line
    return s, int(m.group(1))


def test_host_to_guest_echo_both_ways_with_checksums(guest, capsys):
    """The host connects to a guest port, sends SIZE bytes and reads them
    back at the same time: SIZE bytes each way through one connection."""
    guest.type("/mnt/vsock_tool echo 5000 &")
    guest.wait_for(rb"LISTENING 5000")
    data = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    t0 = time.monotonic()
    s, host_port = _connect(guest.sock, 5000)
    assert host_port >= 1 << 30

    def send() -> None:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    elapsed = time.monotonic() - t0
    sender.join(10)
    s.close()
    assert len(got) == SIZE and bytes(got) == data
    m = guest.wait_for(rb"ECHOED (\d+) (\d+) (\d+)\r?\n")
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (SIZE, *checksums(data))
    with capsys.disabled():
        print(f"\nvsock echo: {SIZE >> 20} MiB each way in {elapsed:.1f} s = {SIZE / elapsed / (1 << 20):.1f} MiB/s per direction")


def test_guest_to_host_connection_with_checksums(guest, capsys):
    """The guest connects to host port 6000 (a listener on PATH_6000), sends
    SIZE bytes of a known pattern and reads back what the host echoes."""
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{guest.sock}_6000")
    lst.listen(1)
    lst.settimeout(120)
    received = bytearray()
    timing: dict[str, float] = {}

    def serve() -> None:
        conn, _ = lst.accept()
        conn.settimeout(120)
        timing["start"] = time.monotonic()
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            received.extend(chunk)
            conn.sendall(chunk)
        timing["end"] = time.monotonic()
        conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    guest.type(f"/mnt/vsock_tool send 2 6000 {SIZE}")
    m = guest.wait_for(rb"(SENT (\d+) GOT (\d+) (\d+) (\d+))\r?\n|CONNECT-FAILED", 300)
    server.join(30)
    lst.close()
    assert m.group(1), "the guest could not connect to the host"
    expected = pattern(SIZE)
    assert len(received) == SIZE
    assert np.array_equal(np.frombuffer(received, dtype="<u8"), expected)
    assert (int(m.group(2)), int(m.group(3))) == (SIZE, SIZE)
    assert (int(m.group(4)), int(m.group(5))) == checksums(expected.tobytes())
    elapsed = timing["end"] - timing["start"]
    with capsys.disabled():
        print(f"\nvsock guest->host: {SIZE >> 20} MiB each way in {elapsed:.1f} s = {SIZE / elapsed / (1 << 20):.1f} MiB/s per direction")


def test_guest_connection_to_nobody_is_refused(guest):
    guest.type("/mnt/vsock_tool send 2 6001 8")
    guest.wait_for(rb"CONNECT-FAILED")
    # A host connection to a port nobody listens on is closed without OK.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(guest.sock))
    s.sendall(b"CONNECT 4999\n")
    assert s.recv(64) == b""
    s.close()


def test_restore_resets_old_connections_and_new_ones_work(vsock_disk, tmp_path, monkeypatch):
    """A connection open at the snapshot ends with the old VM: the restored
    guest is told by the transport reset event (its read fails), and new
    connections to the restored VM's own socket work."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    sock = run / "pocketvm" / "vs-a.vsock"  # the default: NAME.vsock beside the control socket
    g = Guest(vsock_disk, sock, ["run", "--name", "vs-a", "--disk", f"{vsock_disk},ro"])
    restored = None
    try:
        g.wait_for(PROMPT, BOOT_TIMEOUT)
        g.type("mount -o ro /dev/vda /mnt && /mnt/vsock_tool echo 5000 &")
        g.wait_for(rb"LISTENING 5000")
        s, _ = _connect(sock, 5000)
        s.sendall(b"before the snapshot")
        assert s.recv(64) == b"before the snapshot"
        snap = tmp_path / "snap"
        done = subprocess.run([sys.executable, "-m", "pocketvm", "snapshot", "vs-a", str(snap), "--stop"],
                              capture_output=True, timeout=300, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert g.proc.wait(60) == 0
        assert s.recv(64) == b""  # the old VM is gone, and its end of the connection
        s.close()
        restored = Guest(vsock_disk, run / "pocketvm" / "vs-b.vsock", ["restore", str(snap), "--name", "vs-b"])
        restored.wait_for(rb"read: Connection reset by peer", 120)
        restored.type("/mnt/vsock_tool echo 5001 &")
        restored.wait_for(rb"LISTENING 5001")
        s2, _ = _connect(restored.sock, 5001)
        s2.sendall(b"after the restore")
        assert s2.recv(64) == b"after the restore"
        s2.close()
        restored.wait_for(rb"ECHOED 17 ")
    finally:
        g.close()
        if restored is not None:
            restored.close()
    assert restored.proc.returncode == 0


def test_concurrent_connections(guest):
    """Eight host programs talk to eight guest servers at the same time."""
    ports = range(5200, 5208)
    guest.type(" ".join(f"/mnt/vsock_tool echo {p} &" for p in ports))
    for p in ports:
        guest.wait_for(f"LISTENING {p}".encode())
    blobs = {p: os.urandom(1 << 20) for p in ports}
    echoed: dict[int, bytes] = {}

    def talk(port: int) -> None:
        s, _ = _connect(guest.sock, port)
        threading.Thread(target=lambda: (s.sendall(blobs[port]), s.shutdown(socket.SHUT_WR)), daemon=True).start()
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        s.close()
        echoed[port] = bytes(got)

    threads = [threading.Thread(target=talk, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert echoed == blobs


def test_either_end_going_away_mid_transfer(guest):
    """A guest program killed mid-transfer ends the host's stream; a host
    program that goes away mid-transfer fails the guest program's writes."""
    guest.type("/mnt/vsock_tool echo 5300 & echo PID-$!-END")
    pid = int(guest.wait_for(rb"PID-(\d+)-END").group(1))
    guest.wait_for(rb"LISTENING 5300")
    s, _ = _connect(guest.sock, 5300)
    received = []
    ended = threading.Event()

    def read() -> None:
        try:
            while chunk := s.recv(1 << 20):
                received.append(len(chunk))
        except OSError:
            pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    s.sendall(os.urandom(1 << 20))
    guest.type(f"kill -9 {pid}")
    with pytest.raises(OSError):  # BrokenPipe or ConnectionReset, once the end shows
        for _ in range(10_000):
            s.sendall(b"x" * 65536)
    assert ended.wait(60) and sum(received) > 0
    s.close()

    guest.wait_for(PROMPT)
    _type_until(guest, "/mnt/vsock_tool echo 5301", rb"LISTENING 5301")
    s, _ = _connect(guest.sock, 5301)
    # The guest echoes, we never read: send until nothing more goes in for a
    # while, which is when the guest sits in a write that cannot finish.
    s.setblocking(False)
    chunk = os.urandom(65536)
    while select.select([], [s], [], 3)[1]:
        try:
            s.send(chunk)
        except BlockingIOError:
            pass
    s.close()
    guest.wait_for(rb"(write|read): (Connection reset by peer|Broken pipe)")


def _type_until(guest: Guest, line: str, pattern: bytes, tries: int = 3) -> None:
    """Type `line` until `pattern` shows: BusyBox's shell asks the terminal
    for the cursor position as it prompts, and a line typed into that
    moment can be taken for the answer and dropped."""
    for attempt in range(tries):
        guest.type(line)
        try:
            guest.wait_for(pattern, 20)
            return
        except AssertionError:
            if attempt == tries - 1 or guest.proc.poll() is not None:
                raise

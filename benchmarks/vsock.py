"""virtio-vsock benchmark: the Debian kernel and a host program talk over vsock.

Boots the default guest with a disk holding `vsock_tool`
(tests/e2e/vsock/vsock_tool.c, cross-compiled here), starts its echo server,
and measures from the host, through the VM's Unix socket (Firecracker's
`CONNECT <port>` convention):

  connect    CONNECT to `OK` for a new connection, then closing it, N times
  round trip one byte to the guest and back on an open connection, N times
  echo       SIZE MiB sent and the same read back at once (both directions)

QEMU's peer is vhost-vsock, which needs the host kernel's /dev/vhost-vsock;
when it is missing (as in containers) only pocketvm's figures are printed.

    .venv/bin/python benchmarks/vsock.py [--size MIB] [--count N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from test_linux_vsock import Guest, _connect, _disk_with

MiB = 1 << 20


def _percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB for the throughput runs (default 64)")
    parser.add_argument("--count", type=int, default=100, help="connections and round trips (default 100)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pocketvm-vsock-bench-"))
    tool = tmp / "vsock_tool"
    subprocess.run(["riscv64-linux-gnu-gcc", "-O2", "-static", "-o", str(tool),
                    str(ROOT / "tests" / "e2e" / "vsock" / "vsock_tool.c")], check=True)  # fmt: skip
    disk = _disk_with(tmp / "disk.img", {"vsock_tool": tool})
    env_note = "" if Path("/dev/vhost-vsock").exists() else " (QEMU's vhost-vsock needs /dev/vhost-vsock: not here)"
    print(f"pocketvm vsock, Debian kernel + BusyBox guest{env_note}")
    g = Guest(disk, tmp / "vm.vsock")
    try:
        g.type(f"mount -o ro /dev/vda /mnt && /mnt/vsock_tool echo 5000 {args.count} &")
        g.wait_for(rb"LISTENING 5000")
        connects = []
        for _ in range(args.count):
            t0 = time.perf_counter()
            s, _ = _connect(g.sock, 5000)
            connects.append(time.perf_counter() - t0)
            s.close()
        g.wait_for(rb"ECHOED \d+ CONNECTIONS")
        print(f"  connect    {_percentiles(connects)} (CONNECT to OK, {args.count} connections)")

        g.type("/mnt/vsock_tool echo 5001 &")
        g.wait_for(rb"LISTENING 5001")
        s, _ = _connect(g.sock, 5001)
        trips = []
        for _ in range(args.count):
            t0 = time.perf_counter()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            trips.append(time.perf_counter() - t0)
        s.close()
        g.wait_for(rb"ECHOED")
        print(f"  round trip {_percentiles(trips)} (1 byte there and back, {args.count} times)")

        size = args.size * MiB
        data = os.urandom(size)
        g.type("/mnt/vsock_tool echo 5002 &")
        g.wait_for(rb"LISTENING 5002")
        s, _ = _connect(g.sock, 5002)
        t0 = time.perf_counter()

        def send() -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = 0
        while chunk := s.recv(MiB):
            got += len(chunk)
        elapsed = time.perf_counter() - t0
        sender.join()
        s.close()
        assert got == size, (got, size)
        print(f"  echo       {args.size} MiB each way in {elapsed:.2f} s: {args.size / elapsed:.1f} MiB/s per direction,"
              f" {2 * args.size / elapsed:.1f} MiB/s in total")
    finally:
        g.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

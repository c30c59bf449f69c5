"""Network benchmark: the guest downloads from and uploads to the host.

Boots the same Debian kernel and initramfs with one virtio NIC behind a
user-mode NAT in pocketvm (`pocket run --nic user`) and in QEMU
(`-netdev user` + `virtio-net-device`), then, from the guest's shell:

  latency    a TCP connection + tiny HTTP request to the host (wget), 20 times
  download   `wget` of a SIZE MiB file from an HTTP server on the host's
             127.0.0.1 (10.0.2.2 to the guest), to /dev/null
  upload     the guest sends SIZE MiB with `nc` to a host TCP sink

Each is timed inside the guest (/proc/uptime before and after), so boot
and console latency do not count. Prints MiB/s for both and the ratio.

    .venv/bin/python benchmarks/net.py [--size MIB] [--no-qemu]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pocketvm.cli import DEFAULT_APPEND as APPEND  # both get pocketvm's default kernel command line

PROMPT = b"pocket:~# "
MiB = 1 << 20


class Guest:
    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.out = b""

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while needle not in self.out[after:]:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no {needle!r}; output ends {self.out[-500:]!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                self.out += os.read(self.proc.stdout.fileno(), 65536)
        return self.out[after:]

    def run(self, line: str, timeout: float = 600) -> str:
        """Run a shell line; its output up to the end marker."""
        assert self.proc.stdin is not None
        mark = len(self.out)
        self.proc.stdin.write(f"{line}; echo END-$((40+2))\n".encode())
        self.proc.stdin.flush()
        return self.wait_for(b"END-42", timeout, mark).decode(errors="replace")

    def timed(self, line: str) -> float:
        """Seconds the guest's clock (/proc/uptime, 10 ms steps) says `line` took."""
        out = self.run(f"a=$(cut -d' ' -f1 /proc/uptime); {line}; b=$(cut -d' ' -f1 /proc/uptime); echo T-$a-$b-T")
        a, b = re.search(r"T-([\d.]+)-([\d.]+)-T", out).groups()
        return float(b) - float(a)

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"poweroff\n")
            self.proc.stdin.flush()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def sink_server(size: int) -> int:
    """A host TCP port that takes `size` bytes, then closes (BusyBox's nc only
    ends when the other side does)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def drain(conn: socket.socket) -> None:
        with conn:
            got = 0
            while got < size and (data := conn.recv(1 << 16)):
                got += len(data)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def measure(guest: Guest, http_port: int, sink_port: int, size: int) -> dict[str, float]:
    try:
        return _measure(guest, http_port, sink_port, size)
    finally:
        if guest.proc.poll() is None:  # a failed step must not leave the VM running
            guest.proc.kill()
            guest.proc.wait()


def _measure(guest: Guest, http_port: int, sink_port: int, size: int) -> dict[str, float]:
    guest.wait_for(PROMPT, 900)
    addr = guest.run("ip -4 -o addr show eth0")
    if "10.0.2.15" not in addr:
        raise RuntimeError(f"the guest has no address: {addr!r}")
    url = f"http://10.0.2.2:{http_port}"
    guest.run(f"wget -q -O /dev/null {url}/small")  # warm up: ARP, page cache
    rounds = 20
    latency = guest.timed(f"i=0; while [ $i -lt {rounds} ]; do wget -q -O /dev/null {url}/small; i=$((i+1)); done") / rounds
    down = guest.timed(f"wget -q -O /dev/null {url}/big")
    up = guest.timed(f"dd if=/dev/zero bs=1M count={size} 2>/dev/null | nc 10.0.2.2 {sink_port}")
    guest.stop()
    return {"latency_ms": latency * 1000, "down": size / down, "up": size / up}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32, help="MiB to transfer each way")
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()

    from pocketvm.images import load_default_image, pull_default_image

    img = load_default_image() or pull_default_image(quiet=True)
    with tempfile.TemporaryDirectory(prefix="pocket-netbench-") as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        (www / "small").write_bytes(b"x" * 100)
        (www / "big").write_bytes(os.urandom(args.size * MiB))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        http_port, sink_port = httpd.server_address[1], sink_server(args.size * MiB)
        env = {**os.environ, "POCKETVM_LAUNCHER": "off"}
        p = measure(Guest([sys.executable, "-m", "pocketvm", "run", "--append", APPEND, "--nic", "user"], env), http_port, sink_port, args.size)
        q = None
        if not args.no_qemu and shutil.which("qemu-system-riscv64"):
            qemu = ["qemu-system-riscv64", "-M", "virt", "-m", "512M", "-smp", "1", "-nographic", "-monitor", "none",
                    "-bios", str(img.bios), "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", APPEND,
                    "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"]  # fmt: skip
            q = measure(Guest(qemu), http_port, sink_port, args.size)
    print(f"{'':28}{'pocketvm':>12}{'QEMU (TCG)':>14}{'ratio':>8}")
    rows = [("HTTP request latency (ms)", "latency_ms", True), (f"download {args.size} MiB (MiB/s)", "down", False),
            (f"upload {args.size} MiB (MiB/s)", "up", False)]  # fmt: skip
    for label, key, lower_is_better in rows:
        qv = f"{q[key]:14.2f}" if q else f"{'-':>14}"
        ratio = ""
        if q:
            r = p[key] / q[key] if lower_is_better else q[key] / p[key]
            ratio = f"{r:7.2f}x"
        print(f"{label:28}{p[key]:12.2f}{qv}{ratio:>8}")
    print("ratio: how many times slower pocketvm is (1.00x = same)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

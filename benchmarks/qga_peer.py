"""The peer of benchmarks/sandbox.py: QEMU (TCG) with qemu-guest-agent over
virtio-serial, on the same Debian image (its base disk, kernel, initramfs,
OpenSBI and command line, 1 GiB, one hart).

qemu-guest-agent is not in the image: the first run installs it with apt
(QEMU with user networking; the image's apt sources name the mirror of the
host's configuration) into a qcow2 overlay of the image's base, cached in
~/.cache/pocketvm/bench/ under the base's checksum. Each run then boots a
throw-away overlay of that one with the agent's virtio-serial port and
measures, through the QMP-style JSON of qemu-guest-agent on the port's host
socket:

  exec    `guest-exec` of /bin/true, then `guest-exec-status` until it has
          exited (qemu-guest-agent has no way to wait: the client polls)
  files   64 MiB written with guest-file-open/-write/-close and read back
          with guest-file-read (base64 in JSON, 1 MiB per call), compared

    .venv/bin/python benchmarks/qga_peer.py [--runs 50]
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian import PROMPT, overlay, qemu_cmd  # noqa: E402
from snapshot import Console  # noqa: E402

MiB = 1 << 20
CHUNK = MiB
INSTALL_TIMEOUT = 1800.0
BOOT_TIMEOUT = 600.0


class Qga:
    """qemu-guest-agent's JSON protocol over the host end of its virtio-serial port."""

    def __init__(self, path: Path, timeout: float = 60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def call(self, command: str, **arguments: object) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._line()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"qemu-guest-agent: {command}: {reply['error']}")

    def _line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("qemu-guest-agent closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip(b"\xff \r")
        return json.loads(line) if line else {}

    def sync(self, timeout: float) -> None:
        """Until the agent answers (it starts when the guest's udev sees its port)."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            try:
                self.sock.settimeout(2.0)
                # The delimited sync: a 0xff byte precedes the answer, so a
                # half-read earlier answer cannot be taken for this one.
                if self.call("guest-sync-delimited", id=n) == n:
                    self.sock.settimeout(60.0)
                    return
            except (TimeoutError, RuntimeError, ValueError):
                self.buf = b""
            if time.monotonic() > deadline:
                raise RuntimeError("qemu-guest-agent does not answer")

    def close(self) -> None:
        self.sock.close()


def qga_image(img) -> Path:
    """The cached overlay of the image's base with qemu-guest-agent installed."""
    base_sha = str(img.manifest.get("base_sha256", ""))[:16] or "unknown"
    cache = Path.home() / ".cache" / "pocketvm" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"debian-qga-{base_sha}.qcow2"
    if target.exists():
        return target
    for stale in cache.glob("debian-qga-*.qcow2"):  # overlays of bases that were rebuilt since
        stale.unlink()
    work = cache / f".{target.name}.building"
    work.unlink(missing_ok=True)
    overlay(img.base, work)
    print(f"peer: installing qemu-guest-agent into {target} (once; QEMU with user networking and apt)...", flush=True)
    net = ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"]
    con = Console(qemu_cmd(img, work, _append(img), "qcow2", None, *net))
    try:
        con.wait_for(PROMPT, BOOT_TIMEOUT)
        mark = len(con.seen)
        # The marker is spelled so that the echo of the typed line does not contain it.
        con.send(b"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                 b"--no-install-recommends qemu-guest-agent >/tmp/qga.log 2>&1; echo QGA-RESULT-$?-\"DO\"NE\n")
        con.wait_for(b"-DONE", INSTALL_TIMEOUT, after=mark)
        tail = con.seen[mark:]
        if b"QGA-RESULT-0-DONE" not in tail:
            mark = len(con.seen)
            con.send(b"tail -5 /tmp/qga.log\n")
            time.sleep(5)
            con.wait_for(PROMPT, 60, after=mark)
            raise RuntimeError(f"apt-get install qemu-guest-agent failed: {con.seen[mark:][-600:]!r}")
        con.send(b"sync\n")
        time.sleep(3)
    finally:
        con.stop(b"poweroff\n", timeout=120)
    os.replace(work, target)
    return target


def _append(img) -> str:
    from pocketvm.images.debian import BOOT_APPEND

    return BOOT_APPEND


def bench(runs: int) -> dict[str, object]:
    """Exec round trip and 64 MiB transfer figures of QEMU + qemu-guest-agent."""
    from pocketvm.images.debian import load

    img = load("debian")
    if img is None:
        raise RuntimeError("no Debian image: `pocket image build debian`")
    if shutil.which("qemu-system-riscv64") is None:
        raise RuntimeError("qemu-system-riscv64 not installed")
    base = qga_image(img)
    with tempfile.TemporaryDirectory(prefix="qga-peer-") as tmp:
        work = Path(tmp)
        disk = overlay(base, work / "run.qcow2")
        sock = work / "qga.sock"
        serial = ["-device", "virtio-serial-device",
                  "-chardev", f"socket,path={sock},server=on,wait=off,id=qga0",
                  "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]  # fmt: skip
        con = Console(qemu_cmd(img, disk, _append(img), "qcow2", None, *serial))
        try:
            con.wait_for(PROMPT, BOOT_TIMEOUT)
            qga = Qga(sock)
            qga.sync(120)
            trips = []
            for i in range(runs + 1):
                t0 = time.perf_counter()
                pid = qga.call("guest-exec", path="/bin/true", **{"capture-output": True})["pid"]  # type: ignore[index]
                while not qga.call("guest-exec-status", pid=pid)["exited"]:  # type: ignore[index]
                    pass
                if i:  # the first one loads what the others find in the page cache
                    trips.append(time.perf_counter() - t0)
            data = os.urandom(64 * MiB)
            t0 = time.perf_counter()
            h = qga.call("guest-file-open", path="/tmp/qga.bin", mode="w")
            for off in range(0, len(data), CHUNK):
                qga.call("guest-file-write", handle=h, **{"buf-b64": base64.b64encode(data[off:off + CHUNK]).decode()})
            qga.call("guest-file-close", handle=h)
            up = time.perf_counter() - t0
            t0 = time.perf_counter()
            h = qga.call("guest-file-open", path="/tmp/qga.bin", mode="r")
            back = bytearray()
            while True:
                r = qga.call("guest-file-read", handle=h, count=CHUNK)
                back += base64.b64decode(r["buf-b64"])  # type: ignore[index]
                if r["eof"] or not r["count"]:  # type: ignore[index]
                    break
            qga.call("guest-file-close", handle=h)
            down = time.perf_counter() - t0
            same = hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
            qga.close()
        finally:
            con.stop(b"poweroff\n", timeout=60)
    return {"trips": trips, "up": 64 / up, "down": 64 / down, "same": same}


def fmt(values: list[float]) -> str:
    s = sorted(values)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return f"p50 {statistics.median(values) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   (n={len(values)})"


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    r = bench(args.runs)
    print(f"QEMU + qga exec round trip (true) {fmt(r['trips'])}")  # type: ignore[arg-type]
    print(f"QEMU + qga upload 64 MiB          {r['up']:7.1f} MiB/s   download {r['down']:7.1f} MiB/s   "
          f"checksums {'match' if r['same'] else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

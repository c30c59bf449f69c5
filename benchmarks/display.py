"""Display benchmark: pocketvm's virtio-gpu + RFB server vs QEMU's virtio-gpu-device + -vnc.

Both run the same guest (the default Debian kernel and initramfs, 1 hart,
512 MiB) with a virtio GPU, keyboard and tablet, and the same scripted VNC
client (tests/display/rfb_client.py, Raw encoding: what every server speaks,
so both send the same bytes per pixel) measures, in the same run:

- redraw: the guest copies two different full 1024x768 frames to /dev/fb0
  in turn, forever (guest frames/s: how many it wrote); the client asks for
  updates as fast as it takes them for DURATION seconds: updates/s,
  full-frame equivalents/s (area received / screen area), bytes/s;
- key latency: with the screen idle, a key press sent by the client until
  the update holding the echoed character arrives (median and worst of N);
- idle: host CPU used by the VM process over IDLE seconds with a client
  connected and nothing changing on the screen.

    .venv/bin/python benchmarks/display.py [--duration 10] [--keys 20]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "display"))
from rfb_client import ENC_RAW, ENC_TIGHT, RfbClient  # noqa: E402

PROMPT = "pocket:~# "
BOOT_TIMEOUT = 600
WIDTH, HEIGHT = 1024, 768
APPEND = "console=ttyS0 cryptomgr.notests"


class Guest:
    """A VM process whose serial console is its stdin/stdout."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self.lock = threading.Lock()
        for stream, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buf), daemon=True).start()

    def _pump(self, stream, buf: bytearray) -> None:
        while data := stream.read1(65536):
            with self.lock:
                buf += data

    def text(self, start: int = 0) -> str:
        with self.lock:
            return self.out[start:].decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0, stderr: bool = False) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                text = (self.err if stderr else self.out)[start:].decode(errors="replace")
            m = re.search(pattern, text)
            if m:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"the VM exited ({self.proc.returncode}): {self.err.decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"no {pattern!r} within {timeout} s: {self.text()[-2000:]}")

    def run(self, line: str, marker: str, timeout: float = 300) -> str:
        start = len(self.out)
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        self.wait_for(re.escape(marker), timeout, start)
        return self.text(start)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_vnc_display() -> int:
    for n in range(10, 90):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + n))
            except OSError:
                continue
            return n
    raise RuntimeError("no free VNC display")


def start_pocketvm() -> tuple[Guest, int]:
    port = free_port()
    env_cmd = [sys.executable, "-m", "pocketvm", "run", "--display", f"vnc:{port}", "--name", f"bench-display-{os.getpid()}"]
    guest = Guest(env_cmd)
    guest.wait_for(r"pocket: display: VNC", 60, stderr=True)
    return guest, port


def start_qemu() -> tuple[Guest, int]:
    from pocketvm.images import load_default_image

    image = load_default_image()
    assert image is not None, "run `pocket image pull` first"
    display = free_vnc_display()
    cmd = ["qemu-system-riscv64", "-M", "virt", "-m", "512M", "-smp", "1", "-bios", str(image.bios),
           "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", APPEND,
           # Linux's virtio-gpu and virtio-input drivers need a modern (virtio 1) transport.
           "-global", "virtio-mmio.force-legacy=false",
           "-device", "virtio-gpu-device", "-device", "virtio-keyboard-device", "-device", "virtio-tablet-device",
           "-display", "none", "-vnc", f"127.0.0.1:{display}", "-serial", "stdio", "-monitor", "none"]
    return Guest(cmd), 5900 + display


def prepare(guest: Guest) -> None:
    guest.wait_for(re.escape(PROMPT), BOOT_TIMEOUT)
    time.sleep(1)
    guest.run("echo 0 > /sys/class/graphics/fbcon/cursor_blink; "
              "dd if=/dev/urandom of=/tmp/f1 bs=4096 count=768 2>/dev/null; "
              "dd if=/dev/urandom of=/tmp/f2 bs=4096 count=768 2>/dev/null; echo P=$((5*5))=", "P=25=")


def connect(port: int, encodings: list[int]) -> RfbClient:
    deadline = time.monotonic() + 30
    while True:
        try:
            c = RfbClient("127.0.0.1", port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.handshake()
    c.set_encodings(encodings)
    c.request(incremental=False)
    c.read_update()
    return c


def drain(c: RfbClient) -> None:
    """Take updates until the screen has been quiet for a moment."""
    c.request()
    while c.wait_update(0.5):
        c.read_update()
        c.request()
    # one request stays pending: the next change is sent at once


def key_latency(c: RfbClient, n: int) -> list[float]:
    out = []
    drain(c)
    for i in range(n):
        keysym = ord("a") + i % 26
        t0 = time.perf_counter()
        c.key(keysym, True)
        c.key(keysym, False)
        c.read_update()
        out.append(time.perf_counter() - t0)
        drain(c)
    for _ in range(n):  # clean the line up again
        c.key(0xFF08, True)
        c.key(0xFF08, False)
    drain(c)
    return out


def idle_cpu(guest: Guest, c: RfbClient, seconds: float) -> float:
    drain(c)
    before = guest.cpu_seconds()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if c.wait_update(max(0.0, end - time.monotonic())):
            c.read_update()
            c.request()
    return (guest.cpu_seconds() - before) / seconds


def redraw(guest: Guest, c: RfbClient, seconds: float) -> dict[str, float]:
    guest.run("(n=0; while :; do cat /tmp/f1 > /dev/fb0; cat /tmp/f2 > /dev/fb0; n=$((n+2)); echo $n > /tmp/n; done) & "
              "echo R=$((6*6))=", "R=36=")
    time.sleep(2)  # let it get going
    drawn0 = _frames_drawn(guest)
    c.request()
    updates = 0
    area = 0
    b0 = c.bytes_received
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rects = c.read_update()
        c.request()
        updates += 1
        area += sum(w * h for _, _, w, h, enc in rects if enc in (ENC_RAW, ENC_TIGHT))
    elapsed = time.perf_counter() - t0
    drawn = _frames_drawn(guest) - drawn0
    guest.run("kill %1; echo K=$((7*7))=", "K=49=")
    return {
        "guest frames/s": drawn / (time.perf_counter() - t0),
        "updates/s": updates / elapsed,
        "frames/s": area / (WIDTH * HEIGHT) / elapsed,
        "MB/s": (c.bytes_received - b0) / elapsed / 1e6,
    }


def _frames_drawn(guest: Guest) -> int:
    out = guest.run("echo N=$(cat /tmp/n 2>/dev/null || echo 0)=$((8*8))=", "=64=")
    m = re.findall(r"N=(\d+)=64=", out)
    return int(m[-1]) if m else 0


def measure(name: str, start, args) -> dict[str, float]:
    guest, port = start()
    try:
        prepare(guest)
        c = connect(port, [ENC_RAW])
        lat = key_latency(c, args.keys)
        cpu = idle_cpu(guest, c, args.idle)
        draw = redraw(guest, c, args.duration)
        c.close()
        result = {
            **draw,
            "key ms (median)": statistics.median(lat) * 1000,
            "key ms (max)": max(lat) * 1000,
            "idle CPU %": cpu * 100,
        }
        if name == "pocketvm":  # its Tight encoding, for the bytes it saves
            t = connect(port, [ENC_TIGHT, ENC_RAW])
            tight = redraw(guest, t, args.duration / 2)
            t.close()
            result["tight MB/s"] = tight["MB/s"]
            result["tight frames/s"] = tight["frames/s"]
        return result
    finally:
        guest.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of continuous redraw")
    ap.add_argument("--keys", type=int, default=20, help="key presses for the latency")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle screen for the CPU figure")
    ap.add_argument("--only", choices=("pocketvm", "qemu"), help="measure one of them only")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {"pocketvm": {}, "qemu": {}}
    for name, start in (("pocketvm", start_pocketvm), ("qemu", start_qemu)):
        if args.only not in (None, name):
            continue
        print(f"{name}: booting and measuring...", file=sys.stderr, flush=True)
        results[name] = measure(name, start, args)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    keys = list(dict.fromkeys([*results["pocketvm"], *results["qemu"]]))
    print(f"{'':22}{'pocketvm':>12}{'qemu':>12}")
    for k in keys:
        print(f"{k:22}" + "".join(f"{results[n][k]:12.2f}" if k in results[n] else f"{'-':>12}" for n in ("pocketvm", "qemu")))


if __name__ == "__main__":
    main()

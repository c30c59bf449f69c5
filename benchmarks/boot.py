"""Boot benchmark: time from process start to the first shell prompt.

Boots the same Debian kernel and initramfs in pocketvm (`pocket run`) and in
`qemu-system-riscv64 -M virt` (TCG) in the same run, and prints both times,
their ratio, pocketvm's peak RSS and whether the numba cache was warm.

    .venv/bin/python benchmarks/boot.py [--runs N] [--cold]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = b"pocket:~# "
APPEND = "console=ttyS0"


def boot_to_prompt(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> tuple[float, int]:
    """Start `cmd`, wait for the prompt, power off. Returns (seconds to prompt, peak RSS in KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    seen = b""
    elapsed = None
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen = (seen + chunk)[-4096:]
            if PROMPT in seen:
                elapsed = time.monotonic() - start
                proc.stdin.write(b"poweroff\n")
                proc.stdin.flush()
                break
        if elapsed is None:
            raise RuntimeError(f"no shell prompt from {cmd[0]} within {timeout:.0f} s; last output: {seen[-300:]!r}")
        # Drain until exit so the child can finish its poweroff.
        while proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready and not os.read(proc.stdout.fileno(), 65536):
                break
            if time.monotonic() - start > timeout:
                proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
    return elapsed, usage.ru_maxrss


def numba_cache_warm() -> bool:
    from pocketvm.cpu import _source_digest  # noqa: F401  (sets the cache dir)
    import numba

    cache = Path(numba.config.CACHE_DIR)
    return cache.exists() and any(cache.rglob("*core*.nbi"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="boots of each (the best is reported)")
    ap.add_argument("--cold", action="store_true", help="pocketvm with an empty numba cache (includes compile time)")
    args = ap.parse_args()

    from pocketvm.images import load_default_image, pull_default_image

    img = load_default_image() or pull_default_image(quiet=True)
    files = ["--kernel", str(img.kernel), "--initrd", str(img.initrd), "--bios", str(img.bios), "--append", APPEND]
    qemu = ["qemu-system-riscv64", "-M", "virt", "-m", "512M", "-smp", "1", "-nographic", "-monitor", "none",
            "-bios", str(img.bios), "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", APPEND]
    pocket = [sys.executable, "-m", "pocketvm", "run", "--memory", "512M", *files]

    env = dict(os.environ)
    tmp = None
    if args.cold:
        tmp = tempfile.TemporaryDirectory()
        env["NUMBA_CACHE_DIR"] = tmp.name
        warm = False
    else:
        warm = numba_cache_warm()

    p_times, q_times, rss = [], [], 0
    for _ in range(args.runs):
        t, r = boot_to_prompt(pocket, env)
        p_times.append(t)
        rss = max(rss, r)
        q_times.append(boot_to_prompt(qemu)[0])
    p, q = min(p_times), min(q_times)
    print(f"kernel           {img.version}")
    print(f"numba cache      {'warm' if warm else 'cold (compile time included)'}")
    print(f"pocketvm         {p:8.2f} s to shell prompt")
    print(f"qemu (TCG)       {q:8.2f} s to shell prompt")
    print(f"ratio            {p / q:8.2f} x  (pocketvm / qemu)")
    print(f"pocketvm RSS     {rss / 1024:8.1f} MiB peak")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

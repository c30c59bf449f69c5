"""Boot benchmark: time from process start to the first shell prompt.

Boots the same Debian kernel and initramfs in pocketvm (`pocket run`, with
the interpreter only and with `--jit on`: once with an empty translation
cache, then again with the cache the first boot filled) and in
`qemu-system-riscv64 -M virt` (TCG) in the same run, and prints the times,
their ratio, pocketvm's peak RSS, whether the numba cache was warm, and the
host CPU each uses while the guest sits idle at its prompt (--idle seconds,
measured from 5 s after the prompt: the kernel's asynchronous boot work,
~0.4 G instructions, is still running when the prompt appears).
pocketvm runs in its own process (POCKETVM_LAUNCHER=off), so its start-up
and CPU time are all counted. One more row boots with the warm translation
cache through a launcher (`pocket launcher start`, in a private runtime
directory, stopped at the end): the ~0.5 s of loading Python, numba and the
CPU core that the launcher pays once, as a user who keeps it running does.
With the prebuilt CPU core (`pocketvm.cpu.native`, built by setup.sh) two
more boots with the warm cache compare it with numba's core, in turns.

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

from pocketvm.cli import (
    DEFAULT_APPEND as APPEND,  # both get pocketvm's default kernel command line
)

PROMPT = b"pocket:~# "


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def boot_to_prompt(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 900,
    idle: float = 0.0,
    settle: float = 5.0,
    stderr_to: Path | None = None,
) -> tuple[float, int, float]:
    """Start `cmd`, wait for the prompt, stay idle `idle` seconds, power off.
    Returns (seconds to prompt, peak RSS in KiB, share of a host CPU used while idle)."""
    start = time.monotonic()
    err = open(stderr_to, "wb") if stderr_to is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
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
                idle_cpu = 0.0
                if idle > 0:
                    time.sleep(settle)  # the guest finishes boot work (async crypto self-tests) after its prompt
                    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                    time.sleep(idle)
                    idle_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
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
        if stderr_to is not None:
            err.close()  # type: ignore[union-attr]
    return elapsed, usage.ru_maxrss, idle_cpu


def tier1_line(stderr_file: Path) -> str:
    """The tier-1 statistics that `pocket -v` logs at the end."""
    for line in stderr_file.read_text(errors="replace").splitlines():
        if "tier 1:" in line:
            return line.split("tier 1:", 1)[1].strip()
    return "(no statistics)"


def boot_via_launcher(cmd: list[str], env: dict[str, str], work: Path) -> float | None:
    """Seconds to the prompt for `cmd` handed to a launcher of its own
    (a private runtime directory under `work`), which is stopped afterwards;
    None when no launcher would start."""
    runtime = work / "runtime"
    runtime.mkdir(mode=0o700)
    lenv = {k: v for k, v in env.items() if k != "POCKETVM_LAUNCHER"}
    lenv["XDG_RUNTIME_DIR"] = str(runtime)
    launcher = [sys.executable, "-m", "pocketvm", "launcher"]
    started = subprocess.run([*launcher, "start"], env=lenv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if started.returncode != 0:
        print(f"(no launcher row: {started.stderr.decode(errors='replace').strip()})", file=sys.stderr)
        return None
    try:
        t, _, _ = boot_to_prompt(cmd, lenv)
    finally:
        subprocess.run([*launcher, "stop"], env=lenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return t


def numba_cache_warm() -> bool:
    from pocketvm.cpu import native, numba_cache_dir

    cache = numba_cache_dir()
    return native.available() or (cache.exists() and any(cache.rglob("*core*.nbi")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="boots of each (the best is reported)")
    ap.add_argument("--cold", action="store_true", help="pocketvm with an empty numba cache (includes compile time)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds to measure host CPU at the idle prompt (0: skip)")
    args = ap.parse_args()

    from pocketvm.images import load_default_image, pull_default_image

    img = load_default_image() or pull_default_image(quiet=True)
    files = ["--kernel", str(img.kernel), "--initrd", str(img.initrd), "--bios", str(img.bios), "--append", APPEND]
    qemu = ["qemu-system-riscv64", "-M", "virt", "-m", "512M", "-smp", "1", "-nographic", "-monitor", "none",
            "-bios", str(img.bios), "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", APPEND]
    pocket = [sys.executable, "-m", "pocketvm", "run", "--memory", "512M", *files, "--jit", "off"]
    pocket_jit = [sys.executable, "-m", "pocketvm", "-v", "run", "--memory", "512M", *files, "--jit", "on"]

    env = {**os.environ, "POCKETVM_LAUNCHER": "off"}
    tmp = None
    if args.cold:
        tmp = tempfile.TemporaryDirectory()
        env["NUMBA_CACHE_DIR"] = tmp.name
        env["POCKETVM_NATIVE_CORE"] = "off"  # compiled by numba at start, not the prebuilt one
        warm = False
    else:
        warm = numba_cache_warm()

    from pocketvm.cpu import native

    if env.get("POCKETVM_NATIVE_CORE") != "off" and not native.available():
        # As pocket would at its first VM (not inside a measured boot): build it now.
        print("building the prebuilt CPU core first ...", flush=True)
        native.build_elsewhere(env)
    prebuilt = env.get("POCKETVM_NATIVE_CORE") != "off" and native.available()
    p_times, q_times, rss, p_idle, q_idle, j_times, w_times, l_times = [], [], 0, [], [], [], [], []
    n_times: list[float] = []  # warm again, with numba's core instead of the prebuilt one
    a_times: list[float] = []  # ...and with the prebuilt one, in the same minutes
    stats: dict[str, str] = {}
    for _ in range(args.runs):
        t, r, i = boot_to_prompt(pocket, env, idle=args.idle)
        p_times.append(t)
        p_idle.append(i)
        rss = max(rss, r)
        with tempfile.TemporaryDirectory(prefix="pocketvm-jit-cache-") as jit_cache:
            jenv = {**env, "POCKETVM_JIT_CACHE": jit_cache}
            log = Path(jit_cache) / "stderr.log"
            t, _, _ = boot_to_prompt(pocket_jit, jenv, stderr_to=log)
            j_times.append(t)
            stats["cold"] = tier1_line(log)
            t, _, _ = boot_to_prompt(pocket_jit, jenv, stderr_to=log)
            w_times.append(t)
            stats["warm"] = tier1_line(log)
            if prebuilt:  # the same cache for both, in turns (each boot may add to it)
                order = [("off", n_times), ("on", a_times)]
                for core, times in order if len(n_times) % 2 == 0 else order[::-1]:
                    t, _, _ = boot_to_prompt(pocket_jit, {**jenv, "POCKETVM_NATIVE_CORE": core})
                    times.append(t)
            if not args.cold:  # a launcher would compile the core into the temporary numba cache first
                t_launched = boot_via_launcher(pocket_jit, jenv, Path(jit_cache))
                if t_launched is not None:
                    l_times.append(t_launched)
        t, _, i = boot_to_prompt(qemu, idle=args.idle)
        q_times.append(t)
        q_idle.append(i)
    p, q, j, w = min(p_times), min(q_times), min(j_times), min(w_times)
    print(f"kernel           {img.version}")
    print(f"numba cache      {'warm' if warm else 'cold (compile time included)'}")
    print(f"CPU core         {'prebuilt (pocketvm.cpu.native)' if prebuilt else 'numba, loaded at start'}")
    print(f"pocketvm         {p:8.2f} s to shell prompt (interpreter)")
    print(f"  --jit on, cold {j:8.2f} s  (empty translation cache; compiling in a second process included)")
    print(f"  --jit on, warm {w:8.2f} s  (second boot: the translation cache the first one filled)")
    if n_times:
        print(f"  warm again     {min(a_times):8.2f} s  (a third or fourth boot, prebuilt core; in turns with:)")
        print(f"  ... numba core {min(n_times):8.2f} s  (the same with numba's core loaded at start)")
    if l_times:
        print(f"  warm, launcher {min(l_times):8.2f} s  (the same through a running launcher: its start-up paid once)")
    print(f"qemu (TCG)       {q:8.2f} s to shell prompt")
    print(f"ratio            {p / q:8.2f} x  (pocketvm / qemu); JIT cold {j / q:.2f} x, warm {w / q:.2f} x"
          + (f", warm through the launcher {min(l_times) / q:.2f} x" if l_times else ""))
    print(f"JIT / interpreter  cold {j / p:.2f}, warm {w / p:.2f}")
    print(f"tier 1, cold: {stats['cold']}")
    print(f"tier 1, warm: {stats['warm']}")
    print(f"pocketvm RSS     {rss / 1024:8.1f} MiB peak")
    if args.idle > 0:
        print(f"idle at prompt   {100 * min(p_idle):8.1f} % of a host CPU (pocketvm), {100 * min(q_idle):.1f} % (qemu)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sandbox benchmark: pocketvm.Sandbox (the Python API over the manager).

  create     from `Sandbox(...)` to the VM answering on its control socket,
             p50/p95 over --runs sandboxes (created and deleted one by one)
  first out  from `Sandbox(...)` to the first command's output (`echo`),
             p50/p95 (needs the guest agent)
  exec       round trip of `true` on a running sandbox, p50/p95 (agent)
  files      64 MiB upload and download, MiB/s, checksums compared (agent)
  idle PSS   host memory per idle sandbox, proportional set size (shared
             pages split between the sandboxes), with --idle sandboxes up
  how many   sandboxes created one after the other and kept, until a
             create fails or takes twice the first ones' median (bounded by
             --max and by host memory), each given --settle seconds first

The source is the Debian image's template (`--image debian`, the default
when it is built), or any snapshot directory (`--snapshot DIR`). VMs are
forked by a launcher started here (one already running is stopped first:
it may predate a change of the sources) and stopped at the end.

The exec round trip is measured on a sandbox that has run one command and
then had --settle seconds (the guest's own work right after a restore is
over by then). Files use the agent client's default checksum (Adler-32).

The peer the issue names: QEMU (TCG) with qemu-guest-agent over
virtio-serial on the same Debian image, for the exec round trip and the
64 MiB transfer (benchmarks/qga_peer.py; its first run installs the agent
into a cached overlay of the image, which takes minutes; --no-peer leaves
it out). A QEMU create-to-first-output has no counterpart here: QEMU
restores a snapshot in its own process, not from a template in a fork.

    .venv/bin/python benchmarks/sandbox.py [--runs 50] [--image debian | --snapshot DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

MiB = 1 << 20


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def fmt(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:7.1f} ms   p95 {pct(values, 95) * 1000:7.1f} ms   (n={len(values)})"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


USE_LAUNCHER = os.environ.get("POCKETVM_LAUNCHER", "").lower() != "off"


def create(source: dict[str, object], ttl: float) -> tuple[object, float]:
    """A new sandbox and the seconds its create took. A create the launcher
    declined (it stops itself when pocketvm's sources change, which happens
    in a shared work tree) is not a sample: the launcher is restarted and the
    create done again."""
    import pocketvm
    from pocketvm.launcher import client

    for attempt in range(3):
        t0 = time.perf_counter()
        sb = pocketvm.Sandbox(**source, timeout=ttl)  # type: ignore[arg-type]
        took = time.perf_counter() - t0
        if not USE_LAUNCHER or sb._manager._get(sb.name).how == "launcher" or attempt == 2:
            return sb, took  # after three declines: a sample of a VM in its own process
        sb.close()
        print("  (the launcher declined a create, sources changed: restarted, create not counted)")
        client.stop()
        client.start()
    raise AssertionError("unreachable")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--image", default=None)
    ap.add_argument("--snapshot", default=None)
    ap.add_argument("--idle", type=int, default=8, help="sandboxes up for the idle PSS figure")
    ap.add_argument("--max", type=int, default=32, help="most sandboxes in the how-many ramp")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds a new sandbox gets to settle (its guest's after-restore work): before the exec "
                         "round trips, and after each create in the ramp")
    ap.add_argument("--ramp-only", action="store_true", help="only the how-many ramp")
    ap.add_argument("--no-peer", action="store_true",
                    help="leave out the peer (QEMU + qemu-guest-agent; its first run installs the agent, minutes)")
    args = ap.parse_args()

    import pocketvm
    from pocketvm.launcher import client

    started_launcher = False
    if USE_LAUNCHER:
        # A fresh one: a launcher that predates a change of pocketvm's sources declines every VM.
        client.stop()
        info, started_launcher = client.start()
        print(f"launcher pid {info['pid']} (started here; stopped at the end)")
    source: dict[str, object]
    if args.snapshot:
        source = {"snapshot": args.snapshot}
    else:
        from pocketvm.images.debian import load

        name = args.image or "debian"
        image = load(name)
        if image is None or image.template is None:
            print(f"no image {name!r} with a template: build it (`pocket image build debian`) or give --snapshot DIR")
            return 2
        source = {"image": name}
    print(f"source: {source}")

    try:
        # Warm-up: the first create loads the manager and its imports.
        pocketvm.Sandbox(**source, timeout=120).close()  # type: ignore[arg-type]

        creates, firsts, afters, first_cpu, agent_error = [], [], [], [], None
        for _ in range(0 if args.ramp_only else args.runs):
            sb, took = create(source, 120)
            t1 = time.perf_counter()
            t0 = t1 - took
            creates.append(took)
            if agent_error is None:
                try:
                    for item in sb.run_stream(["echo", "hi"]):
                        if isinstance(item, pocketvm.Output):
                            t2 = time.perf_counter()
                            firsts.append(t2 - t0)
                            afters.append(t2 - t1)
                            first_cpu.append(cpu_seconds(sb._manager._get(sb.name).pid))
                            break
                except pocketvm.GuestError as e:
                    agent_error = str(e)
            sb.close()
        if creates:
            print(f"create (to a running VM)        {fmt(creates)}   target for first output: p50 <= 150 ms")
        if firsts:
            print(f"create to first output (echo)   {fmt(firsts)}")
            print(f"  of which after the create     {fmt(afters)}   (agent connection + the guest running echo)")
            print(f"  CPU of the VM process by then {fmt(first_cpu)}   (restore + guest; what a busy host does not change)")
        elif creates:
            print(f"create to first output          not measured: {agent_error}")
        if not args.ramp_only:
            others(args, source, agent_error)
        ramp(args, source)
        if args.no_peer or args.ramp_only:
            print("peer (QEMU + qemu-guest-agent over virtio-serial): not measured (--no-peer)")
        else:
            peer(args.runs)
    finally:
        if started_launcher:
            client.stop()
    return 0


def others(args: argparse.Namespace, source: dict[str, object], agent_error: str | None) -> None:
    import pocketvm

    if True:
        with pocketvm.Sandbox(**source, timeout=600) as sb:  # type: ignore[arg-type]
            if agent_error is None:
                # A running sandbox: past the work its guest does just after the restore.
                sb.run(["true"])
                time.sleep(args.settle)
                trips = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    sb.run(["true"])
                    trips.append(time.perf_counter() - t0)
                print(f"exec round trip (true)          {fmt(trips)}   target p50 <= 20 ms ({args.settle:g} s after create)")
                data = os.urandom(64 * MiB)
                pid = sb._manager._get(sb.name).pid
                c0, t0 = cpu_seconds(pid), time.perf_counter()
                sb.files.write("/tmp/bench.bin", data)
                c1, t1 = cpu_seconds(pid), time.perf_counter()
                back = sb.files.read("/tmp/bench.bin")
                c2, t2 = cpu_seconds(pid), time.perf_counter()
                same = hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
                print(f"upload 64 MiB                   {64 / (t1 - t0):7.1f} MiB/s   download {64 / (t2 - t1):7.1f} MiB/s   "
                      f"checksums {'match' if same else 'DIFFER'}   target >= 50 MiB/s")  # fmt: skip
                # What a busy host does not change: the VM process's CPU per MiB.
                print(f"  per CPU second of the VM      {64 / max(c1 - c0, 0.01):7.1f} MiB up   "
                      f"{64 / max(c2 - c1, 0.01):7.1f} MiB down   (MiB/s on an otherwise idle core)")  # fmt: skip
            else:
                print("exec round trip, file transfer not measured: no guest agent")

        if args.idle:
            boxes = [pocketvm.Sandbox(**source, timeout=600) for _ in range(args.idle)]  # type: ignore[arg-type]
            time.sleep(3)
            pss = [b.metrics()["pss_bytes"] or 0 for b in boxes]
            rss = [b.metrics()["rss_bytes"] or 0 for b in boxes]
            print(f"idle sandbox host memory        PSS {statistics.mean(pss) / MiB:6.1f} MiB   "
                  f"RSS {statistics.mean(rss) / MiB:6.1f} MiB   ({args.idle} up)   target PSS <= 64 MiB")  # fmt: skip
            for b in boxes:
                b.close()


def peer(runs: int) -> None:
    """QEMU (TCG) with qemu-guest-agent over virtio-serial on the same image (qga_peer.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import qga_peer

    try:
        r = qga_peer.bench(runs)
    except Exception as e:  # noqa: BLE001 - reported, the rest of the run stands
        print(f"peer (QEMU + qemu-guest-agent over virtio-serial): not measured: {e}")
        return
    print(f"peer exec round trip (true)     {qga_peer.fmt(r['trips'])}   QEMU + qemu-guest-agent, "
          f"guest-exec then guest-exec-status until exited")  # type: ignore[arg-type]
    print(f"peer upload 64 MiB              {r['up']:7.1f} MiB/s   download {r['down']:7.1f} MiB/s   "
          f"checksums {'match' if r['same'] else 'DIFFER'}   (guest-file-write/-read, base64, 1 MiB a call)")


def ramp(args: argparse.Namespace, source: dict[str, object]) -> None:
    import pocketvm

    if True:
        ramp: list[pocketvm.Sandbox] = []
        times: list[float] = []
        why = f"reached --max {args.max}"
        try:
            while len(ramp) < args.max:
                if mem_available() < 2 << 30:
                    why = "host memory available fell under 2 GiB"
                    break
                try:
                    sb, took = create(source, 600)
                except Exception as e:  # noqa: BLE001 - reported
                    why = f"create failed: {e}"
                    break
                ramp.append(sb)  # type: ignore[arg-type]
                times.append(took)
                base = statistics.median(times[:3])
                if len(times) > 3 and times[-1] > 2 * base:
                    why = f"create took {times[-1] * 1000:.0f} ms, twice the first ones' {base * 1000:.0f} ms"
                    break
                time.sleep(args.settle)
        finally:
            n = len(ramp)
            for b in ramp:
                b.close()
        print(f"sandboxes at once               {n}   ({why}; {args.settle:g} s to settle after each create)")


if __name__ == "__main__":
    sys.exit(main())

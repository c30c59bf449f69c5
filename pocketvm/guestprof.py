"""Where a guest spends its instructions: a sampling profile of guest PCs.

A developer's tool for questions such as "what does the guest kernel do
during a 256 MiB dd". With POCKETVM_GUEST_PROFILE=FILE in its environment
a VM runs its harts in short slices of SAMPLE_EVERY instructions (a prime,
so the samples do not lock onto a loop's period) and notes each hart's
privilege level and PC whenever a slice ends because its budget is used
up; slices cut short by a device access or wfi are not samples, which would
otherwise weigh MMIO-heavy code by its exits, not by its instructions. At
exit the VM writes FILE: one line per PC, "count priv pc", most frequent
first. Then

    python -m pocketvm.guestprof FILE [--symbols KALLSYMS] [--top N]

prints the functions that got the most samples, named from a copy of the
guest's /proc/kallsyms (`cat /proc/kallsyms` as root in the guest).
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
from collections import Counter
from pathlib import Path

from pocketvm.cpu import state as S

ENV_VAR = "POCKETVM_GUEST_PROFILE"
SAMPLE_EVERY = 9973  # instructions
PRIV_NAMES = {0: "U", 1: "S", 3: "M"}


class GuestProfiler:
    def __init__(self, path: Path):
        self.path = path
        self.samples: Counter[tuple[int, int]] = Counter()

    @classmethod
    def from_env(cls) -> GuestProfiler | None:
        name = os.environ.get(ENV_VAR, "")
        return cls(Path(name)) if name else None

    def note(self, st) -> None:
        self.samples[(int(st[S.PRIV]), int(st[S.PC]) & (2**64 - 1))] += 1

    def write(self) -> None:
        lines = [f"{n} {priv} {pc:#x}\n" for (priv, pc), n in self.samples.most_common()]
        self.path.write_text("".join(lines))


def read_kallsyms(path: Path) -> tuple[list[int], list[str]]:
    """Text symbols of a /proc/kallsyms copy, sorted by address."""
    syms: list[tuple[int, str]] = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "tTwW" and int(parts[0], 16):
            syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
    return [a for a, _ in syms], [n for _, n in syms]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pocketvm.guestprof", description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path, help=f"the file a VM wrote with {ENV_VAR}=FILE")
    p.add_argument("--symbols", type=Path, help="a copy of the guest's /proc/kallsyms, to name kernel functions")
    p.add_argument("--top", type=int, default=30, help="functions to print (default 30)")
    args = p.parse_args(argv)
    try:
        rows = [line.split() for line in args.profile.read_text().splitlines() if line.strip()]
        addrs, names = read_kallsyms(args.symbols) if args.symbols else ([], [])
    except (OSError, ValueError) as e:
        print(f"guestprof: {e}", file=sys.stderr)
        return 1
    by_name: Counter[str] = Counter()
    by_priv: Counter[str] = Counter()
    for count, priv, pc in rows:
        n, addr = int(count), int(pc, 16)
        level = PRIV_NAMES.get(int(priv), priv)
        by_priv[level] += n
        i = bisect.bisect_right(addrs, addr) - 1
        if i >= 0:
            name = names[i]
        else:  # below every symbol: a kernel's kallsyms names neither user code nor firmware
            name = {"U": "(user)", "M": "(firmware)"}.get(level, f"{addr:#x}")
        by_name[name] += n
    total = sum(by_priv.values()) or 1
    print(f"{total} samples, one per {SAMPLE_EVERY} instructions: "
          + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in by_priv.most_common()))
    for name, n in by_name.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

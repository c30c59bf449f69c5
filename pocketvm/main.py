"""The `pocket` program.

A command that starts a VM goes to the launcher when one runs (see
pocketvm.launcher); everything else, and everything the launcher does not
take, runs here through the CLI. Checked before the CLI is imported, so a
launched command costs a Python start-up and one socket round trip.
"""

from __future__ import annotations

import sys


def main() -> None:
    import faulthandler
    import gc
    import os
    import signal

    # Start-up creates ~10^6 objects (numba, numpy, the CLI), none of them
    # garbage: the cyclic collector ran dozens of times over them for
    # nothing (~40 ms of a VM's start). It runs again once they are frozen.
    gc.disable()

    # pocketvm never multiplies matrices; numpy's OpenBLAS would otherwise
    # start a thread per core that spins at import (~0.06 s of CPU taken
    # from a 2-core host's other core, where tier 1's compiler runs).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    # `kill -USR1` prints where every thread of a stuck `pocket` is (to stderr).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from pocketvm.launcher.client import launch, wants_launcher

    argv = sys.argv[1:]
    if wants_launcher(argv):
        code = launch(argv)
        if code is not None:
            sys.exit(code)
    # The prebuilt CPU core: then numba is never imported (see pocketvm.cpu.native).
    # A command that runs a VM builds it first if it is missing or stale.
    from pocketvm.cpu import native

    if runs_a_vm(argv):
        native.ensure(lambda line: print(line, file=sys.stderr, flush=True))
    else:
        native.prefer()
    from pocketvm.cli import entry

    gc.freeze()
    gc.enable()
    entry()


def runs_a_vm(argv: list[str]) -> bool:
    """Whether `pocket ARGV` is about running VMs here (or in a launcher or manager it starts).
    (`image build` is not counted: it fails early for many reasons, and a
    build of the core would be a wait before a one-line error.)"""
    if "-h" in argv or "--help" in argv:
        return False
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and (words[0] in ("run", "restore", "serve") or words[:2] == ["launcher", "start"])


if __name__ == "__main__":
    main()

"""Guest RAM belongs to its VM's process alone."""

from __future__ import annotations

import os

from pocketvm.memory import RAM_BASE, GuestRAM


def test_a_forked_process_writing_guest_ram_does_not_change_the_vms():
    """The launcher forks, and so may a library in the VM's process: a child
    that writes guest RAM writes its own copy (it was a shared mapping)."""
    ram = GuestRAM(64 * 4096)
    ram.write(RAM_BASE + 4096, b"guest")
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        ram.write(RAM_BASE + 4096, b"child")
        os._exit(0 if ram.read(RAM_BASE + 4096, 5) == b"child" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ram.read(RAM_BASE + 4096, 5) == b"guest"


def test_untouched_guest_ram_costs_no_host_memory():
    ram = GuestRAM(1 << 30)
    ram.write(RAM_BASE, b"x")
    assert ram.read(RAM_BASE + (1 << 30) - 8, 8) == bytes(8)
    with open("/proc/self/smaps_rollup") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("Rss:"))
    assert rss_kib < 900 * 1024  # far below the 1 GiB mapped

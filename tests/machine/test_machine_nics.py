"""Network interfaces in a VM's configuration: what fails is said in one
line, and a VM that cannot be built leaves no thread or socket behind."""

from __future__ import annotations

import socket
import threading

import pytest
from snaptools import open_fds

from pocketvm.console import CapturedConsole
from pocketvm.machine import NicSpec, VirtualMachine, VMConfig, VMError


def _new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads started since `before` that still run (one of an earlier test
    that ends meanwhile must not count)."""
    return set(threading.enumerate()) - before


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "nics, message",
    [
        ("busy", "cannot listen on 127.0.0.1"),
        ([NicSpec("user")] * 9, "at most 8 virtio devices"),
        ([NicSpec("tap")], "unknown network kind 'tap'"),
    ],
)
def test_a_vm_that_cannot_be_built_leaves_nothing_behind(busy_port, nics, message):
    if nics == "busy":
        nics = [NicSpec("user"), NicSpec("user", [("tcp", busy_port, 80)])]
    threads, fds = set(threading.enumerate()), open_fds()
    with pytest.raises(VMError, match=message):
        VirtualMachine(VMConfig(nics=nics), CapturedConsole())
    assert not _new_threads(threads)
    assert not open_fds() - fds


def test_a_vm_with_nics_closes_their_backends():
    threads, fds = set(threading.enumerate()), open_fds()
    vm = VirtualMachine(VMConfig(nics=[NicSpec("user"), NicSpec("user", [("tcp", 0, 80)])]), CapturedConsole())
    assert [n.device_id for n in vm.nics] == [1, 1]
    vm.close()
    assert not _new_threads(threads)
    assert not open_fds() - fds

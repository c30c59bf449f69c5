"""A vsock in a VM's configuration: the device is built and slotted like any
virtio device, bad settings are one-line errors, and nothing is left behind."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from pocketvm.console import CapturedConsole
from pocketvm.machine import NicSpec, VirtualMachine, VMConfig, VMError, VsockSpec


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_vm_with_a_vsock_builds_slots_and_closes_it(tmp_path):
    threads, fds = set(threading.enumerate()), _open_fds()
    path = tmp_path / "vm.vsock"
    vm = VirtualMachine(VMConfig(vsock=VsockSpec(cid=42, path=path)), CapturedConsole())
    assert vm.vsock.guest_cid == 42
    ids = [t.device.device_id for t in vm.virtio if t.device is not None]
    assert ids == [4, 19]  # rng, then vsock
    assert vm.virtio_slots == [0, 1]
    assert path.exists()
    vm.close()
    assert not path.exists()
    assert not set(threading.enumerate()) - threads  # none left behind (an earlier test's may end meanwhile)
    assert _open_fds() == fds


def test_default_socket_is_named_after_the_vm(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "pocketvm").mkdir()
    vm = VirtualMachine(VMConfig(name="box", vsock=VsockSpec()), CapturedConsole())
    try:
        assert vm.vsock.host.path == tmp_path / "pocketvm" / "box.vsock"
    finally:
        vm.close()
    with pytest.raises(VMError, match="socket path or a VM name"):
        VirtualMachine(VMConfig(vsock=VsockSpec()), CapturedConsole())


@pytest.mark.parametrize("cid", [0, 2, 0xFFFF_FFFF])
def test_bad_cid(tmp_path, cid):
    with pytest.raises(VMError, match="CID"):
        VirtualMachine(VMConfig(vsock=VsockSpec(cid=cid, path=tmp_path / "v")), CapturedConsole())


def test_a_vm_that_cannot_be_built_leaves_no_vsock_behind(tmp_path):
    path = tmp_path / "vm.vsock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen()
    threads, fds = set(threading.enumerate()), _open_fds()
    with pytest.raises(VMError, match="in use"):
        VirtualMachine(VMConfig(vsock=VsockSpec(path=path)), CapturedConsole())
    assert _open_fds() == fds
    busy.close()
    path.unlink()
    fds = _open_fds()
    with pytest.raises(VMError, match="at most 8 virtio devices"):
        VirtualMachine(VMConfig(nics=[NicSpec("user")] * 7, vsock=VsockSpec(path=path)), CapturedConsole())
    assert not path.exists()
    assert not set(threading.enumerate()) - threads  # none left behind (an earlier test's may end meanwhile)
    assert _open_fds() == fds

"""A vsock in a VM's configuration: the device is built and slotted like any
virtio device, bad settings are one-line errors, and nothing is left behind."""

from __future__ import annotations

import socket
import threading

import pytest
from snaptools import open_fds

from pocketvm.console import CapturedConsole
from pocketvm.machine import NicSpec, VirtualMachine, VMConfig, VMError, VsockSpec


def test_vm_with_a_vsock_builds_slots_and_closes_it(tmp_path):
    threads, fds = set(threading.enumerate()), open_fds()
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
    assert not open_fds() - fds


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
    threads, fds = set(threading.enumerate()), open_fds()
    with pytest.raises(VMError, match="in use"):
        VirtualMachine(VMConfig(vsock=VsockSpec(path=path)), CapturedConsole())
    assert not open_fds() - fds
    busy.close()
    path.unlink()
    fds = open_fds()
    with pytest.raises(VMError, match="at most 8 virtio devices"):
        VirtualMachine(VMConfig(nics=[NicSpec("user")] * 7, vsock=VsockSpec(path=path)), CapturedConsole())
    assert not path.exists()
    assert not set(threading.enumerate()) - threads  # none left behind (an earlier test's may end meanwhile)
    assert not open_fds() - fds


def test_the_upload_window_is_a_read_only_disk_beside_the_vsock(tmp_path, monkeypatch):
    """--upload-window: a virtio-blk disk after the vsock (serial
    pocketvm-upload, read-only to the guest) on a file only the VM's user may
    write, empty (a hole); a snapshot records its size, not its content, and
    a restored VM gets a fresh one beside its own vsock socket; it goes when
    the VM ends."""
    from pocketvm.backends.upload_window import SERIAL, WindowWriter, window_path
    from pocketvm.devices.virtio_blk import F_RO
    from pocketvm.snapshot.restore import restore_vm
    from pocketvm.snapshot.save import save_snapshot

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "pocketvm").mkdir()
    vm = VirtualMachine(VMConfig(name="box", vsock=VsockSpec(upload_window=1 << 20)), CapturedConsole())
    window = tmp_path / "pocketvm" / "box.vsock.upload"
    try:
        assert window_path(vm.vsock.host.path) == window
        devices = [t.device for t in vm.virtio if t.device is not None]
        assert [d.device_id for d in devices] == [4, 19, 2]  # rng, vsock, the window
        assert devices[2].serial == SERIAL.encode() and devices[2].device_features() & F_RO
        st = window.stat()
        assert st.st_mode & 0o777 == 0o600 and st.st_size == 1 << 20 and st.st_blocks == 0
        writer = WindowWriter(window)
        writer.write(4096, b"x" * 100)
        assert devices[2].disk.read(4096, 512)[:101] == b"x" * 100 + b"\0"
        with pytest.raises(ValueError):
            writer.write((1 << 20) - 10, b"y" * 11)
        writer.close()
        assert window.stat().st_blocks == 0
        save_snapshot(vm, tmp_path / "snap")
    finally:
        vm.close()
    assert not window.exists()
    restored = restore_vm(tmp_path / "snap", CapturedConsole(), "copy", tmp_path / "disks")
    try:
        again = tmp_path / "pocketvm" / "copy.vsock.upload"
        assert restored.vm.config.vsock.upload_window == 1 << 20 and again.stat().st_blocks == 0
    finally:
        restored.vm.close()
        restored.disks.finish()
    assert not again.exists()


@pytest.mark.parametrize("size", [1, 4095, 1 << 40])
def test_bad_upload_window_sizes(tmp_path, size):
    with pytest.raises(VMError, match="upload window"):
        VirtualMachine(VMConfig(vsock=VsockSpec(path=tmp_path / "v", upload_window=size)), CapturedConsole())
    assert list(tmp_path.iterdir()) == []


def test_no_slot_left_means_no_upload_window(tmp_path):
    """Eight virtio devices are the board's limit: a VM that needs all of them
    gets no window (its uploads stream), rather than failing to start."""
    nics = [NicSpec("none") for _ in range(6)]
    vm = VirtualMachine(VMConfig(nics=nics, vsock=VsockSpec(path=tmp_path / "v", upload_window=1 << 20)),
                        CapturedConsole())
    try:
        assert len(vm.virtio_slots) == 8 and vm.upload_window is None and vm.config.vsock.upload_window == 0
    finally:
        vm.close()
    assert list(tmp_path.iterdir()) == []

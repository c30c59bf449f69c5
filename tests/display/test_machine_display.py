"""A VM with a display: its devices, and its screen and input state through a snapshot (in-process)."""

from __future__ import annotations

import numpy as np

from pocketvm.backends.display.screen import Rect
from pocketvm.console import CapturedConsole
from pocketvm.machine import MiB, DisplaySpec, VirtualMachine, VMConfig
from pocketvm.snapshot.restore import restore_vm
from pocketvm.snapshot.save import save_snapshot


def make_vm(ticker, display: DisplaySpec | None) -> VirtualMachine:
    cfg = VMConfig(memory=16 * MiB, kernel=ticker, bios=None, rng=True, deterministic=True, display=display, name="d")
    vm = VirtualMachine(cfg, CapturedConsole())
    vm.load_boot_files()
    return vm


def test_display_devices(ticker):
    vm = make_vm(ticker, DisplaySpec(640, 480))
    try:
        ids = [t.device.device_id if t.device else 0 for t in vm.virtio]
        assert ids[:4] == [16, 18, 18, 4]  # gpu, keyboard, tablet, then entropy
        assert (vm.screen.width, vm.screen.height) == (640, 480)
        assert [d.name for d in vm.inputs] == [b"pocketvm virtio keyboard", b"pocketvm virtio tablet"]
        assert vm.virtio[0].device.width == 640  # the mode offered to the guest
    finally:
        vm.close()
    plain = make_vm(ticker, None)
    try:
        assert plain.screen is None and plain.inputs == []
    finally:
        plain.close()


def test_screen_and_pending_input_survive_a_snapshot(ticker, tmp_path):
    vm = make_vm(ticker, DisplaySpec())
    pixels = np.random.default_rng(3).integers(0, 256, (768, 1024, 4), dtype=np.uint8)
    vm.screen.update(Rect(0, 0, 1024, 768), pixels)
    vm.inputs[0].post([(1, 30, 1), (0, 0, 0)])  # typed, not yet read by the guest
    try:
        save_snapshot(vm, tmp_path / "snap")
    finally:
        vm.close()
    restored = restore_vm(tmp_path / "snap", CapturedConsole(), "back", tmp_path / "disks")
    try:
        back = restored.vm
        assert back.config.display == DisplaySpec(1024, 768)
        assert np.array_equal(back.screen.pixels, pixels)
        assert back.inputs[0].pending() == 2
        viewer = back.screen.attach(lambda: None)
        assert viewer.take_damage() == [Rect(0, 0, 1024, 768)]  # a viewer is sent the whole screen
    finally:
        restored.vm.close()
        restored.disks.finish()

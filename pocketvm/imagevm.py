"""`pocket run --image NAME`: a VM of a system built by `pocket image build`.

Two ways to start it, chosen by what the user asked for:

- from the image's template (the system booted once and snapshotted idle),
  when the VM is the template's shape (memory, harts, no extra disks, and
  the template's display: none, or for the desktop image its screen size):
  a restore, answering in a fraction of a second;
- otherwise a boot of the base image, on a fresh qcow2 overlay in the VM's
  disk directory.

Either way the base image is never written, and the VM's own writes land in
its overlay, which is kept (and its path printed) when the guest wrote to
it and deleted when it did not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pocketvm.images.errors import ImageError

if TYPE_CHECKING:
    from pocketvm.cli import Lifetime


def _template_fits(image, memory: str | None, cpus: int | None, disks: tuple[str, ...], deterministic: bool,
                   display: str, display_size: str) -> bool:
    from pocketvm.images.template import TEMPLATE_CPUS, TEMPLATE_MEMORY
    from pocketvm.machine import parse_memory
    from pocketvm.web.attach import parse_display, parse_size

    if image.template is None or disks or deterministic:
        return False
    # A template has a screen of one size (the desktop image's) or none.
    screen = image.manifest.get("template_display")
    if parse_display(display).kind == "none":
        if screen is not None:
            return False
    elif screen != list(parse_size(display_size)):
        return False
    if memory is not None and parse_memory(memory) != parse_memory(TEMPLATE_MEMORY):
        return False
    return cpus is None or cpus == TEMPLATE_CPUS


def run_image(image_name: str, memory: str | None, cpus: int | None, disks: tuple[str, ...], nics: tuple[str, ...],
              vsock: str, name: str, deterministic: bool, display: str, display_size: str,
              ttl: Lifetime | None = None, upload_window: int = 0) -> int:
    from pocketvm.cli import _parse_nic, build_config, restore_snapshot, run_vm
    from pocketvm.control import check_name, generate_name
    from pocketvm.images.debian import BOOT_APPEND, load
    from pocketvm.images.template import TEMPLATE_CPUS, TEMPLATE_MEMORY
    from pocketvm.machine import NicSpec
    from pocketvm.snapshot.workdisks import default_disk_dir
    from pocketvm.web.attach import parse_display, parse_size

    try:
        image = load(image_name)
    except ImageError as e:
        raise click.ClickException(str(e)) from None
    if image is None:
        raise click.ClickException(f"no image called {image_name!r}: build it with `pocket image build debian`"
                                   + ("" if image_name == "debian" else f" --name {image_name}"))
    vm_name = check_name(name) if name else generate_name()
    shown = parse_display(display)
    if _template_fits(image, memory, cpus, disks, deterministic, display, display_size):
        # The template has one NIC: connected as asked, or with its cable out.
        specs = [_parse_nic(n) for n in nics] or [NicSpec("none")]
        if len(specs) > 1:
            raise click.UsageError(f"image {image_name}'s template has one network interface; "
                                   f"boot with --cpus/--memory other than the template's for more")
        return restore_snapshot(image.template, vm_name, None, False, shown, nics=specs,
                                what=f"started from image {image_name}'s template", ttl=ttl)

    disk_dir = default_disk_dir(vm_name)
    disk_dir.mkdir(parents=True, exist_ok=True)
    overlay = disk_dir / "root.qcow2"
    from pocketvm.backends.qcow2_create import create_overlay

    overlay.unlink(missing_ok=True)
    create_overlay(overlay, image.base)
    fresh_size = overlay.stat().st_size
    if ttl is not None:
        ttl.own += [disk_dir, overlay]
    try:
        config = build_config(TEMPLATE_MEMORY if memory is None else memory,
                              TEMPLATE_CPUS if cpus is None else cpus, str(image.boot.kernel),
                              str(image.boot.initrd), str(image.boot.bios), BOOT_APPEND, (str(overlay), *disks),
                              vm_name, None, nics, vsock)
        config.deterministic = deterministic
        if config.vsock is not None:
            config.vsock.upload_window = upload_window
        if shown.kind != "none":
            from pocketvm.machine import DisplaySpec

            config.display = DisplaySpec(*parse_size(display_size))
        return run_vm(config, shown, ttl)
    finally:
        _keep_or_drop(overlay, fresh_size, discard=ttl is not None and ttl.expired)


def _keep_or_drop(overlay: Path, fresh_size: int, discard: bool = False) -> None:
    try:
        written = overlay.stat().st_size != fresh_size
    except OSError:
        return
    if written and not discard:
        click.echo(f"pocket: the guest wrote to its root disk; it is kept in {overlay} "
                   f"(attach it with --disk, or delete it)", err=True)
    else:
        overlay.unlink(missing_ok=True)
        try:
            overlay.parent.rmdir()
        except OSError:
            pass
